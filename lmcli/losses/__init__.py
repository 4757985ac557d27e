"""Loss strategies behind one contract, their registry (which owns each one's setup), and the one reduction.

A strategy is a plain function

    fn(inputs: LossInputs, config: LossConfig, ctx: StrategyContext) -> StrategyOutput

whose `losses` (N,) are per-token losses in nats, 0 where mask is 0, and whose `logits` are over the classes it
scored (loss terms may read them). The model never knows which one it runs; evaluation always uses the full
softmax.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np
import tensorflow as tf

from lmcli.config import LOSSES as LOSS_NAMES
from lmcli.config import LossConfig
from lmcli.errors import ConfigError
from lmcli.losses import full, sampled, tapas
from lmcli.losses.context import Clock, LossInputs, StrategyContext, StrategyOutput
from lmcli.losses.samplers import make_sampler

StrategyFn = Callable[[LossInputs, LossConfig, StrategyContext], StrategyOutput]


@dataclass(frozen=True)
class Strategy:
    """A registry entry: the function, and what its setup must make for a run."""

    fn: StrategyFn
    draws_candidates: bool  # needs the candidate sampler named by --sampler

    def setup(self, config: LossConfig, vocab_size: int, unigram_counts: Optional[np.ndarray],
              seed: int, never_labels: tuple[int, ...] = ()) -> StrategyContext:
        """The strategy's per-run context (its sampler, or none)."""
        sampler = (make_sampler(config, vocab_size, unigram_counts, seed, never_labels) if self.draws_candidates
                   else None)
        return StrategyContext(sampler, seed)


STRATEGIES: dict[str, Strategy] = {
    "full": Strategy(full.strategy, draws_candidates=False),
    "sampled": Strategy(sampled.strategy, draws_candidates=True),
    "tapas": Strategy(tapas.strategy, draws_candidates=True),
}


def get(name: str) -> Strategy:
    """The strategy called `name`, or a ConfigError listing the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join(n for n in LOSS_NAMES if n in STRATEGIES)
        raise ConfigError(f"unknown loss '{name}' (choose from {known})") from None


def per_token(config: LossConfig, weights, bias, hidden, labels, mask, step=0, sampler=None, total_steps: int = 0,
              seed: int = 0, rows: int = 1) -> tf.Tensor:
    """The strategy of `config` on plain tensors (W (V, D), b (V,), hidden (N, D), labels (N,), mask (N,), the N
    tokens in `rows` batch rows, row-major): its per-token losses (N,). A convenience for using a strategy outside
    a model."""
    def tensor(x):  # variables stay variables, so that gathers on them give row-sparse gradients
        return x if isinstance(x, (tf.Tensor, tf.Variable)) else tf.constant(x)

    inputs = LossInputs(tensor(weights), tensor(bias), tensor(hidden), tensor(labels), tf.cast(mask, tf.float32),
                        Clock(tf.cast(step, tf.int64), 0.0, total_steps), rows=rows)
    return get(config.name).fn(inputs, config, StrategyContext(sampler, seed)).losses


def masked_mean(losses: tf.Tensor, mask: tf.Tensor, count: Optional[tf.Tensor] = None) -> tf.Tensor:
    """sum(losses * mask) / count, count = sum(mask) unless given (the global count under tf.distribute).

    The mean over real tokens; 0 for an all-padding batch.
    """
    total = tf.reduce_sum(losses * mask)  # ()
    return tf.math.divide_no_nan(total, tf.reduce_sum(mask) if count is None else count)


__all__ = ["STRATEGIES", "Clock", "LossInputs", "Strategy", "StrategyContext", "StrategyFn", "StrategyOutput",
           "get", "masked_mean", "per_token"]
