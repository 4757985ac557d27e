"""Masked full softmax: the exact negative log-likelihood of every label."""

from __future__ import annotations

import tensorflow as tf

from lmcli.config import LossConfig
from lmcli.losses.context import LossInputs, StrategyContext, StrategyOutput
from lmcli.losses.strategy import Strategy, every_class, no_options


def strategy(inputs: LossInputs, config: LossConfig, ctx: StrategyContext) -> StrategyOutput:
    """Per-token cross-entropy over all V classes; 0 where mask is 0. Logits: (N, V), every token, every class.

    `config` and `ctx` are unused: the full softmax has no options and draws nothing.
    """
    del config, ctx
    logits = tf.matmul(inputs.hidden, inputs.weights, transpose_b=True) + inputs.bias  # (N, V)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=inputs.labels, logits=logits)  # (N,)
    return StrategyOutput(tf.where(inputs.mask > 0, losses, tf.zeros_like(losses)), logits)  # (N,)


# No options of its own, a dense gradient of W (plain Adam suits it), nothing drawn (--sampler auto is saved as
# unigram all the same), every class scored for every token.
STRATEGY = Strategy(strategy, draws_candidates=False, check=no_options, optimizer="adam", sampler="unigram",
                    memory=every_class)
