"""Candidate samplers for sampled softmax and TAPAS: stateless, keyed on (seed, step).

Every sampler draws `num_sampled` distinct classes without replacement with probability proportional
to q, once per batch or once per batch row (`--candidate-sets`), by the Gumbel-top-k trick
(top_k(log q + Gumbel noise)), with noise from `tf.random.stateless_uniform(seed=(seed, step))`. So the same
seed gives the same candidates at the same step, a retraced `tf.function` does not restart the sequence, and a
resumed run draws exactly what the uninterrupted run drew.

Expected counts (the "Q" of the log-Q correction) are the inclusion probabilities of a class,
approximated as 1 - (1 - q_i)^K with K chosen so that they sum to `num_sampled`: the formula TF's
unique samplers use, where K is the number of with-replacement draws needed to collect the set.

Per-row sets from a fixed q (`Sampler.sample_rows`) are drawn differently, so that their cost does not grow with
V: each row makes K = ceil(that K) draws with replacement by inverse CDF (a binary search of R x K uniforms in the
cumulative q), and repeats within a row take no part (their expected count is +inf, which the loss reads as "not
a candidate"). A class is then in a row's set with probability exactly 1 - (1 - q_i)^K, and a row holds
`num_sampled` distinct classes on average. (The Gumbel-top-k draw costs R x V per step: at V = 800k and 32 rows,
25.6M uniforms.)

Distributions q:
    unigram          the given counts (the train split's, from `prepare`) ** distortion; ids never seen get
                     the weight of one occurrence, except the ids the caller says are never labels
                     (`never_labels`: the CLI's <pad> and <s>), which get 0.
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

from lmcli.config import LossConfig
from lmcli.config.checks import non_negative, positive
from lmcli.runtime.errors import ConfigError
from lmcli.train import replicas


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

    `sample(labels (N,), mask (N,), step)` -> (sampled (S,) int64, true_expected (N,), sampled_expected (S,)):
        one set of S distinct candidates for the whole batch.
    `sample_rows(labels (R, G), mask (R, G), step, row_offset, global_rows)` ->
        (sampled (R, S), true_expected (R, G), sampled_expected (R, S)): one set per batch row, row r's noise
        keyed on (seed, step, row_offset + r), so that a row draws the same set whichever replica holds it.
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
        # per-row sets: K draws with replacement each (none when every drawable class is wanted: Gumbel then)
        self.row_draws = 0 if np.isinf(tries) else int(np.ceil(tries))
        self.cdf = tf.constant(np.cumsum(q), tf.float64)  # (V,)
        row_expected = -np.expm1(self.row_draws * np.log1p(-np.minimum(q, 1.0 - 1e-16)))
        self.row_expected = tf.constant(np.maximum(row_expected, 1e-30), tf.float32)  # (V,) exact for K draws

    def _key(self, step: tf.Tensor) -> tf.Tensor:
        return tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])

    def _draw(self, log_q: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        u = tf.random.stateless_uniform(tf.shape(log_q), seed=self._key(step), minval=1e-20, maxval=1.0)  # (V,)
        gumbel = -tf.math.log(-tf.math.log(u))
        _, sampled = tf.math.top_k(log_q + gumbel, k=self.num_sampled, sorted=False)  # (S,)
        return tf.cast(sampled, tf.int64)

    def _draw_rows(self, log_q: tf.Tensor, step: tf.Tensor, row_offset, rows, global_rows) -> tf.Tensor:
        """(rows, S): Gumbel-top-k per row, the noise drawn for the global batch's rows and this replica's sliced out
        (stateless draws are prefix-consistent, so row r's noise does not depend on the replica count)."""
        total = tf.maximum(tf.cast(global_rows, tf.int32), rows)
        key = tf.random.experimental.stateless_fold_in(self._key(step), 0x50E)  # a stream apart from the batch's
        u = tf.random.stateless_uniform(tf.stack([total, tf.shape(log_q)[0]]), seed=key, minval=1e-20, maxval=1.0)
        u = u[row_offset:row_offset + rows]  # (R, V)
        _, sampled = tf.math.top_k(log_q[None, :] - tf.math.log(-tf.math.log(u)), k=self.num_sampled,
                                   sorted=False)  # (R, S)
        return tf.cast(sampled, tf.int64)

    def sample(self, labels: tf.Tensor, mask: tf.Tensor, step: tf.Tensor):
        del mask
        sampled = self._draw(self.log_q, step)  # (S,)
        return (sampled, tf.gather(self.expected, tf.cast(labels, tf.int64)),  # (N,)
                tf.gather(self.expected, sampled))  # (S,)

    def sample_rows(self, labels: tf.Tensor, mask: tf.Tensor, step: tf.Tensor, row_offset=0, global_rows=0):
        """(sampled (R, K), true_expected (R, G), sampled_expected (R, K), +inf at a row's repeated draws)."""
        del mask
        labels = tf.cast(labels, tf.int64)
        if not self.row_draws:
            sampled = self._draw_rows(self.log_q, step, row_offset, tf.shape(labels)[0], global_rows)  # (R, S)
            return sampled, tf.gather(self.expected, labels), tf.gather(self.expected, sampled)
        sampled = self._draw_rows_cdf(step, row_offset, tf.shape(labels)[0], global_rows)  # (R, K) sorted
        repeat = tf.concat([tf.zeros_like(sampled[:, :1], tf.bool), sampled[:, 1:] == sampled[:, :-1]], 1)  # (R, K)
        expected = tf.where(repeat, float("inf"), tf.gather(self.row_expected, sampled))  # (R, K)
        return sampled, tf.gather(self.row_expected, labels), expected

    def _draw_rows_cdf(self, step: tf.Tensor, row_offset, rows, global_rows) -> tf.Tensor:
        """(rows, K) ids, each row sorted: K draws with replacement per row by inverse CDF, the uniforms drawn for the
        global batch's rows and this replica's sliced out (as `_draw_rows`)."""
        total = tf.maximum(tf.cast(global_rows, tf.int32), rows)
        key = tf.random.experimental.stateless_fold_in(self._key(step), 0x50E)
        u = tf.random.stateless_uniform(tf.stack([total, self.row_draws]), seed=key, dtype=tf.float64)
        u = u[row_offset:row_offset + rows] * self.cdf[-1]  # (R, K) in [0, total mass)
        ids = tf.searchsorted(self.cdf, tf.reshape(u, [-1]), side="right")  # (R*K,): first class whose mass > u
        ids = tf.reshape(tf.minimum(ids, tf.shape(self.cdf, out_type=ids.dtype)[0] - 1), tf.shape(u))  # (R, K)
        return tf.sort(tf.cast(ids, tf.int64), axis=1)

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

    def _distribution(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(log q (V,), expected counts (V,)) from the counts so far."""
        weights = tf.pow(self.counts, self.distortion)  # (V,)
        q = weights / tf.reduce_sum(weights)
        expected = -tf.math.expm1(_tries_tf(q, self.num_sampled) * tf.math.log1p(-tf.minimum(q, 1.0 - 1e-7)))
        return tf.math.log(q), tf.maximum(expected, 1e-30)

    def _count(self, labels: tf.Tensor, mask: tf.Tensor, *drawn: tf.Tensor) -> tuple:
        """Add the labels of every replica's real tokens to the counts, after the draw; what follows depends on the
        update, so that every replica runs its collectives in the same order."""
        labels, mask = tf.reshape(labels, [-1]), tf.reshape(tf.cast(mask, tf.float32), [-1])
        with tf.control_dependencies(list(drawn)):
            seen = tf.IndexedSlices(mask, labels, tf.shape(self.counts, out_type=tf.int64))
            updated = self.counts.scatter_add(replicas.total(seen))  # the labels of every replica's rows
        with tf.control_dependencies([updated]):
            return tuple(tf.identity(t) for t in drawn)

    def sample(self, labels: tf.Tensor, mask: tf.Tensor, step: tf.Tensor):
        log_q, expected = self._distribution()
        labels = tf.cast(labels, tf.int64)
        sampled = self._draw(log_q, step)
        return self._count(labels, mask, sampled, tf.gather(expected, labels), tf.gather(expected, sampled))

    def sample_rows(self, labels: tf.Tensor, mask: tf.Tensor, step: tf.Tensor, row_offset=0, global_rows=0):
        log_q, expected = self._distribution()
        labels = tf.cast(labels, tf.int64)
        sampled = self._draw_rows(log_q, step, row_offset, tf.shape(labels)[0], global_rows)  # (R, S)
        return self._count(labels, mask, sampled, tf.gather(expected, labels), tf.gather(expected, sampled))

    def variables(self) -> list:
        return [self.counts]


def unigram_weights(counts: np.ndarray, distortion: float, never_labels: tuple[int, ...] = ()) -> np.ndarray:
    w = np.maximum(np.asarray(counts, np.float64), 1.0) ** distortion
    w[list(never_labels)] = 0.0
    return w


def log_uniform_weights(vocab_size: int) -> np.ndarray:
    k = np.arange(vocab_size, dtype=np.float64)
    return np.log((k + 2.0) / (k + 1.0)) / np.log(vocab_size + 1.0)


def make_sampler(cfg: LossConfig, vocab_size: int, unigram_counts: np.ndarray | None, seed: int,
                 never_labels: tuple[int, ...] = ()) -> Sampler:
    """The sampler named by `cfg.sampler` for a run; `never_labels`: ids the unigram sampler never draws."""
    if cfg.sampler == "unigram":
        if unigram_counts is None:
            raise ConfigError("the unigram sampler needs the data dir's unigram counts")
        return Sampler(unigram_weights(unigram_counts, cfg.unigram_distortion, never_labels), cfg.num_sampled, seed)
    if cfg.sampler == "log-uniform":
        return Sampler(log_uniform_weights(vocab_size), cfg.num_sampled, seed)
    if cfg.sampler == "uniform":
        return Sampler(np.ones(vocab_size), cfg.num_sampled, seed)
    if cfg.sampler == "learned-unigram":
        return LearnedUnigramSampler(vocab_size, cfg.num_sampled, seed, cfg.unigram_distortion)
    raise ConfigError(f"unknown sampler '{cfg.sampler}'")


def check_draws(cfg: LossConfig, vocab_size: int, limit: int, rule: str) -> None:
    """The options of a strategy that draws candidates: --num-sampled positive and at most `limit` (the message
    says it `rule` the vocabulary size), --unigram-distortion >= 0."""
    positive("--num-sampled", cfg.num_sampled)
    non_negative("--unigram-distortion", cfg.unigram_distortion)
    if cfg.num_sampled > limit:
        raise ConfigError(f"--num-sampled ({cfg.num_sampled}) {rule} the vocabulary size ({vocab_size})")
