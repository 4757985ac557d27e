"""Candidate samplers for sampled softmax and TAPAS: stateless, keyed on (seed, step).

Every sampler draws `num_sampled` distinct classes without replacement with probability proportional
to q (the Gumbel-top-k trick: top_k(log q + Gumbel noise)), with noise from
`tf.random.stateless_uniform(seed=(seed, step))`. So the same seed gives the same candidates at the
same step, a retraced `tf.function` does not restart the sequence, and a resumed run draws exactly
what the uninterrupted run drew.

Expected counts (the "Q" of the log-Q correction) are the inclusion probabilities of a class,
approximated as 1 - (1 - q_i)^K with K chosen so that they sum to `num_sampled`: the formula TF's
unique samplers use, where K is the number of with-replacement draws needed to collect the set.

Distributions q:
    unigram          counts from `prepare` (train split) ** distortion; ids never seen get the weight
                     of one occurrence, except <pad> and <s>, which are never labels (weight 0).
    log-uniform      q(k) = log((k + 2) / (k + 1)) / log(V + 1): Zipf over ids, which assumes ids are
                     ordered by decreasing frequency (true for sentencepiece word/char/unigram models,
                     not for bpe; see the README).
    uniform          q = 1 / V.
    learned-unigram  counts of the labels seen so far in training (a [V] variable, updated after each
                     draw, starting from ones), ** distortion. The counts are saved in checkpoints, so
                     a resume continues with exactly the counts the interrupted run had.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from lmcli import replicas
from lmcli.config import LossConfig
from lmcli.errors import ConfigError

PAD_ID, BOS_ID = 0, 2


def inclusion_tries(q: np.ndarray, num_sampled: int) -> float:
    """K such that sum_i 1 - (1 - q_i)^K == num_sampled (bisection on a monotone function)."""
    q = q[q > 0]
    if num_sampled >= len(q):
        return float("inf")
    lo, hi = float(num_sampled), float(num_sampled)
    while np.sum(-np.expm1(hi * np.log1p(-q))) < num_sampled:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.sum(-np.expm1(mid * np.log1p(-q))) < num_sampled:
            lo = mid
        else:
            hi = mid
    return hi


def _tries_tf(q: tf.Tensor, num_sampled: int, iterations: int = 40) -> tf.Tensor:
    """In-graph version of `inclusion_tries` for distributions that change (learned unigram)."""
    log1m = tf.math.log1p(-tf.minimum(q, 1.0 - 1e-7))  # (V,)
    total = lambda k: tf.reduce_sum(-tf.math.expm1(k * log1m))  # noqa: E731
    lo = tf.constant(float(num_sampled))
    hi = tf.constant(float(num_sampled))
    hi = tf.while_loop(lambda h: total(h) < num_sampled, lambda h: [h * 2.0], [hi], maximum_iterations=60)[0]
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        below = total(mid) < num_sampled
        lo, hi = tf.where(below, mid, lo), tf.where(below, hi, mid)
    return hi


class Sampler:
    """Draws candidates from a fixed distribution q over V classes.

    `sample(labels (N,), mask (N,), num_sampled, step)` ->
        (sampled (S,) int64, true_expected (N,) float32, sampled_expected (S,) float32)
    """

    def __init__(self, q: np.ndarray, num_sampled: int, seed: int) -> None:
        q = np.asarray(q, np.float64)
        q = q / q.sum()
        if np.count_nonzero(q) < num_sampled:
            raise ConfigError(f"--num-sampled ({num_sampled}) exceeds the {np.count_nonzero(q)} classes "
                              "this sampler can draw")
        self.num_sampled = num_sampled
        self.seed = seed
        self.log_q = tf.constant(np.where(q > 0, np.log(np.maximum(q, 1e-300)), -np.inf), tf.float32)  # (V,)
        tries = inclusion_tries(q, num_sampled)
        expected = np.ones_like(q) if np.isinf(tries) else -np.expm1(tries * np.log1p(-q))
        self.expected = tf.constant(np.maximum(expected, 1e-30), tf.float32)  # (V,)

    def _draw(self, log_q: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        u = tf.random.stateless_uniform(tf.shape(log_q), seed=seed, minval=1e-20, maxval=1.0)  # (V,)
        gumbel = -tf.math.log(-tf.math.log(u))
        _, sampled = tf.math.top_k(log_q + gumbel, k=self.num_sampled, sorted=False)  # (S,)
        return tf.cast(sampled, tf.int64)

    def sample(self, labels: tf.Tensor, mask: tf.Tensor, num_sampled: int, step: tf.Tensor):
        del mask, num_sampled
        sampled = self._draw(self.log_q, step)  # (S,)
        return (sampled, tf.gather(self.expected, tf.cast(labels, tf.int64)),  # (N,)
                tf.gather(self.expected, sampled))  # (S,)

    def variables(self) -> list:
        """State to checkpoint (none for fixed distributions)."""
        return []


class LearnedUnigramSampler(Sampler):
    """Unigram over the labels seen so far; counts live in a checkpointed variable."""

    def __init__(self, vocab_size: int, num_sampled: int, seed: int, distortion: float) -> None:
        if vocab_size < num_sampled:
            raise ConfigError(f"--num-sampled ({num_sampled}) exceeds the vocabulary ({vocab_size})")
        self.num_sampled, self.seed, self.distortion = num_sampled, seed, distortion
        # Under tf.distribute every replica applies the same (all-reduced) update: the first replica's is kept.
        self.counts = tf.Variable(tf.ones([vocab_size], tf.float32), trainable=False, name="learned_counts",
                                  aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def sample(self, labels: tf.Tensor, mask: tf.Tensor, num_sampled: int, step: tf.Tensor):
        weights = tf.pow(self.counts, self.distortion)  # (V,)
        q = weights / tf.reduce_sum(weights)
        sampled = self._draw(tf.math.log(q), step)
        expected = -tf.math.expm1(_tries_tf(q, self.num_sampled) * tf.math.log1p(-tf.minimum(q, 1.0 - 1e-7)))
        expected = tf.maximum(expected, 1e-30)  # (V,)
        labels = tf.cast(labels, tf.int64)
        true_expected = tf.gather(expected, labels)
        sampled_expected = tf.gather(expected, sampled)
        with tf.control_dependencies([sampled, true_expected, sampled_expected]):
            seen = tf.IndexedSlices(tf.cast(mask, tf.float32), labels, tf.shape(self.counts, out_type=tf.int64))
            updated = self.counts.scatter_add(replicas.total(seen))  # the labels of every replica's rows
        # What follows depends on the update, so that every replica runs its collectives in the same order.
        with tf.control_dependencies([updated]):
            return tf.identity(sampled), tf.identity(true_expected), tf.identity(sampled_expected)

    def variables(self) -> list:
        return [self.counts]


def unigram_weights(counts: np.ndarray, distortion: float) -> np.ndarray:
    w = np.maximum(np.asarray(counts, np.float64), 1.0) ** distortion
    w[[PAD_ID, BOS_ID]] = 0.0
    return w


def log_uniform_weights(vocab_size: int) -> np.ndarray:
    k = np.arange(vocab_size, dtype=np.float64)
    return np.log((k + 2.0) / (k + 1.0)) / np.log(vocab_size + 1.0)


def make_sampler(cfg: LossConfig, vocab_size: int, unigram_counts: np.ndarray | None, seed: int) -> Sampler:
    """The sampler named by `cfg.sampler` for a run."""
    if cfg.sampler == "unigram":
        if unigram_counts is None:
            raise ConfigError("the unigram sampler needs the data dir's unigram counts")
        return Sampler(unigram_weights(unigram_counts, cfg.unigram_distortion), cfg.num_sampled, seed)
    if cfg.sampler == "log-uniform":
        return Sampler(log_uniform_weights(vocab_size), cfg.num_sampled, seed)
    if cfg.sampler == "uniform":
        return Sampler(np.ones(vocab_size), cfg.num_sampled, seed)
    if cfg.sampler == "learned-unigram":
        return LearnedUnigramSampler(vocab_size, cfg.num_sampled, seed, cfg.unigram_distortion)
    raise ConfigError(f"unknown sampler '{cfg.sampler}'")
