"""The numbers of a report: accuracy curves over seeds and the training cost of finding each mask.

How savings are counted (the README's *How savings are counted*). Round 0 is the dense training and round
r (r >= 1) the training that follows the r-th prune. The mask at sparsity s_r
comes from rounds 0..r-1, so:

* **search cost** of the mask at s_r: the training iterations of rounds
  0..r-1, for full-data IMP and for PrAC-IMP alike (PrAC-IMP's rounds run on
  its subsets);
* **evaluation**: training that mask on the full split once (IMP's round r,
  PrAC-IMP's ``ticket-RR``): the same work for both, reported apart, with the
  **total** (search + one evaluation) beside it;
* **probes**: PrAC-IMP's CEP forward passes of rounds 1..r-1, charged as
  ``ceil(examples / batch size)`` training iterations each (a forward pass
  costs about a third of an iteration, so this over-charges on purpose).

So at s_1 the only possible saving is PrAC-IMP's dense round stopping
earlier than IMP's; when both dense rounds are the same run the saving is 0.
The headline is taken at the highest sparsity up to which the PrAC ticket is
within one standard deviation of the IMP ticket (several seeds; within a
tolerance with one seed) at every sparsity; the paper's rule (the highest
sparsity where it matches, gaps allowed) is reported beside it.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from pracset.runs import TicketLayout


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def _stages(run: dict) -> dict:
    return run["summary"]["ledger"]["stages"]


def _iterations(run: dict, stage: str) -> int:
    return _stages(run).get(stage, {}).get("train_iterations", 0)


def round_costs(run: dict, batch_size: int) -> list[dict]:
    """Per ticket row of one run: its accuracy, the search cost of its mask, its probes and its evaluation.

    ``run`` holds ``dir`` (the ticket run's directory) and ``summary`` (its
    ``tickets.json``: the rows and the ledger).
    """
    layout = TicketLayout(run["dir"])
    out = []
    for row in run["summary"]["tickets"]:
        r = row["round"]
        if r is None:  # RigL / GraNet: one run is search and evaluation at once
            cost = _iterations(run, row["stage"])
            out.append({"round": None, "sparsity": row["sparsity"], "accuracy": row["test_accuracy"],
                        "search": cost, "probes": 0, "evaluation": 0})
            continue
        search = sum(_iterations(run, layout.round(j).name) for j in range(r))
        probe_examples = [_stages(run).get(layout.probe_stage(j), {}).get("probe_examples", 0) for j in range(1, r)]
        out.append({"round": r, "sparsity": row["sparsity"],
                    "accuracy": row["test_accuracy"] if row.get("evaluated", True) else None,
                    "search": search, "probes": sum(math.ceil(e / batch_size) for e in probe_examples),
                    "evaluation": _iterations(run, row["stage"]) if row.get("evaluated", True) else None})
    return out


def iterations_saved(imp_runs: list[dict], prac_runs: list[dict], tolerance: float, batch_size: int) -> dict:
    """PrAC-IMP's savings against full-data IMP per sparsity, and the headline (see the module docstring).

    Rounds where a PrAC ticket was not evaluated on the full split have no
    accuracy and are left out. Several seeds: means over seeds, and "within"
    means within one standard deviation of the IMP tickets.
    """
    imp = [round_costs(r, batch_size) for r in imp_runs]
    prac = [round_costs(r, batch_size) for r in prac_runs]
    rounds = min(len(c) for c in imp + prac)
    per_round, best, contiguous = [], None, None
    for r in range(1, rounds):
        if any(c[r]["accuracy"] is None for c in imp + prac):
            continue
        imp_acc = mean_std([c[r]["accuracy"] for c in imp])
        prac_acc = mean_std([c[r]["accuracy"] for c in prac])
        band = imp_acc[1] if len(imp) > 1 else tolerance
        within = prac_acc[0] >= imp_acc[0] - band

        def mean(costs, key):
            return float(np.mean([c[r][key] for c in costs]))

        imp_search, prac_search, prac_probes = mean(imp, "search"), mean(prac, "search"), mean(prac, "probes")
        imp_eval, prac_eval = mean(imp, "evaluation"), mean(prac, "evaluation")
        entry = {"round": r, "sparsity": imp[0][r]["sparsity"], "imp_accuracy": imp_acc[0], "imp_std": imp_acc[1],
                 "prac_accuracy": prac_acc[0], "prac_std": prac_acc[1], "within": bool(within),
                 "imp_search": imp_search, "prac_search": prac_search, "prac_probes": prac_probes,
                 "imp_evaluation": imp_eval, "prac_evaluation": prac_eval,
                 "saved": 1 - prac_search / imp_search,
                 "saved_with_probes": 1 - (prac_search + prac_probes) / imp_search,
                 "saved_total": 1 - (prac_search + prac_probes + prac_eval) / (imp_search + imp_eval)}
        per_round.append(entry)
        if within:
            best = entry
            if all(p["within"] for p in per_round):
                contiguous = entry
    # "at": the highest sparsity up to which PrAC matches at *every* sparsity; "at_highest": the paper's
    # rule (the highest sparsity where it matches), which a lucky match after a gap can push up.
    return {"per_round": per_round, "at": contiguous, "at_highest": best,
            "rule": "within one standard deviation of IMP" if len(imp) > 1 else f"within {tolerance} accuracy (one seed)",
            "seeds": {"imp": len(imp), "prac-imp": len(prac)}}


def curves(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(arch, method) -> per round: sparsity, accuracy mean/std over seeds, search cost, controls, verdicts.

    Verdicts are fractions of the seeds (``winning``, ``matches_dense``,
    ``beats_controls``); rows without a full-split evaluation are left out.
    """
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        grouped[(run["arch"], run["method"])].append(run)
    out = {}
    for key, group in grouped.items():
        rounds = defaultdict(list)
        for run in group:
            for row, cost in zip(run["summary"]["tickets"], round_costs(run, 1)):
                if row["test_accuracy"] is not None and row.get("evaluated", True):
                    rounds[row["round"]].append((row, cost))  # None: a RigL/GraNet run's one ticket
        curve = []
        for r in sorted(rounds, key=lambda r: -1 if r is None else r):
            rows = [row for row, _ in rounds[r]]
            mean, std = mean_std([row["test_accuracy"] for row in rows])
            entry = {"round": r, "sparsity": rows[0]["sparsity"], "accuracy": mean, "std": std, "seeds": len(rows),
                     "search_iterations": mean_std([cost["search"] for _, cost in rounds[r]])[0],
                     "dense_reference": rows[0].get("dense_reference"),
                     "dense_collapsed": any(row.get("dense_collapsed") for row in rows)}
            if "controls" in rows[0]:
                entry["controls"] = {k: mean_std([row["controls"][k] for row in rows])[0] for k in rows[0]["controls"]}
                entry["controls_std"] = {k: mean_std([row["controls"][k] for row in rows])[1]
                                         for k in rows[0]["controls"]}
                for name in ("winning_ticket", "matches_dense", "beats_controls"):
                    entry[name] = sum(row["verdict"][name] for row in rows) / len(rows)
            for extra in ("set_size", "early_bird_epoch"):
                if extra in rows[0]:
                    entry[extra] = rows[0][extra]
            curve.append(entry)
        out[key] = curve
    return out
