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

Everything is in log space: a low temperature spreads the scores over hundreds of nats, where p_i = softmax(score)
underflows to 0 in float32 (and t overflows), so log p_i = log_softmax(score), the bisection runs on log t,
pi_i = -expm1(-exp(log p_i + log t)), and the kept candidates' counts are returned as log(pi1) + log(pi2).
"""

from __future__ import annotations

import math

import tensorflow as tf

SECOND_PASS = 0x5EC0D  # folded into the (seed, step) key: a stream apart from the first pass's
LINEAR_BELOW = -15.0  # log(p t) below this: log(1 - exp(-p t)) = log(p t) to float32 precision


def _log_race(log_pt: tf.Tensor) -> tf.Tensor:
    """log(1 - exp(-exp(log_pt))), finite wherever log_pt is (no log(0) when p t underflows)."""
    safe = tf.maximum(log_pt, LINEAR_BELOW)
    return tf.where(log_pt < LINEAR_BELOW, log_pt, tf.math.log(-tf.math.expm1(-tf.exp(safe))))


def _log_t_bracket(log_p: tf.Tensor, k: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(lo, hi) of log t around the root of sum_i (1 - exp(-p_i t)) = k, for k < S.

    The sum is at most t (1 - e^-x <= x, sum p = 1), so t >= k; and once t >= log(k + 1) / p_(k+1) the k + 1
    largest each pass 1 - 1/(k + 1), so the sum passes k.
    """
    size = tf.shape(log_p)[0]
    kth = tf.math.top_k(log_p, k=tf.minimum(k + 1, size)).values[-1]  # log p_(k+1), ()
    lo = tf.constant(math.log(k), log_p.dtype)
    hi = math.log(math.log(k + 1.0)) - kth  # ()
    return lo, tf.where(tf.math.is_finite(hi), tf.maximum(hi, lo), lo + 1000.0)


def log_inclusion_probabilities(log_w: tf.Tensor, k: int, iterations: int = 60) -> tf.Tensor:
    """log pi (S,) for drawing k of S items without replacement with probability proportional to exp(log_w);
    the pi sum to k, and are exactly 1 (log 0) when k >= S."""
    log_p = tf.nn.log_softmax(log_w)  # (S,)
    total = lambda log_t: tf.reduce_sum(-tf.math.expm1(-tf.exp(log_p + log_t)))  # noqa: E731
    lo, hi = _log_t_bracket(log_p, k)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = total(mid) < k
        lo, hi = tf.where(below, mid, lo), tf.where(below, hi, mid)
    log_pi = _log_race(log_p + hi)  # (S,)
    return tf.where(tf.shape(log_p)[0] <= k, tf.zeros_like(log_pi), log_pi)  # every item kept: exactly log 1


def resample(scores: tf.Tensor, sampled: tf.Tensor, sampled_expected: tf.Tensor, k: int, seed: int,
             step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(kept ids (K,), log of their expected counts log pi1 + log pi2 (K,)) from the first pass's candidates (S,)."""
    key = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), tf.cast(step, tf.int64)]),
                                                   SECOND_PASS)
    u = tf.random.stateless_uniform(tf.shape(scores), seed=key, minval=1e-20, maxval=1.0)  # (S,)
    _, keep = tf.math.top_k(scores - tf.math.log(-tf.math.log(u)), k=k, sorted=False)  # (K,)
    log_second = tf.stop_gradient(log_inclusion_probabilities(scores, k))  # (S,)
    log_count = tf.math.log(sampled_expected) + log_second  # (S,)
    return tf.gather(sampled, keep), tf.gather(log_count, keep)
