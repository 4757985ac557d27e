"""`--aux-loss ar` and `--aux-loss tar`: AWD-LSTM's activation regularisers on the last layer's output.

ar:  alpha * mean(h^2) of the hidden states that meet W (after dropout and the projection), per token.
tar: beta * mean((h_t - h_{t-1})^2) of the last LSTM layer's raw output (before dropout), per token t whose
     predecessor t-1 is a real token of the same row in the batch (0 at a row's first real position).
Both are per-token values, so the mean is over real tokens like the strategy's loss.
"""

from __future__ import annotations

import tensorflow as tf

from lmcli.config import TermsConfig
from lmcli.losses.context import Clock, LossInputs, StrategyOutput


def ar_term(inputs: LossInputs, out: StrategyOutput, cfg: TermsConfig) -> tf.Tensor:
    """mean over D of h^2, per token, (N,)."""
    return tf.reduce_mean(tf.square(inputs.hidden), axis=-1)  # (N,)


def tar_term(inputs: LossInputs, out: StrategyOutput, cfg: TermsConfig) -> tf.Tensor:
    """mean over H of (h_t - h_{t-1})^2 of the raw output, per token, (N,)."""
    raw = inputs.extras["raw_hidden"]  # (B, T, H)
    mask = tf.reshape(inputs.mask, tf.shape(raw)[:2])  # (B, T)
    step = tf.reduce_mean(tf.square(raw[:, 1:] - raw[:, :-1]), axis=-1) * mask[:, 1:] * mask[:, :-1]  # (B, T-1)
    return tf.reshape(tf.pad(step, [[0, 0], [1, 0]]), [-1])  # (N,): nothing before a row's first position


def ar_weight(clock: Clock, cfg: TermsConfig) -> tf.Tensor:
    return tf.constant(cfg.ar_alpha, tf.float32)


def tar_weight(clock: Clock, cfg: TermsConfig) -> tf.Tensor:
    return tf.constant(cfg.tar_beta, tf.float32)
