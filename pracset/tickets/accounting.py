"""What a ticket run's summary records beside accuracies: each ticket's files and the ledger's split of costs."""

from __future__ import annotations

from pracset.runs import StageFiles, TicketLayout
from pracset.tickets.controls import CONTROLS


def ticket_files(layout: TicketLayout, mask_stage: StageFiles, weights_stage: StageFiles | None) -> dict:
    """A ticket row's ``mask`` and ``weights`` files, as POSIX paths relative to the run directory.

    ``weights`` is the trained ``model.pt`` of ``weights_stage``; ``None`` when
    the ticket was not trained on the full split (no ``weights_stage``).
    """
    def relative(path):
        return path.relative_to(layout.root).as_posix()

    return {"mask": relative(mask_stage.mask),
            "weights": relative(weights_stage.model) if weights_stage is not None else None}


def split_costs(layout, stages: dict, num_rounds: int) -> dict:
    """A ticket run's ledger split as the README's *How savings are counted* counts it: search (rounds 0..R-1 and a
    Data-Diet pretraining), evaluation, controls, probes.

    Evaluation is the full-split training of tickets (IMP's round R, PrAC-IMP's
    ``ticket-RR`` and its dense reference); controls are reported apart.
    """
    def iterations(name: str) -> int:
        return stages.get(name, {}).get("train_iterations", 0)

    pruned = range(1, num_rounds + 1)
    # a ticket is IMP's round R or PrAC-IMP's ticket-RR; controls hang off either kind of stage
    tickets = [layout.round(num_rounds), *(layout.ticket(r) for r in pruned), layout.dense_reference]
    judged = [*(layout.round(r) for r in pruned), *(layout.ticket(r) for r in pruned)]
    controls = [layout.control(stage, control.stage_suffix) for stage in judged for _, control in CONTROLS.items()]
    # the search: rounds 0..R-1, and the Data-Diet protocol's pretraining on its set where there is one
    return {"search": sum(iterations(layout.round(r).name) for r in range(num_rounds)) + iterations(layout.pretrain.name),
            "evaluation": sum(iterations(t.name) for t in tickets),
            "controls": sum(iterations(c.name) for c in controls),
            "probe_examples": sum(stages.get(layout.probe_stage(r), {}).get("probe_examples", 0) for r in pruned)}
