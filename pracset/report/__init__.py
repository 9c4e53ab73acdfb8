"""The report of a pipeline run: ``report.json`` (every number), ``report.md`` and PNG plots.

The cost accounting is in :mod:`pracset.report.figures` (its docstring is
the definition the report prints), the plots in :mod:`pracset.report.plots`,
the words and tables in :mod:`pracset.report.markdown`.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from pracset.fileio import atomic_write_bytes, atomic_write_json
from pracset.manifest import read_manifest
from pracset.report.ablate import ablation_rows, build_set_iterations
from pracset.report.compare import compare_rows
from pracset.report.figures import curves as ticket_curves
from pracset.report.figures import iterations_saved, round_costs
from pracset.report.markdown import TRANSFER_METHODS, markdown
from pracset.report.plots import write_plots
from pracset.runs import PipelineLayout, TicketLayout
from pracset.sparse.early_bird import earliest_stop_epoch

log = logging.getLogger(__name__)


def write_report(pipeline, layout: PipelineLayout, results: dict) -> dict:
    """Write report.json, report.md and the plots of a pipeline run into its directory; returns the report."""
    manifest = read_manifest(results["manifest"])
    runs = results["runs"]
    curves = ticket_curves(runs)
    tol = pipeline.report.tolerance
    batch = pipeline.train.batch_size
    by_method = defaultdict(list)
    for run in runs:
        by_method[(run["arch"], run["method"])].append(run)
    headline = None
    if by_method.get((pipeline.arch, "imp")) and by_method.get((pipeline.arch, "prac-imp")):
        headline = iterations_saved(by_method[(pipeline.arch, "imp")], by_method[(pipeline.arch, "prac-imp")], tol, batch)
    transfer = [_transfer_row(arch, curves, by_method, tol, batch) for arch in pipeline.transfer]
    forgetting = manifest.column("forgetting_events")
    never = manifest.column("never_learned")
    bird = pipeline.early_bird
    report = {
        "pipeline": pipeline.to_dict(),
        "manifest": {**manifest.summary(), "provenance": {k: v for k, v in manifest.provenance.items()
                                                          if k not in ("history", "build_identity")}},
        "dense_accuracy": manifest.provenance.get("dense_test_accuracy"),
        "curves": {f"{a}/{m}": c for (a, m), c in curves.items()},
        "iterations_saved": headline,
        "transfer": transfer,
        "prac_rounds": _prac_rounds(by_method.get((pipeline.arch, "prac-imp"), [])),
        "early_bird_earliest": earliest_stop_epoch(bird, int(pipeline.train.warmup_epochs)),
        "forgetting_histogram": _histogram(forgetting, never),
        "warnings": [f"build: {w}" for w in manifest.provenance.get("warnings") or []]
        + [f"{run['arch']} {run['method']} seed {run['seed']}: {w}"
           for run in runs for w in run["summary"].get("warnings", [])],
        "runs": [{k: v for k, v in run.items() if k != "summary"} for run in runs],
    }
    if getattr(pipeline, "compare", None) is not None:
        archs = tuple(dict.fromkeys((pipeline.arch, *pipeline.transfer)))
        report["compare"] = compare_rows(runs, archs, pipeline.compare.sets(pipeline.selection), results["manifest"])
    if getattr(pipeline, "ablate", None) is not None:
        variants = pipeline.ablation_runs
        charged = build_set_iterations(results["manifest"], batch) if any(v.fixed_set for v in variants) else 0
        report["ablation"] = ablation_rows(by_method, pipeline.arch, variants, tol, batch, set_iterations=charged,
                                           stopped=results.get("ablation_stopped", []))
    report["caveats"] = caveats(pipeline, report)
    atomic_write_json(layout.report_json, report)
    shown = {key: curve for key, curve in curves.items()  # the compared sets and the variants: in their own parts
             if not key[1].startswith(("compare-", "ablate-"))}
    plots = (write_plots(layout, pipeline, shown, headline, report["prac_rounds"], report["forgetting_histogram"],
                         report.get("compare") or [], report.get("ablation") or [])
             if pipeline.report.plots else [])
    atomic_write_bytes(layout.report_md, markdown(pipeline, report, plots).encode())
    log.info("report written to %s", layout.report_md)
    return report


def caveats(pipeline, report: dict) -> list[str]:
    """What a reader must know before quoting the headline: seeds, the tolerance in test examples, warnings.

    Printed with the headline by ``pracset run`` and at the top of ``report.md``.
    """
    seeds = len(pipeline.seeds)
    out = [f"{seeds} seed{'s' if seeds != 1 else ''}" + (": a demonstration, not a result" if seeds == 1 else "")]
    test = (report["manifest"].get("dataset") or {}).get("test_examples")
    if seeds == 1 and test:
        tol = pipeline.report.tolerance
        out.append(f"a ticket matches within {100 * tol:.2f} points = {tol * test:.1f} of {test} test examples")
    elif test:
        out.append(f"a ticket matches within one standard deviation over seeds; {test} test examples")
    if report["warnings"]:
        out.append(f"{len(report['warnings'])} warning(s) of degenerate training: see the report")
    provenance = report["manifest"].get("provenance") or {}
    probe = provenance.get("probe") or {}
    collapsed = probe.get("collapsed") or []
    if collapsed:
        kept = probe.get("collapsed_kept", "probe_collapsed" not in provenance)  # older manifests kept them
        out.append("the probe at " + ", ".join(f"{100 * float(s):.0f}%" for s in collapsed) + " sparsity collapsed "
                   + ("and was kept, as asked: its disagreements mark whole classes" if kept
                      else "and was left out of the set"))
    return out


def _transfer_row(arch: str, curves: dict, by_method: dict, tolerance: float, batch: int) -> dict:
    row: dict = {"arch": arch}
    for method in TRANSFER_METHODS:
        curve = curves.get((arch, method))
        runs = by_method.get((arch, method), [])
        if curve and runs:
            final = [round_costs(run, batch)[-1] for run in runs]
            row[method] = {"final_sparsity": curve[-1]["sparsity"], "final_accuracy": curve[-1]["accuracy"],
                           "final_std": curve[-1]["std"], "curve": curve,
                           "examples": (runs[0]["summary"].get("manifest") or {}).get("selected"),
                           "search_iterations": float(np.mean([f["search"] for f in final]))}
    random = row.get("random-subset")
    for method in ("paper-set-transfer", "one-shot-set-transfer"):
        chosen = row.get(method)
        if chosen and random:
            spread = max(chosen["final_std"], random["final_std"]) or tolerance
            gap = chosen["final_accuracy"] - random["final_accuracy"]
            sizes = f"{chosen['examples']} vs {random['examples']} examples"
            at = f"at {100 * chosen['final_sparsity']:.1f}% sparsity ({sizes})"
            row[f"{method}-vs-random"] = (
                f"better than the random subset by {100 * gap:.2f} points {at}" if gap > spread else
                f"**no better than the random subset** {at}: {100 * chosen['final_accuracy']:.2f}% against "
                f"{100 * random['final_accuracy']:.2f}%")
        if by_method.get((arch, "imp")) and by_method.get((arch, method)):
            row[f"{method}-iterations_saved"] = iterations_saved(by_method[(arch, "imp")], by_method[(arch, method)],
                                                                 tolerance, batch)
    return row


def _prac_rounds(runs: list[dict]) -> list[dict]:
    """Per round of the first PrAC-IMP seed: the set trained on, the set it selected and that set's CEP part."""
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


__all__ = ["iterations_saved", "round_costs", "write_report"]
