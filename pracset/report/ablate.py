"""The ``[ablate]`` part of a report: which part of PrAC-IMP costs accuracy, and what each saves
(:mod:`pracset.ablate`).

Every variant, and the pipeline's own PrAC-IMP, is set beside full-data IMP on the building architecture at
every sparsity, as the headline is (:func:`~pracset.report.figures.iterations_saved`): the accuracy gap (mean
over seeds, in points) and the search cost of the mask as a share of IMP's, probes charged. The ``fixed-set``
variant is charged its set too: the build's dense run (every round with ``--cep trained``) and its probe
(``ceil(examples / batch size)`` iterations per probe stage, as every probe in the report).
"""

from __future__ import annotations

from pracset.compare import probe_passes, statistics_iterations
from pracset.manifest import read_manifest
from pracset.report.figures import iterations_saved

#: The label of the pipeline's own PrAC-IMP in the ablation's rows.
AS_CONFIGURED = "prac-imp (as configured)"


def build_set_iterations(manifest, batch_size: int) -> int:
    """What the build's set cost: the runs its statistics came from (the dense run, or every round of ``--cep
    trained``) and its probe passes (as iterations); not the extra runs of EL2N or GraNd, which it does not read."""
    stages = read_manifest(manifest).provenance.get("ledger", {}).get("stages", {})
    return statistics_iterations(stages) + probe_passes(stages, batch_size)


def ablation_rows(by_method: dict, arch: str, variants, tolerance: float, batch_size: int, *, set_iterations: int = 0,
                  stopped: list[dict] = ()) -> list[dict]:
    """One row per variant (the pipeline's PrAC-IMP first): per sparsity, its gap to full-data IMP and its search
    cost (set + rounds + probes) as a share of IMP's; and the highest sparsity up to which it stays within IMP's
    standard deviation at every sparsity. ``set_iterations`` is charged to the ``fixed-set`` variant
    (:func:`build_set_iterations`). A variant that ``stopped`` on a seed (its rule selected nothing) is
    reported with why, and no accuracy: its finished seeds alone would count in its favour."""
    imp = by_method.get((arch, "imp"))
    if not imp:
        return []
    entries = [(AS_CONFIGURED, "", "prac-imp", 0)]
    entries += [(v.name, v.changes, v.label, set_iterations if v.fixed_set else 0) for v in variants]
    rows = []
    for name, changes, label, charged in entries:
        halted = [f"seed {s['seed']}: {s['reason']}" for s in stopped if s["variant"] == name]
        if halted:
            rows.append({"variant": name, "changes": changes, "seeds": 0, "stopped": halted})
            continue
        runs = by_method.get((arch, label))
        if not runs:
            rows.append({"variant": name, "changes": changes, "seeds": 0, "stopped": ["no finished run"]})
            continue
        saved = iterations_saved(imp, runs, tolerance, batch_size)
        per = []
        for p in saved["per_round"]:
            search = p["prac_search"] + p["prac_probes"] + charged
            per.append({"sparsity": p["sparsity"], "gap": p["prac_accuracy"] - p["imp_accuracy"], "std": p["prac_std"],
                        "imp_std": p["imp_std"], "within": p["within"], "search": search,
                        "imp_search": p["imp_search"], "cost_share": search / p["imp_search"]})
        if not per:
            rows.append({"variant": name, "changes": changes, "seeds": 0,
                         "stopped": ["no ticket of it was trained on the full split"]})
            continue
        # iterations_saved's "at": the highest sparsity up to which it matches at every sparsity
        matches = per[saved["per_round"].index(saved["at"])] if saved["at"] else None
        rows.append({"variant": name, "changes": changes, "seeds": len(runs), "set_iterations": charged,
                     "per_sparsity": per, "matches_up_to": matches, "final": per[-1]})
    return rows


