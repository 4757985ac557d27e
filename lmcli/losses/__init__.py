"""Loss strategies behind one contract, their registry, and the one reduction.

A strategy is a plain function

    fn(inputs: LossInputs, config: LossConfig, ctx: StrategyContext) -> StrategyOutput

whose `losses` (N,) are per-token losses in nats, 0 where mask is 0, and whose `logits` are over the classes it
scored (loss terms may read them). The model never knows which one it runs; evaluation always uses the full
softmax.

Each strategy's module declares everything about it in one `Strategy` (`lmcli.losses.strategy`): its options'
checks, the optimizer that suits it, what `--sampler auto` means for it, its memory cost and whether it draws
candidates. The registry is `lmcli.config.STRATEGY_MODULES` (name -> module, so that `--help` lists the names
without TensorFlow); `STRATEGIES` below holds each module's `STRATEGY`. Adding a strategy is its module plus one
line there.

The import direction: this package imports `lmcli.config` (the configs are its inputs); the config never imports
this package at import time. `RunConfig.validate` and `RunConfig.resolved` ask the registry when they run, through
`get` (unknown names) and `STRATEGIES`, so that the configs stay free of TensorFlow where only they are needed
(the CLI's start, `--help`).
"""

from __future__ import annotations

import importlib
from typing import Optional

import tensorflow as tf

from lmcli.config import STRATEGY_MODULES, LossConfig
from lmcli.losses.context import Clock, LossInputs, StrategyContext, StrategyOutput
from lmcli.losses.strategy import OutputMemory, StepSize, Strategy, StrategyFn
from lmcli.runtime.errors import ConfigError

STRATEGIES: dict[str, Strategy] = {name: importlib.import_module(module).STRATEGY
                                   for name, module in STRATEGY_MODULES.items()}


def get(name: str) -> Strategy:
    """The strategy called `name`, or a ConfigError listing the known ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown loss '{name}' (choose from {', '.join(STRATEGIES)})") from None


def check(config: LossConfig, vocab_size: int) -> None:
    """The checks of `config`'s strategy on its options (a ConfigError naming the option), for V = `vocab_size`."""
    get(config.name).check(config, vocab_size)


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


__all__ = ["STRATEGIES", "Clock", "LossInputs", "OutputMemory", "StepSize", "Strategy", "StrategyContext",
           "StrategyFn", "StrategyOutput", "check", "get", "masked_mean", "per_token"]
