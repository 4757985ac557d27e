"""`--tapas-correction resample`: TAPAS's second pass as an importance sample instead of TF1's top-k.

From the S first-pass candidates, K are drawn without replacement with probability proportional to exp(score)
(Gumbel-top-k, noise keyed on (seed, step)), where score_i = logsumexp_j((w_i . h_j + b_i) / T) over the batch's
real rows, the TAPAS score with the temperature already inside. Each kept candidate's logit is then corrected
with log of its probability of being in the final set: its first-pass expected count times its second-pass
inclusion probability. The label keeps its first-pass expected count, as in TF1's TAPAS and in sampled softmax.

Second-pass inclusion probabilities of drawing K of S without replacement (successive sampling) have no closed
form; they are approximated by the exponential race: item i arrives at Exp(p_i) time, the first K arrivals are the
sample, and P(i arrives before t) = 1 - exp(-p_i t), with t chosen so that the probabilities sum to K (checked
against Monte Carlo in the tests). With K = S every candidate is kept with probability 1: the sampled softmax over
the first pass.
"""

from __future__ import annotations

import tensorflow as tf

SECOND_PASS = 0x5EC0D  # folded into the (seed, step) key: a stream apart from the first pass's


def inclusion_probabilities(log_w: tf.Tensor, k: int, iterations: int = 60) -> tf.Tensor:
    """pi (S,) for drawing k of S items without replacement with probability proportional to exp(log_w); sums to k."""
    p = tf.nn.softmax(log_w)  # (S,)
    size = tf.shape(p)[0]
    total = lambda t: tf.reduce_sum(-tf.math.expm1(-p * t))  # noqa: E731
    lo, hi = tf.constant(0.0), tf.constant(float(k))
    hi = tf.while_loop(lambda h: total(h) < k * (1.0 - 1e-6), lambda h: [h * 2.0], [hi], maximum_iterations=200)[0]
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = total(mid) < k
        lo, hi = tf.where(below, mid, lo), tf.where(below, hi, mid)
    pi = -tf.math.expm1(-p * hi)  # (S,)
    return tf.where(size <= k, tf.ones_like(pi), pi)  # every item kept: exactly 1


def resample(scores: tf.Tensor, sampled: tf.Tensor, sampled_expected: tf.Tensor, k: int, seed: int,
             step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(kept ids (K,), their expected counts pi1 * pi2 (K,)) from the first pass's candidates (S,)."""
    key = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)]),
                                                   SECOND_PASS)
    u = tf.random.stateless_uniform(tf.shape(scores), seed=key, minval=1e-20, maxval=1.0)  # (S,)
    _, keep = tf.math.top_k(scores - tf.math.log(-tf.math.log(u)), k=k, sorted=False)  # (K,)
    second = tf.stop_gradient(tf.maximum(inclusion_probabilities(scores, k), 1e-30))  # (S,)
    return tf.gather(sampled, keep), tf.gather(sampled_expected * second, keep)
