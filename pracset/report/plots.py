"""The report's PNG plots, written atomically; one method keeps one colour in every panel."""

from __future__ import annotations

import io

from pracset.fileio import atomic_write_bytes
from pracset.report.ablate import ablation_plot
from pracset.report.compare import compare_plot
from pracset.runs import PipelineLayout

#: Every method's colour, the same in every panel and plot.
COLOURS = {"imp": "tab:blue", "prac-imp": "tab:orange", "rigl": "tab:green", "granet": "tab:red",
           "rigl-prac": "tab:olive", "granet-prac": "tab:pink", "paper-set-transfer": "tab:cyan",
           "one-shot-set-transfer": "tab:purple", "random-subset": "tab:gray"}


#: The CEP part of a PrAC set in the per-round bars.
CEP_COLOUR = "tab:brown"


def use_log_axis(choice: str, sparsities) -> bool:
    """Whether the sparsity axis is log-scaled weights remaining: ``log``, or ``auto`` once past 90% sparsity."""
    return choice == "log" or (choice == "auto" and max(sparsities, default=0.0) > 0.9)


def sparsity_x(sparsity: float, log_axis: bool) -> float:
    """Where a sparsity lies on the x axis: percent pruned (linear) or percent of weights remaining (log)."""
    return 100 * (1 - sparsity) if log_axis else 100 * sparsity


def set_sparsity_axis(ax, log_axis: bool, what: str = "") -> None:
    """Label (and on a log axis scale and invert, so sparser lies to the right) a sparsity axis."""
    suffix = f" {what}" if what else ""
    if not log_axis:
        ax.set_xlabel(f"sparsity{suffix} (% of weights pruned)")
        return
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(f"weights remaining{suffix} (%, log scale)")


def _legend_below(fig, axes) -> None:
    """One legend for the figure, below the panels, so that it never covers a curve."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        order = sorted(entries, key=lambda label: "control" in label)  # the methods first, then their controls
        columns = min(3 if fig.get_size_inches()[0] > 8 else 2, len(order))
        rows = -(-len(order) // columns)
        height = fig.get_size_inches()[1]
        fig.legend([entries[k] for k in order], order, loc="lower center", ncol=columns, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, min(0.5, (0.2 * rows + 0.1) / height), 1, 1))  # about 0.2 inch per legend row


def write_plots(layout: PipelineLayout, pipeline, curves: dict, headline: dict | None, prac_rounds: list[dict],
                histogram: dict, compared: list[dict] = (), ablation: list[dict] = ()) -> list[tuple[str, str]]:
    """Draw the plots into the run's directory; returns (file name, title) of each."""
    import matplotlib  # here: only a report with plots needs it, and it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the non-interactive backend
    from matplotlib.ticker import MaxNLocator

    made = []

    def save(fig, name: str, title: str) -> None:
        if not fig.legends:  # a figure with a legend below its panels has laid itself out already
            fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        path = layout.plot(name)
        atomic_write_bytes(path, buffer.getvalue())  # a killed run leaves no truncated PNG
        made.append((path.name, title))

    archs = [pipeline.arch, *pipeline.transfer]
    settings = getattr(pipeline, "report", None)
    sparsities = [c["sparsity"] for curve in curves.values() for c in curve]
    log_axis = use_log_axis(getattr(settings, "sparsity_axis", "auto"), sparsities)
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 4.6), squeeze=False, sharey=True)
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
            xs = [sparsity_x(c["sparsity"], log_axis) for c in curve]
            ax.errorbar(xs, [100 * c["accuracy"] for c in curve], yerr=[100 * c["std"] for c in curve], marker="o",
                        ms=3, capsize=2, color=colour, label=method)
            ctl = [c for c in curve if "controls" in c]
            for key, style in (("reinit", ":"), ("random_mask", "--")):
                if ctl:
                    ax.plot([sparsity_x(c["sparsity"], log_axis) for c in ctl],
                            [100 * c["controls"][key] for c in ctl], style, marker="x", ms=3, color=colour,
                            label=f"{method} control: {key.replace('_', ' ')}")
        if dense is not None:
            ax.axhline(100 * dense, color="black", lw=0.8, label="dense (full data, full budget)")
        set_sparsity_axis(ax, log_axis)
        ax.set_title(arch)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    _legend_below(fig, axes[0])
    save(fig, "accuracy_vs_sparsity", "Test accuracy against sparsity (mean ± std over seeds)")

    if headline and headline["per_round"]:
        per = headline["per_round"]
        fig, ax = plt.subplots(figsize=(6, 4.6))
        xs = [sparsity_x(p["sparsity"], log_axis) for p in per]
        ax.plot(xs, [p["imp_search"] for p in per], marker="o", color=COLOURS["imp"], label="full-data IMP")
        ax.plot(xs, [p["prac_search"] for p in per], marker="o", color=COLOURS["prac-imp"], label="PrAC-IMP")
        ax.plot(xs, [p["prac_search"] + p["prac_probes"] for p in per], ls="--", color=COLOURS["prac-imp"],
                label="PrAC-IMP, probes charged")
        if headline["at"]:
            ax.axvline(sparsity_x(headline["at"]["sparsity"], log_axis), color="grey", lw=0.8,
                       label="PrAC matches at every sparsity up to here")
        set_sparsity_axis(ax, log_axis, what="of the mask found")
        ax.set_ylabel("training iterations to find the mask")
        ax.grid(alpha=0.3)
        _legend_below(fig, [ax])
        save(fig, "iterations_vs_sparsity", "Search cost of each mask (rounds 0..r-1), evaluation apart")

    if prac_rounds:
        fig, ax = plt.subplots(figsize=(6, 4))
        rounds = [r["round"] for r in prac_rounds]
        cep = [r["cep"] or 0 for r in prac_rounds]
        rest = [max(0, (r["next_set"] or 0) - c) for r, c in zip(prac_rounds, cep)]
        # stacked, so each legend swatch is exactly the colour of its bars (no overlap blending them)
        ax.bar(rounds, cep, color=CEP_COLOUR, label="CEP part (same round)")
        ax.bar(rounds, rest, bottom=cep, color=COLOURS["prac-imp"], label="rest of the set selected after the round")
        ax.set_xlabel("PrAC-IMP round")
        ax.set_ylabel("examples")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        save(fig, "prac_set_per_round", "Each round's PrAC set and its own CEP part (first seed)")

    fig, ax = plt.subplots(figsize=(6, 4))
    counts = histogram["counts"]
    ax.bar(range(len(counts)), counts)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a count of events: integer ticks only
    ax.set_xlim(-0.6, max(len(counts), 2) - 0.4)
    ax.set_xlabel(f"forgetting events (never learned: {histogram['never_learned']})")
    ax.set_ylabel("examples")
    save(fig, "forgetting_histogram", "Forgetting events per example (dense build run)")
    compare_plot(plt, list(compared), save)
    ablation_plot(plt, list(ablation), save)
    return made
