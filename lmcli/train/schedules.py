"""Learning-rate schedules: the rate of every step as a pure function of (step, epoch, validation history).

The only history is `decays`, the number of epoch ends at which the validation perplexity did not improve on
the best so far (used by `plateau`); it is saved in checkpoints, so a resumed run follows the uninterrupted
run's rates exactly. With base rate r (`--lr`), decay F (`--lr-decay`, a divisor >= 1), N (`--lr-decay-every`
epochs), floor m (`--min-lr`) and W warm-up steps, the rate of step s (0-based) in epoch e (fractional epochs
done: e_f) is

    constant     r
    step         r / F ** floor(e / N)
    exponential  r / F ** (e_f / N)
    cosine       m + (r - m) * (1 + cos(pi * min(1, (s - W) / (total - W)))) / 2
    plateau      r / F ** decays          (the PyTorch word_language_model recipe: F = 4)

then max(m, .) and, during the warm-up, times (s + 1) / W.
"""

from __future__ import annotations

import math

from lmcli.config import TrainConfig


def learning_rate(cfg: TrainConfig, step: int, epoch: float, total_steps: int, decays: int = 0) -> float:
    """The rate of step `step` (0-based), taken at fractional epoch `epoch` (epochs done before the step)."""
    r, f, every = cfg.lr, cfg.lr_decay, cfg.lr_decay_every
    kind = cfg.lr_schedule
    if kind == "constant":
        rate = r
    elif kind == "step":
        rate = r / f ** math.floor(epoch / every + 1e-9)
    elif kind == "exponential":
        rate = r / f ** (epoch / every)
    elif kind == "cosine":
        span = max(total_steps - cfg.warmup_steps, 1)
        t = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
        rate = cfg.min_lr + (r - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    elif kind == "plateau":
        rate = r / f ** decays
    else:
        raise ValueError(f"unknown learning-rate schedule '{kind}'")
    rate = max(cfg.min_lr, rate)
    if step < cfg.warmup_steps:
        rate *= (step + 1) / cfg.warmup_steps
    return rate


def plateau_decays(decays: int, perplexity: float, best: float) -> int:
    """`decays` after an epoch-end validation: one more when `perplexity` did not improve on `best`."""
    return decays + 1 if not perplexity < best else decays
