"""Learning-rate schedule: linear warm-up, then polynomial decay (arcface_torch's ``PolyScheduler``).

The rate is a pure function of the step, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

from ..errors import ConfigError


def learning_rate(step: int, *, base_lr: float, total_steps: int, warmup_steps: int = 0,
                  power: float = 2.0) -> float:
    """The rate used by optimiser step ``step`` (0-based).

    Warm-up: ``base_lr × (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps.
    Decay: ``base_lr × (1 − (step − warmup_steps) / (total_steps − warmup_steps)) ** power``.
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ConfigError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, "
                          f"got {total_steps} and {warmup_steps}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = total_steps - warmup_steps
    progress = min(max(step - warmup_steps, 0), span) / span if span else 1.0
    return base_lr * (1.0 - progress) ** power
