"""The report's PNG plots, written atomically; one method keeps one colour in every panel."""

from __future__ import annotations

import io

from pracset.fileio import atomic_write_bytes
from pracset.runs import PipelineLayout

#: Every method's colour, the same in every panel and plot.
COLOURS = {"imp": "tab:blue", "prac-imp": "tab:orange", "rigl": "tab:green", "granet": "tab:red",
           "rigl-prac": "tab:olive", "granet-prac": "tab:pink", "paper-set-transfer": "tab:orange",
           "one-shot-set-transfer": "tab:purple", "random-subset": "tab:gray"}


def write_plots(layout: PipelineLayout, pipeline, curves: dict, headline: dict | None, prac_rounds: list[dict],
                histogram: dict) -> list[tuple[str, str]]:
    """Draw the plots into the run's directory; returns (file name, title) of each."""
    import matplotlib  # here: only a report with plots needs it, and it is slow to import

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
            if curve and curve[0]["round"] == 0 and curve[0]["sparsity"] == 0:
                if method == "imp":
                    dense = curve[0]["accuracy"]
                curve = curve[1:]  # round 0 is the dense network (IMP's is the dense line), never a ticket
            if not curve:
                continue
            colour = COLOURS.get(method)
            xs = [100 * c["sparsity"] for c in curve]
            ax.errorbar(xs, [100 * c["accuracy"] for c in curve], yerr=[100 * c["std"] for c in curve], marker="o",
                        ms=3, capsize=2, color=colour, label=method)
            ctl = [c for c in curve if "controls" in c]
            for key, style in (("reinit", ":"), ("random_mask", "--")):
                if ctl:
                    ax.plot([100 * c["sparsity"] for c in ctl], [100 * c["controls"][key] for c in ctl], style,
                            marker="x", ms=3, color=colour, label=f"{method} control: {key.replace('_', ' ')}")
        if dense is not None:
            ax.axhline(100 * dense, color="black", lw=0.8, label="dense (full data, full budget)")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(arch)
        ax.legend(fontsize=7)
    save(fig, "accuracy_vs_sparsity", "Test accuracy against sparsity (mean ± std over seeds)")

    if headline and headline["per_round"]:
        per = headline["per_round"]
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [100 * p["sparsity"] for p in per]
        ax.plot(xs, [p["imp_search"] for p in per], marker="o", color=COLOURS["imp"], label="full-data IMP")
        ax.plot(xs, [p["prac_search"] for p in per], marker="o", color=COLOURS["prac-imp"], label="PrAC-IMP")
        ax.plot(xs, [p["prac_search"] + p["prac_probes"] for p in per], ls="--", color=COLOURS["prac-imp"],
                label="PrAC-IMP, probes charged")
        if headline["at"]:
            ax.axvline(100 * headline["at"]["sparsity"], color="grey", lw=0.8,
                       label="PrAC matches at every sparsity up to here")
        ax.set_xlabel("sparsity of the mask found (%)")
        ax.set_ylabel("training iterations to find the mask")
        ax.legend()
        save(fig, "iterations_vs_sparsity", "Search cost of each mask (rounds 0..r-1), evaluation apart")

    if prac_rounds:
        fig, ax = plt.subplots(figsize=(6, 4))
        rounds = [r["round"] for r in prac_rounds]
        ax.bar(rounds, [r["next_set"] or 0 for r in prac_rounds], color=COLOURS["prac-imp"],
               label="set selected after the round")
        ax.bar(rounds, [r["cep"] or 0 for r in prac_rounds], color="black", alpha=0.6,
               label="of which CEP (same round)")
        ax.set_xlabel("PrAC-IMP round")
        ax.set_ylabel("examples")
        ax.legend()
        save(fig, "prac_set_per_round", "Each round's PrAC set and its own CEP part (first seed)")

    fig, ax = plt.subplots(figsize=(6, 4))
    counts = histogram["counts"]
    ax.bar(range(len(counts)), counts)
    ax.set_yscale("log")
    ax.set_xlabel(f"forgetting events (never learned: {histogram['never_learned']})")
    ax.set_ylabel("examples")
    save(fig, "forgetting_histogram", "Forgetting events per example (dense build run)")
    return made