def _cell(text: str) -> str:
    """Text inside a Markdown table cell: its own '|' (as in |P|) would end the cell."""
    return text.replace("|", "\\|")


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def ablation_markdown(rows: list[dict]) -> list[str]:
    """The ablation's two tables (a summary, and the gap at every sparsity), with what they do not show."""
    if not rows:
        return []
    seeds = max(row["seeds"] for row in rows)
    lines = ["## Which part of PrAC-IMP costs accuracy", "",
             "Each variant changes one part of the pipeline's PrAC-IMP and runs on the building architecture with "
             "every seed. Gap: the ticket's accuracy minus full-data IMP's at the same sparsity, in points (mean "
             "over seeds). Cost: the search cost of the mask (its rounds, probes charged, and for fixed-set the "
             "build's dense run and probe) as a share of full-data IMP's search. Matches up to: the highest "
             "sparsity up to which the ticket stays within IMP's standard deviation at every sparsity"
             + (" (one seed: within the tolerance)." if seeds < 2 else "."), "",
             "| variant | what changes | seeds | matches up to | cost there | final sparsity | final gap | final "
             "cost |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row.get("stopped"):
            lines.append(f"| {row['variant']} | {_cell(row['changes'])} | stopped | {_cell('; '.join(row['stopped']))} "
                         "| - | - | - | - |")
            continue
        m, f = row["matches_up_to"], row["final"]
        matches = f"{100 * m['sparsity']:.1f}% | {100 * m['cost_share']:.0f}%" if m else "none | -"
        lines.append(f"| {row['variant']} | {_cell(row['changes']) or '-'} | {row['seeds']} | {matches} | "
                     f"{100 * f['sparsity']:.1f}% | {_points(f['gap'])} ± {100 * f['std']:.2f} | "
                     f"{100 * f['cost_share']:.0f}% |")
    rows = [row for row in rows if not row.get("stopped")]
    if not rows:
        return lines + [""]
    sparsities = sorted({p["sparsity"] for row in rows for p in row["per_sparsity"]})
    lines += ["", "Gap to full-data IMP in points (cost as a share of IMP's search) at each sparsity; * within IMP's "
                  "standard deviation:", "",
              "| variant | " + " | ".join(f"{100 * s:.1f}%" for s in sparsities) + " |",
              "|---|" + "---:|" * len(sparsities)]
    for row in rows:
        at = {p["sparsity"]: p for p in row["per_sparsity"]}
        cells = [f"{_points(p['gap'])}{'*' if p['within'] else ''} ({100 * p['cost_share']:.0f}%)" if p else "-"
                 for p in map(at.get, sparsities)]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    lines += ["", "What it does not show: one architecture and one recipe; each variant changes one part, so two "
                  "parts that matter only together are not seen; a gap inside the seeds' spread is not a "
                  "difference; the final ticket's full-data evaluation (the same for every variant) is not in the "
                  "cost.", ""]
    return lines


def ablation_plot(plt, rows: list[dict], save) -> None:
    """Left: each variant's gap to full-data IMP against sparsity; right: the final gap against the search cost."""
    rows = [row for row in rows if not row.get("stopped")]
    if not rows:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    for row in rows:
        per = row["per_sparsity"]
        line = left.errorbar([100 * p["sparsity"] for p in per], [100 * p["gap"] for p in per],
                             yerr=[100 * p["std"] for p in per], marker="o", ms=3, capsize=2, label=row["variant"])
        final = row["final"]
        right.errorbar([100 * final["cost_share"]], [100 * final["gap"]], yerr=[100 * final["std"]], marker="o",
                       ms=5, capsize=2, color=line[0].get_color())
        right.annotate(row["variant"], (100 * final["cost_share"], 100 * final["gap"]), fontsize=7,
                       xytext=(4, 3), textcoords="offset points")
    band = [100 * p["imp_std"] for p in rows[0]["per_sparsity"]]
    xs = [100 * p["sparsity"] for p in rows[0]["per_sparsity"]]
    left.fill_between(xs, [-b for b in band], band, color="grey", alpha=0.2, label="full-data IMP ± its std")
    for ax in (left, right):
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(alpha=0.3)
    left.set_xlabel("sparsity (%)")
    left.set_ylabel("ticket accuracy minus full-data IMP's (points)")
    right.set_xlabel("search cost of the final mask (% of full-data IMP's)")
    right.set_title(f"at {100 * rows[0]['final']['sparsity']:.1f}% sparsity")
    left.legend(fontsize="small")
    save(fig, "ablation", "PrAC-IMP ablated: accuracy gap to full-data IMP against sparsity and against search cost")


__all__ = ["AS_CONFIGURED", "ablation_markdown", "ablation_plot", "ablation_rows", "build_set_iterations"]
