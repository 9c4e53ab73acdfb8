"""The ``[compare]`` part of a report: one table and one plot of the selection rules' tickets (:mod:`pracset.compare`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pracset.compare import set_iterations
from pracset.manifest import read_manifest
from pracset.report.figures import mean_std
from pracset.selection import SelectionConfig


def compare_rows(runs: list[dict], archs: tuple[str, ...], sets: dict[str, SelectionConfig],
                 manifest: Path) -> list[dict]:
    """One row per architecture and set: the final ticket's accuracy over seeds beside full-data IMP's, and the
    iterations it cost (the set's and the search's)."""
    stages = read_manifest(manifest).provenance.get("ledger", {}).get("stages", {})
    rows = []
    for arch in archs:
        imp = _final(runs, arch, "imp")
        for label, selection in sets.items():
            mine = _final(runs, arch, f"compare-{label}")
            if not mine or not imp:
                continue
            accuracy, std = mean_std([r["accuracy"] for r in mine])
            imp_accuracy, imp_std = mean_std([r["accuracy"] for r in imp])
            search = float(np.mean([r["search"] for r in mine]))
            cost = set_iterations(selection, stages)
            rows.append({"arch": arch, "set": label, "seeds": len(mine), "sparsity": mine[0]["sparsity"],
                         "accuracy": accuracy, "std": std, "imp_accuracy": imp_accuracy, "imp_std": imp_std,
                         "within_imp_std": bool(abs(accuracy - imp_accuracy) <= imp_std) if len(imp) > 1 else None,
                         "set_iterations": cost, "search_iterations": search, "total_iterations": cost + search,
                         "imp_search_iterations": float(np.mean([r["search"] for r in imp]))})
    return rows


def _final(runs: list[dict], arch: str, label: str) -> list[dict]:
    """The final ticket of every seed's run of ``label`` on ``arch``: accuracy, sparsity, search iterations."""
    out = []
    for run in runs:
        if run["arch"] != arch or run["method"] != label:
            continue
        summary = run["summary"]
        final = summary["final"]
        out.append({"accuracy": final["test_accuracy"], "sparsity": final["sparsity"],
                    "search": (summary.get("costs") or {}).get("search", 0)})
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _fraction(label: str) -> str:
    return label.rsplit("-f", 1)[-1]


def versus_random(row: dict, rows: list[dict]) -> str:
    """The row's final accuracy against the random set of the same size on the same architecture, in words: better
    only when the gap exceeds the larger of the two standard deviations."""
    random = next((r for r in rows if r["arch"] == row["arch"] and r["set"] == f"random-f{_fraction(row['set'])}"),
                  None)
    if random is None or random is row:
        return "-"
    gap = row["accuracy"] - random["accuracy"]
    spread = max(row["std"], random["std"])
    if row["seeds"] < 2 or random["seeds"] < 2:
        return f"{100 * gap:+.2f} (1 seed: undecided)"
    return f"better by {100 * gap:.2f}" if gap > spread else f"no better ({100 * gap:+.2f})"


def compare_markdown(rows: list[dict]) -> list[str]:
    """The comparison's table, with what it charges and what it does not show."""
    if not rows:
        return []
    lines = ["## Selection rules compared", "",
             "Each rule's set, selected from the build's one dense run, is used as PrAC-IMP's fixed set: its rounds "
             "train on the set, every round's ticket on the full split. The final ticket is set beside full-data "
             "IMP's on the same architecture at the same sparsity. Costs are training iterations: the set's (the "
             "dense run its statistics came from, shared by every rule but random, and the extra runs of EL2N or "
             "GraNd) plus the search's (the rounds that found the final mask). Within IMP's std: the gap to "
             "full-data IMP is at most IMP's standard deviation over seeds (undecided with one seed).", "",
             "| arch | set | seeds | sparsity | ticket acc | full-data IMP | within IMP's std | vs random (same size) "
             "| set iters | search iters | total | IMP search |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for row in rows:
        within = {True: "yes", False: "no", None: "undecided"}[row["within_imp_std"]]
        lines.append(f"| {row['arch']} | {row['set']} | {row['seeds']} | {_pct(row['sparsity'])}% | "
                     f"{_pct(row['accuracy'])} ± {_pct(row['std'])} | {_pct(row['imp_accuracy'])} ± "
                     f"{_pct(row['imp_std'])} | {within} | {versus_random(row, rows)} | {row['set_iterations']} | "
                     f"{row['search_iterations']:.0f} | {row['total_iterations']:.0f} | "
                     f"{row['imp_search_iterations']:.0f} |")
    lines += ["", "What it does not show: the final sparsity only (every round's accuracy is in `report.json`'s "
                  "curves); the build's pruning probe is not charged (no rule here reads it); a rule that wins at "
                  "one size, on one architecture or with few seeds may not win elsewhere.", ""]
    return lines


def compare_plot(plt, rows: list[dict], save) -> None:
    """Final ticket accuracy against its total cost, one panel per architecture, full-data IMP as a reference."""
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    if not archs:
        return
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 4.6), squeeze=False, sharey=True)
    for ax, arch in zip(axes[0], archs):
        mine = [r for r in rows if r["arch"] == arch]
        for row in mine:
            ax.errorbar([row["total_iterations"]], [100 * row["accuracy"]], yerr=[100 * row["std"]], marker="o",
                        ms=4, capsize=2, label=row["set"])
        imp = mine[0]
        ax.errorbar([imp["imp_search_iterations"]], [100 * imp["imp_accuracy"]], yerr=[100 * imp["imp_std"]],
                    marker="s", ms=6, capsize=2, color="black", label="full-data IMP")
        ax.set_title(f"{arch}, {100 * imp['sparsity']:.1f}% sparsity")
        ax.set_xlabel("training iterations (set + search)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final ticket test accuracy (%)")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize="small")
    fig.tight_layout(rect=(0, 0.08 + 0.04 * (len(labels) // 4), 1, 1))
    save(fig, "compare", "Selection rules: final ticket accuracy against total cost (mean ± std over seeds)")


__all__ = ["compare_markdown", "compare_plot", "compare_rows", "versus_random"]
