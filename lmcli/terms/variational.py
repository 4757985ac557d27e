"""The kl term of `--variational-embedding`: a learned Gaussian dropout rate per word, with a log-uniform prior.

Each word w has log alpha_w; in training its vector is theta_w * (1 + sqrt(alpha_w) * eps) (see
`lmcli.model.embedding`). The KL of that gate from the log-uniform prior uses the sparse variational dropout
approximation (Molchanov et al. 2017), log alpha clipped to [-8, 8]:

    -KL(alpha) ~= k1 * sigmoid(k2 + k3 * log alpha) - 0.5 * log1p(exp(-log alpha)) - k1,
    k1 = 0.63576, k2 = 1.8732, k3 = 1.48695,

summed over the V words and divided by the training tokens of one epoch, so that it sits on the per-token
scale of the cross-entropy (one epoch's ELBO per token). Its weight ramps linearly from 0 to --kl-weight over
--kl-warmup-epochs (fractional epochs allowed).
"""

from __future__ import annotations

import tensorflow as tf

from lmcli.config import TermsConfig
from lmcli.losses.context import Clock, LossInputs, StrategyOutput

K1, K2, K3 = 0.63576, 1.8732, 1.48695
LOG_ALPHA_RANGE = (-8.0, 8.0)
NOISE_LOG_ALPHA = 3.0  # words with log alpha above this are treated as noise by the model (alpha > 20)


def clipped(log_alpha: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(log_alpha, *LOG_ALPHA_RANGE)


def kl_per_word(log_alpha: tf.Tensor) -> tf.Tensor:
    """KL (V,) of each word's gate from the log-uniform prior (the approximation above)."""
    la = clipped(log_alpha)
    neg_kl = K1 * tf.sigmoid(K2 + K3 * la) - 0.5 * tf.math.softplus(-la) - K1  # softplus(-x) = log1p(exp(-x))
    return -neg_kl  # (V,)


def term(inputs: LossInputs, out: StrategyOutput, cfg: TermsConfig) -> tf.Tensor:
    """sum_w KL(alpha_w) / training tokens: a scalar."""
    tokens = max(inputs.train_tokens, 1)
    return tf.reduce_sum(kl_per_word(inputs.extras["log_alpha"])) / float(tokens)  # ()


def weight(clock: Clock, cfg: TermsConfig) -> tf.Tensor:
    """kl_weight * min(1, epoch / kl_warmup_epochs); the full weight at once when the warm-up is 0."""
    if cfg.kl_warmup_epochs <= 0:
        return tf.constant(cfg.kl_weight, tf.float32)
    ramp = tf.minimum(1.0, tf.cast(clock.epoch, tf.float32) / cfg.kl_warmup_epochs)
    return cfg.kl_weight * ramp


def stats(inputs: LossInputs, cfg: TermsConfig) -> dict:
    """Logged with the term: the mean alpha, and the share of words the model treats as noise."""
    la = clipped(inputs.extras["log_alpha"])  # (V,)
    return {"mean_alpha": tf.reduce_mean(tf.exp(la)),
            "noise_share": tf.reduce_mean(tf.cast(la > NOISE_LOG_ALPHA, tf.float32))}
