"""The report of a pipeline run: ``report.json`` (every number), ``report.md`` and PNG plots.

Iterations saved (DESIGN 2.2): for the pipeline's architecture, the training
iterations IMP spends up to and including the round at sparsity s (round 0,
the dense run, included) against PrAC-IMP's rounds up to the same sparsity
(its dense round and its rounds on the PrAC sets). The figure is taken at the
highest sparsity where the PrAC ticket is within one standard deviation of
the full-data IMP ticket (several seeds) or within ``tolerance`` (one seed).
The final full-data training of a PrAC ticket is its evaluation, as IMP's
round at that sparsity is for IMP, and is reported apart. "With probes"
counts every probe batch (a forward pass only) as a whole iteration, a
conservative way of charging the pruning probe.
"""

from __future__ import annotations

import io
import logging
import math
from collections import defaultdict

import numpy as np

from pracset.fileio import atomic_write_bytes, atomic_write_json
from pracset.manifest import read_manifest
from pracset.runs import PipelineLayout, TicketLayout

log = logging.getLogger(__name__)


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _curves(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(arch, method) -> per round: sparsity, accuracy mean/std over seeds, iterations, controls."""
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        grouped[(run["arch"], run["method"])].append(run)
    out = {}
    for key, group in grouped.items():
        rounds = defaultdict(list)
        for run in group:
            for row in run["summary"]["tickets"]:
                rounds[row["round"] if row["round"] is not None else 0].append((run, row))
        curve = []
        for r in sorted(rounds):
            rows = [row for _, row in rounds[r]]
            mean, std = _mean_std([row["test_accuracy"] for row in rows])
            entry = {"round": r, "sparsity": rows[0]["sparsity"], "accuracy": mean, "std": std, "seeds": len(rows),
                     "iterations": _mean_std([_round_iterations(run, row) for run, row in rounds[r]])[0]}
            if "controls" in rows[0]:
                entry["controls"] = {k: _mean_std([row["controls"][k] for row in rows])[0] for k in rows[0]["controls"]}
                entry["winning"] = sum(row["verdict"]["winning_ticket"] for row in rows) / len(rows)
                entry["matches_dense"] = sum(row["verdict"]["matches_dense"] for row in rows) / len(rows)
                entry["beats_controls"] = sum(row["verdict"]["beats_controls"] for row in rows) / len(rows)
            for extra in ("set_size", "early_bird_epoch"):
                if extra in rows[0]:
                    entry[extra] = rows[0][extra]
            curve.append(entry)
        out[key] = curve
    return out


def _round_stage(run: dict, row: dict) -> str:
    """The ledger stage of the round that found this row's mask (a RigL/GraNet row: its one stage)."""
    if row["round"] is None:
        return row["stage"]
    return TicketLayout(run["dir"]).round(row["round"]).name


def _round_iterations(run: dict, row: dict) -> int:
    """Training iterations of the round that found this row's mask (not the ticket's evaluation)."""
    stages = run["summary"]["ledger"]["stages"]
    return stages.get(_round_stage(run, row), {}).get("train_iterations", 0)


def _cumulative(run: dict, batch_size: int) -> list[dict]:
    """Per round: cumulative training iterations (and with probe batches) up to that round."""
    stages = run["summary"]["ledger"]["stages"]
    layout = TicketLayout(run["dir"])
    total = probes = 0
    out = []
    for row in run["summary"]["tickets"]:
        total += stages.get(_round_stage(run, row), {}).get("train_iterations", 0)
        probe_stage = layout.probe_stage(row["round"] or 0)
        probes += math.ceil(stages.get(probe_stage, {}).get("probe_examples", 0) / batch_size)
        out.append({"round": row["round"], "sparsity": row["sparsity"], "iterations": total,
                    "with_probes": total + probes, "accuracy": row["test_accuracy"]})
    return out


def iterations_saved(imp_runs: list[dict], prac_runs: list[dict], tolerance: float, batch_size: int) -> dict:
    """DESIGN 2.2's figure: savings at the highest sparsity where PrAC matches full-data IMP."""
    imp = [_cumulative(r, batch_size) for r in imp_runs]
    prac = [_cumulative(r, batch_size) for r in prac_runs]
    rounds = min(len(c) for c in imp + prac)
    per_round = []
    best = None
    for r in range(1, rounds):
        imp_acc = _mean_std([c[r]["accuracy"] for c in imp])
        prac_acc = _mean_std([c[r]["accuracy"] for c in prac])
        band = imp_acc[1] if len(imp) > 1 else tolerance
        within = prac_acc[0] >= imp_acc[0] - band
        imp_iters = float(np.mean([c[r]["iterations"] for c in imp]))
        prac_iters = float(np.mean([c[r]["iterations"] for c in prac]))
        prac_probes = float(np.mean([c[r]["with_probes"] for c in prac]))
        entry = {"round": r, "sparsity": imp[0][r]["sparsity"], "imp_accuracy": imp_acc[0], "imp_std": imp_acc[1],
                 "prac_accuracy": prac_acc[0], "prac_std": prac_acc[1], "within": bool(within),
                 "imp_iterations": imp_iters, "prac_iterations": prac_iters, "prac_iterations_with_probes": prac_probes,
                 "saved": 1 - prac_iters / imp_iters, "saved_with_probes": 1 - prac_probes / imp_iters}
        per_round.append(entry)
        if within:
            best = entry
    return {"per_round": per_round, "at": best, "rule": "one standard deviation" if len(imp) > 1 else
            f"within {tolerance} accuracy (one seed)"}


def write_report(pipeline, layout: PipelineLayout, results: dict) -> dict:
    """Write report.json, report.md and the plots of a pipeline run into its directory."""
    manifest = read_manifest(results["manifest"])
    runs = results["runs"]
    curves = _curves(runs)
    tol = pipeline.report.tolerance
    batch = pipeline.train.batch_size
    by_method = defaultdict(list)
    for run in runs:
        by_method[(run["arch"], run["method"])].append(run)
    headline = None
    if by_method.get((pipeline.arch, "imp")) and by_method.get((pipeline.arch, "prac-imp")):
        headline = iterations_saved(by_method[(pipeline.arch, "imp")], by_method[(pipeline.arch, "prac-imp")], tol, batch)
    transfer = []
    for arch in pipeline.transfer:
        row = {"arch": arch}
        for method in ("imp", "prac-imp-transfer", "random-subset"):
            curve = curves.get((arch, method))
            if curve:
                row[method] = {"final_sparsity": curve[-1]["sparsity"], "final_accuracy": curve[-1]["accuracy"],
                               "final_std": curve[-1]["std"], "curve": curve}
        if by_method.get((arch, "imp")) and by_method.get((arch, "prac-imp-transfer")):
            row["iterations_saved"] = iterations_saved(by_method[(arch, "imp")], by_method[(arch, "prac-imp-transfer")],
                                                       tol, batch)
        transfer.append(row)
    forgetting = manifest.column("forgetting_events")
    never = manifest.column("never_learned")
    prac_rounds = _prac_rounds(by_method.get((pipeline.arch, "prac-imp"), []))
    report = {
        "pipeline": pipeline.to_dict(),
        "manifest": {**manifest.summary(), "provenance": {k: v for k, v in manifest.provenance.items()
                                                          if k not in ("history", "build_identity")}},
        "dense_accuracy": manifest.provenance.get("dense_test_accuracy"),
        "curves": {f"{a}/{m}": c for (a, m), c in curves.items()},
        "iterations_saved": headline,
        "transfer": transfer,
        "prac_rounds": prac_rounds,
        "forgetting_histogram": _histogram(forgetting, never),
        "runs": [{k: v for k, v in run.items() if k != "summary"} for run in runs],
    }
    atomic_write_json(layout.report_json, report)
    plots = _plots(layout, pipeline, curves, headline, prac_rounds, report["forgetting_histogram"]) if pipeline.report.plots else []
    atomic_write_bytes(layout.report_md, _markdown(pipeline, report, plots).encode())
    log.info("report written to %s", layout.report_md)
    return report


def _prac_rounds(runs: list[dict]) -> list[dict]:
    """Per round of the first PrAC-IMP seed: the set trained on, its successor and its CEP part."""
    if not runs:
        return []
    rows = []
    for r, stage in TicketLayout(runs[0]["dir"]).rounds():
        metrics = stage.read_metrics()
        rows.append({"round": r, "set_size": metrics.get("set_size", metrics.get("examples")),
                     "next_set": metrics.get("next_set"), "cep": metrics.get("cep"),
                     "early_bird_epoch": metrics.get("early_bird_epoch"),
                     "iterations": metrics.get("ledger", {}).get("train_iterations")})
    return rows


def _histogram(forgetting: np.ndarray, never: np.ndarray) -> dict:
    learned = forgetting[~never.astype(bool)]
    counts = np.bincount(learned.astype(int)) if len(learned) else np.zeros(1, dtype=int)
    return {"counts": counts.tolist(), "never_learned": int(never.sum()), "unforgettable": int((learned == 0).sum())}


def _plots(layout: PipelineLayout, pipeline, curves, headline, prac_rounds, histogram) -> list[tuple[str, str]]:
    import matplotlib  # imported here: only a report with plots needs it, and it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the non-interactive backend

    made = []

    def save(fig, name: str, title: str) -> None:
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        path = layout.plot(name)
        atomic_write_bytes(path, buffer.getvalue())  # a killed run leaves no truncated PNG
        made.append((path.name, title))

    archs = [pipeline.arch, *pipeline.transfer]
    fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4.2), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        dense = None
        for (a, method), curve in sorted(curves.items()):
            if a != arch:
                continue
            if curve[0]["round"] == 0 and curve[0]["sparsity"] == 0:
                if method == "imp":
                    dense = curve[0]["accuracy"]
                else:  # round 0 of the other methods is no ticket (and on a subset, not the dense baseline)
                    curve = curve[1:] or curve
            xs = [100 * c["sparsity"] for c in curve]
            ys = [100 * c["accuracy"] for c in curve]
            es = [100 * c["std"] for c in curve]
            ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, capsize=2, label=method)
            if any("controls" in c for c in curve):
                ctl = [c for c in curve if "controls" in c]
                for key, style in (("reinit", ":"), ("random_mask", "--")):
                    ax.plot([100 * c["sparsity"] for c in ctl], [100 * c["controls"][key] for c in ctl], style,
                            marker="x", ms=3, label=f"{method} control: {key.replace('_', ' ')}")
        if dense is not None:
            ax.axhline(100 * dense, color="black", lw=0.8, label="dense")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(arch)
        ax.legend(fontsize=7)
    save(fig, "accuracy_vs_sparsity", "Test accuracy against sparsity")

    if headline:
        per = headline["per_round"]
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [100 * p["sparsity"] for p in per]
        ax.plot(xs, [p["imp_iterations"] for p in per], marker="o", label="full-data IMP")
        ax.plot(xs, [p["prac_iterations"] for p in per], marker="o", label="PrAC-IMP")
        ax.plot(xs, [p["prac_iterations_with_probes"] for p in per], ls="--", label="PrAC-IMP, probes counted")
        if headline["at"]:
            ax.axvline(100 * headline["at"]["sparsity"], color="grey", lw=0.8)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("cumulative training iterations")
        ax.legend()
        save(fig, "iterations_vs_sparsity", "Cumulative training iterations against sparsity")

    if prac_rounds:
        fig, ax = plt.subplots(figsize=(6, 4))
        rounds = [r["round"] for r in prac_rounds]
        ax.bar(rounds, [r["set_size"] or 0 for r in prac_rounds], label="examples trained on")
        ax.bar(rounds, [r["cep"] or 0 for r in prac_rounds], alpha=0.7, label="of the next set: CEP")
        ax.set_xlabel("PrAC-IMP round")
        ax.set_ylabel("examples")
        ax.legend()
        save(fig, "prac_set_per_round", "PrAC set size per round")

    fig, ax = plt.subplots(figsize=(6, 4))
    counts = histogram["counts"]
    ax.bar(range(len(counts)), counts)
    ax.set_yscale("log")
    ax.set_xlabel(f"forgetting events (never learned: {histogram['never_learned']})")
    ax.set_ylabel("examples")
    save(fig, "forgetting_histogram", "Forgetting events per example (dense build run)")
    return made


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _markdown(pipeline, report: dict, plots: list[tuple[str, str]]) -> str:
    m = report["manifest"]
    lines = [f"# {pipeline.name}", ""]
    if pipeline.description:
        lines += [pipeline.description, ""]
    lines += [f"![{title}]({name})" for name, title in plots] + [""]
    lines += ["## PrAC set", "",
              f"Built on **{pipeline.arch}** ({m['dataset']['name']}, {m['size']} training examples): "
              f"dense test accuracy {_pct(report['dense_accuracy'])}%, **{m['selected']} examples kept "
              f"({100 * m['fraction']:.2f}%)**; reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(m["reasons"].items())) + ".",
              "", "| class | kept | total |", "|---|---:|---:|"]
    names = m["dataset"].get("class_names")
    for c, v in sorted(m["per_class"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {names[int(c)] if names else c} | {v['selected']} | {v['total']} |")
    h = report["forgetting_histogram"]
    lines += ["", f"Forgetting: {h['unforgettable']} examples learned and never forgotten, "
                  f"{h['never_learned']} never learned.", ""]
    head = report["iterations_saved"]
    if head:
        lines += ["## Full-data IMP against PrAC-IMP", "",
                  f"Matching rule: {head['rule']}.", "",
                  "| sparsity | IMP acc | PrAC acc | within | IMP iters (cum.) | PrAC iters (cum.) | saved | saved, probes counted |",
                  "|---:|---:|---:|:---:|---:|---:|---:|---:|"]
        for p in head["per_round"]:
            lines.append(f"| {_pct(p['sparsity'])}% | {_pct(p['imp_accuracy'])} ± {_pct(p['imp_std'])} | "
                         f"{_pct(p['prac_accuracy'])} ± {_pct(p['prac_std'])} | {'yes' if p['within'] else 'no'} | "
                         f"{p['imp_iterations']:.0f} | {p['prac_iterations']:.0f} | {100 * p['saved']:.1f}% | "
                         f"{100 * p['saved_with_probes']:.1f}% |")
        at = head["at"]
        lines += ["", (f"**Iterations saved: {100 * at['saved']:.1f}%** ({100 * at['saved_with_probes']:.1f}% with the "
                       f"probe passes counted) at {_pct(at['sparsity'])}% sparsity, the highest where the PrAC ticket "
                       f"matches the full-data one." if at else
                       "The PrAC tickets match the full-data tickets at no sparsity: no iterations-saved figure."), ""]
    if report["prac_rounds"]:
        lines += ["## PrAC set per round", "", "| round | trained on | next set | of which CEP | Early-Bird stop | iterations |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in report["prac_rounds"]:
            lines.append(f"| {r['round']} | {r['set_size']} | {r['next_set'] if r['next_set'] is not None else '-'} | "
                         f"{r['cep'] if r['cep'] is not None else '-'} | {r['early_bird_epoch'] or '-'} | {r['iterations']} |")
        lines.append("")
    lines += ["## Tickets", ""]
    for key, curve in report["curves"].items():
        lines += [f"### {key}", "", "| sparsity | test acc | seeds | iterations of the round | controls (reinit / random mask) | verdict |",
                  "|---:|---:|---:|---:|---|---|"]
        for c in curve:
            controls = (f"{_pct(c['controls']['reinit'])} / {_pct(c['controls']['random_mask'])}"
                        if "controls" in c else "-")
            verdict = "-"
            if "winning" in c:
                verdict = ("winning ticket" if c["winning"] == 1 else
                           f"matches dense {c['matches_dense']:.0%}, beats controls {c['beats_controls']:.0%}")
            lines.append(f"| {_pct(c['sparsity'])}% | {_pct(c['accuracy'])} ± {_pct(c['std'])} | {c['seeds']} | "
                         f"{c['iterations']:.0f} | {controls} | {verdict} |")
        lines.append("")
    if report["transfer"]:
        lines += ["## The PrAC set reused on other architectures", "",
                  f"Set built on {pipeline.arch}; tickets on B at the final sparsity.", "",
                  "| B | full-data IMP | PrAC-IMP on the set | random subset of equal size | iterations saved |",
                  "|---|---:|---:|---:|---:|"]
        for row in report["transfer"]:
            def cell(key):
                v = row.get(key)
                return f"{_pct(v['final_accuracy'])} ± {_pct(v['final_std'])} @ {_pct(v['final_sparsity'])}%" if v else "-"
            saved = row.get("iterations_saved", {}) or {}
            at = saved.get("at")
            saved_text = f"{100 * at['saved']:.1f}% at {_pct(at['sparsity'])}%" if at else "-"
            lines.append(f"| {row['arch']} | {cell('imp')} | {cell('prac-imp-transfer')} | {cell('random-subset')} | "
                         f"{saved_text} |")
        lines.append("")
    lines += ["Every number is in `report.json`; each run's directory holds its masks, weights, metrics and ledger.", ""]
    return "\n".join(lines)
