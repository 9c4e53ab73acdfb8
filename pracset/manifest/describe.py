"""A manifest's summary (:meth:`pracset.manifest.Manifest.summary`) as a few readable lines (``pracset inspect``)."""

from __future__ import annotations

import json


def format_summary(s: dict) -> str:
    """A manifest summary as a few readable lines."""
    d, sel, prov = s["dataset"], s["selection"], s["provenance"]
    lines = [
        f"manifest   {s['path']}",
        f"data set   {d['name']} ({d['split']} split, {d['size']} examples, fingerprint {d['fingerprint'][:16]})",
        f"selected   {s['selected']} of {s['size']} ({100 * s['fraction']:.2f}%) by rule {sel.get('rule')} "
        f"{json.dumps(sel.get('params', {}), sort_keys=True)}",
        "reasons    " + ", ".join(f"{k} {v}" for k, v in sorted(s["reasons"].items())),
        "per class  " + ", ".join(f"{d['class_names'][int(c)] if 'class_names' in d else c}: {v['selected']}/{v['total']}"
                                  for c, v in sorted(s["per_class"].items(), key=lambda kv: int(kv[0]))),
    ]
    if prov:
        bits = [f"{k} {prov[k]}" for k in ("command", "arch", "seed", "epochs_run", "iterations") if k in prov]
        if prov.get("dense_test_accuracy") is not None:
            bits.append(f"dense test accuracy {prov['dense_test_accuracy']:.4f}")
        bits += [f"pracset {prov.get('pracset_version')}", f"torch {prov.get('torch_version')}", str(prov.get("created"))]
        lines.append("provenance " + ", ".join(bits))
    return "\n".join(lines)
