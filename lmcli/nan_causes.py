"""What to tell a user whose loss became NaN or Inf: the likely causes for the strategy and options in use.

A TAPAS run below `LOW_TEMPERATURE` is pointed at the resampling temperature: the second pass's scores are
logsumexp over the batch of (w . h + b) / T, so at T = 0.02 they are 50 times as far apart as at T = 1, and its
corrections (log of inclusion probabilities) grow with them. Any other run is pointed at the learning rate and
clipping, and a float16 one at its precision as well.
"""

from __future__ import annotations

from lmcli.config import RunConfig
from lmcli.losses.tapas import resampling_temperature

LOW_TEMPERATURE = 0.3  # below this, a TAPAS NaN names the resampling temperature first


def likely_causes(cfg: RunConfig, step: int, total_steps: int) -> str:
    """What to try, for the run `cfg` whose loss went bad at (1-based) `step` of `total_steps` planned."""
    if cfg.loss.name == "tapas":
        temperature = float(resampling_temperature(cfg.loss, max(step - 1, 0), total_steps))
        if temperature < LOW_TEMPERATURE:
            return (f"the TAPAS resampling temperature was {temperature:.3g} at that step (below {LOW_TEMPERATURE}, "
                    "the second pass's scores, scaled by 1/T, spread far apart): try a higher --resampling-temperature"
                    + (" or --final-resampling-temperature" if cfg.loss.final_resampling_temperature else ""))
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
