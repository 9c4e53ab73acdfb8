"""``report.md``: what was measured, with how many seeds, in words and tables (every number is in report.json)."""

from __future__ import annotations

from pracset.report.ablate import ablation_markdown
from pracset.report.compare import compare_markdown
from pracset.report.figures import __doc__ as COUNTING

TRANSFER_METHODS = ("imp", "paper-set-transfer", "one-shot-set-transfer", "random-subset")
TRANSFER_NAMES = {"imp": "full data (IMP)", "paper-set-transfer": "PrAC-IMP's set (the paper's CEP)",
                  "one-shot-set-transfer": "build's set (one-shot CEP)", "random-subset": "random subset, same size"}


def pct(x: float | None) -> str:
    """A fraction as a percentage with two decimals ("-" for none)."""
    return "-" if x is None else f"{100 * x:.2f}"


def _seeds(fraction: float, seeds: int) -> str:
    return f"{round(fraction * seeds)}/{seeds} seeds"


def markdown(pipeline, report: dict, plots: list[tuple[str, str]]) -> str:
    """The report as Markdown: plots first, then the set, the savings, the tickets and the transfer."""
    m = report["manifest"]
    lines = [f"# {pipeline.name}", ""]
    if pipeline.description:
        lines += [pipeline.description, ""]
    lines += ["**Read first:** " + "; ".join(report.get("caveats", [])) + ".", ""]
    if report.get("warnings"):
        lines += ["**Warnings** (see the README's *Warnings* section for what each means):", "",
                  *[f"- {w}" for w in report["warnings"]], ""]
    lines += [f"Seeds: {', '.join(map(str, pipeline.seeds))} (initialisation and data order); transfer seeds: "
              f"{', '.join(map(str, pipeline.transfer_seed_list))}. Accuracies are mean ± standard deviation over "
              "seeds.", ""]
    lines += [f"![{title}]({name})" for name, title in plots] + [""]
    lines += ["## PrAC set of `pracset build` (one-shot CEP)", "",
              f"Built on **{pipeline.arch}** ({m['dataset']['name']}, {m['size']} training examples, seed "
              f"{pipeline.train.seed}): dense test accuracy {pct(report['dense_accuracy'])}%, **{m['selected']} "
              f"examples kept ({100 * m['fraction']:.2f}%)**; reasons: "
              + ", ".join(f"{k} {v}" for k, v in sorted(m["reasons"].items())) + ". Its CEP compares the dense "
              "model with one-shot pruned copies (no retraining), a cheap stand-in for the paper's CEP.",
              "", "| class | kept | total |", "|---|---:|---:|"]
    names = m["dataset"].get("class_names")
    for c, v in sorted(m["per_class"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {names[int(c)] if names else c} | {v['selected']} | {v['total']} |")
    h = report["forgetting_histogram"]
    lines += ["", f"Forgetting: {h['unforgettable']} examples learned and never forgotten, "
                  f"{h['never_learned']} never learned.", ""]
    lines += _savings(report["iterations_saved"])
    lines += _rounds(report["prac_rounds"], report["early_bird_earliest"])
    lines += _tickets({key: curve for key, curve in report["curves"].items()
                       if "/compare-" not in key and "/ablate-" not in key})
    lines += _transfer(pipeline, report["transfer"])
    lines += compare_markdown(report.get("compare") or [])
    lines += ablation_markdown(report.get("ablation") or [])
    lines += ["Every number is in `report.json`; each run's directory holds its masks, weights, metrics and ledger.", ""]
    return "\n".join(lines)


def _savings(head: dict | None) -> list[str]:
    if not head:
        return []
    lines = ["## Full-data IMP against PrAC-IMP", "", "How the cost is counted:", "",
             *[f"> {line}" if line else ">" for line in COUNTING.strip().splitlines()], "",
             f"Matching rule: {head['rule']} ({head['seeds']['imp']} IMP and {head['seeds']['prac-imp']} PrAC-IMP "
             "seeds).", "",
             "| sparsity | IMP acc | PrAC acc | within | IMP search | PrAC search | PrAC probes | saved | saved, probes "
             "charged | evaluation (IMP / PrAC) | saved incl. evaluation |",
             "|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in head["per_round"]:
        lines.append(f"| {pct(p['sparsity'])}% | {pct(p['imp_accuracy'])} ± {pct(p['imp_std'])} | "
                     f"{pct(p['prac_accuracy'])} ± {pct(p['prac_std'])} | {'yes' if p['within'] else 'no'} | "
                     f"{p['imp_search']:.0f} | {p['prac_search']:.0f} | {p['prac_probes']:.0f} | "
                     f"{100 * p['saved']:.1f}% | {100 * p['saved_with_probes']:.1f}% | "
                     f"{p['imp_evaluation']:.0f} / {p['prac_evaluation']:.0f} | {100 * p['saved_total']:.1f}% |")
    at, highest = head["at"], head.get("at_highest")
    if at:
        lines += ["", f"**Search iterations saved: {100 * at['saved']:.1f}%** ({100 * at['saved_with_probes']:.1f}% with "
                      f"the probes charged; {100 * at['saved_total']:.1f}% counting one full-data evaluation of the "
                      f"ticket for each method) at {pct(at['sparsity'])}% sparsity: up to there the PrAC ticket "
                      "matches the full-data one at every sparsity."]
    else:
        lines += ["", "The PrAC ticket does not match the full-data one at the first sparsity: no iterations-saved "
                      "figure."]
    if highest and highest is not at:
        misses = [pct(p["sparsity"]) + "%" for p in head["per_round"]
                  if not p["within"] and p["sparsity"] < highest["sparsity"]]
        lines += ["", f"By the paper's rule (the highest sparsity where it matches) the figure would be "
                      f"{100 * highest['saved']:.1f}% at {pct(highest['sparsity'])}%, but the PrAC ticket misses at "
                      f"{', '.join(misses)} below it, so that figure is not claimed."]
    return lines + [""]


def _rounds(rounds: list[dict], earliest: int | None) -> list[str]:
    if not rounds:
        return []
    lines = ["## PrAC set per round (first seed)", "",
             "| round | trained on | set selected | of which CEP | Early-Bird stop | iterations |",
             "|---:|---:|---:|---:|---:|---:|"]
    flagged = False
    for r in rounds:
        stop = r["early_bird_epoch"]
        mark = ""
        if stop is not None and earliest is not None and stop <= earliest:
            mark, flagged = " (earliest possible)", True
        lines.append(f"| {r['round']} | {r['set_size']} | {r['next_set'] if r['next_set'] is not None else '-'} | "
                     f"{r['cep'] if r['cep'] is not None else '-'} | {stop or '-'}{mark} | {r['iterations']} |")
    if flagged:
        lines += ["", f"A round stopped at epoch {earliest}, the earliest its Early-Bird queue allows: there the rule "
                      "acted as a fixed budget, not as a sign that the mask had settled."]
    return lines + [""]


def _tickets(curves: dict) -> list[str]:
    lines = ["## Tickets", "",
             "Verdict columns count seeds: a ticket *matches* the fully trained dense network within the tolerance, "
             "and *beats the controls* when it is above both the re-initialised and the random-mask control by "
             "more than the tolerance. Round 0 of a method other than IMP is its own dense round (on a subset, or "
             "stopped early) and is not shown.", ""]
    for key, curve in curves.items():
        if not key.endswith("/imp"):
            curve = [c for c in curve if c["round"] != 0]  # None, a RigL/GraNet ticket, stays
        if not curve:
            continue
        lines += [f"### {key}", "", "| sparsity | test acc | seeds | search iterations | controls: reinit / random "
                  "mask | winning | matches dense | beats controls |", "|---:|---:|---:|---:|---|---|---|---|"]
        for c in curve:
            controls = (f"{pct(c['controls']['reinit'])} / {pct(c['controls']['random_mask'])}"
                        if "controls" in c else "-")
            verdicts = ([_seeds(c[k], c["seeds"]) for k in ("winning_ticket", "matches_dense", "beats_controls")]
                        if "winning_ticket" in c else ["-"] * 3)
            if c.get("dense_collapsed"):
                verdicts[1] = "dense collapsed: no reference"
            lines.append(f"| {pct(c['sparsity'])}% | {pct(c['accuracy'])} ± {pct(c['std'])} | {c['seeds']} | "
                         f"{c['search_iterations']:.0f} | {controls} | " + " | ".join(verdicts) + " |")
        lines.append("")
    return lines


def _transfer(pipeline, transfer: list[dict]) -> list[str]:
    if not transfer:
        return []
    lines = ["## The sets reused on other architectures", "",
             f"Sets built on {pipeline.arch}; on each architecture B, IMP on full data and PrAC-IMP on each fixed "
             "set, every round's ticket trained on the full split. Search iterations are those of the rounds that "
             "found the final mask.", ""]
    for row in transfer:
        present = [m for m in TRANSFER_METHODS if row.get(m)]
        lines += [f"### {row['arch']}", "", "| sparsity | " + " | ".join(TRANSFER_NAMES[m] for m in present) + " |",
                  "|---:|" + "---:|" * len(present)]
        by_round = {}
        for m in present:
            for c in row[m]["curve"]:
                if c["round"]:
                    by_round.setdefault(c["round"], {})[m] = c
        for r in sorted(by_round):
            cells = by_round[r]
            sparsity = next(iter(cells.values()))["sparsity"]
            lines.append(f"| {pct(sparsity)}% | " + " | ".join(
                f"{pct(cells[m]['accuracy'])} ± {pct(cells[m]['std'])}" if m in cells else "-" for m in present) + " |")
        lines.append("| search iterations | " + " | ".join(f"{row[m]['search_iterations']:.0f}" for m in present) + " |")
        lines.append("")
        for m in ("paper-set-transfer", "one-shot-set-transfer"):
            verdict = row.get(f"{m}-vs-random")
            if verdict:
                lines.append(f"- {TRANSFER_NAMES[m]}: {verdict}")
        lines.append("")
    return lines
