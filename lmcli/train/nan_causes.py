"""What to tell a user whose loss became NaN or Inf: the likely causes for the strategy and options in use.

A strategy may name a cause of its own first (`Strategy.nan_cause`: TAPAS points at a low resampling
temperature). Otherwise the run is pointed at the learning rate and clipping, and a float16 one at its precision
as well.
"""

from __future__ import annotations

from lmcli import losses
from lmcli.config import RunConfig


def likely_causes(cfg: RunConfig, step: int, total_steps: int) -> str:
    """What to try, for the run `cfg` whose loss went bad at (1-based) `step` of `total_steps` planned."""
    own = losses.get(cfg.loss.name).nan_cause
    cause = own(cfg.loss, step, total_steps) if own is not None else None
    if cause:
        return cause
    train = cfg.train
    clip = (f"a smaller --clip-norm (now {train.clip_norm:g})" if train.clip_norm > 0
            else "a --clip-norm (e.g. 1.0; clipping is off)")
    causes = f"try a lower --lr (now {train.lr:g}) or {clip}"
    if train.precision == "mixed-float16":
        causes += ", or --precision mixed-bfloat16 (float16 overflows above 65504)"
    return causes


def non_finite_message(loss: float, step: int, epoch: int, last_saved: int, cfg: RunConfig, total_steps: int) -> str:
    """The one-line error for a loss that became `loss` at `step` (epoch `epoch`, 1-based)."""
    kept = (f"the last good checkpoint (step {last_saved}) is kept" if last_saved >= 0
            else "no checkpoint was written yet")
    return (f"the loss became {loss} at step {step} (epoch {epoch}); {kept}; "
            f"{likely_causes(cfg, step, total_steps)}, then rerun to resume")
