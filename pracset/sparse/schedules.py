"""Schedules of the dynamic sparse methods: functions of the optimizer step only.

Because they read nothing but the step, a run is deterministic and a resumed
run continues on exactly the same schedule.
"""

from __future__ import annotations

import math


def rigl_drop_fraction(step: int, alpha: float, end_step: int) -> float:
    """RigL's cosine-annealed drop fraction ``alpha/2 * (1 + cos(pi * t / T_end))`` (0 after ``T_end``).

    This is ``tf.train.cosine_decay(alpha, t, T_end)`` as in the official code
    (mask updates begin at step 0).
    """
    if end_step <= 0 or step > end_step:
        return 0.0
    return 0.5 * alpha * (1.0 + math.cos(math.pi * step / end_step))


def cubic_sparsity(step: int, *, t0: int, n: int, delta_t: int, s_i: float, s_f: float) -> float:
    """Zhu & Gupta's gradual schedule ``s_f + (s_i - s_f) * (1 - (t - t0) / (n * delta_t)) ** 3``.

    ``s_i`` before ``t0``, ``s_f`` from ``t0 + n * delta_t`` on; ``n`` is the
    number of pruning intervals (``n = 0`` jumps to ``s_f`` at ``t0``).
    """
    if step < t0:
        return s_i
    if n <= 0:
        return s_f
    progress = min(1.0, (step - t0) / (n * delta_t))
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


def cosine_regrow_fraction(step: int, total_steps: int, start: float = 0.5, end: float = 0.005) -> float:
    """GraNet's regeneration fraction: cosine from ``start`` at step 0 to ``end`` at ``total_steps``.

    The official ``CosineDecay`` (``CosineAnnealingLR`` with ``T_max`` = all
    training steps, ``eta_min`` = ``end``), stepped once per optimizer step.
    """
    progress = min(1.0, max(0.0, step / max(total_steps, 1)))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_at_fraction(fraction: float, total_steps: int) -> int:
    """The step a fraction of training falls on: ``floor(fraction * total_steps)``.

    Robust to float error: ``0.29 * 100`` is ``28.999...``, and a plain floor
    would give step 28.
    """
    return int(math.floor(fraction * total_steps + 1e-9))


__all__ = ["cosine_regrow_fraction", "cubic_sparsity", "rigl_drop_fraction", "step_at_fraction"]
