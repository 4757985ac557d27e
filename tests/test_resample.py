"""`--tapas-correction resample`: the second pass as an importance sample, against Monte Carlo and the sampled
softmax it reduces to, and its temperature's effect."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lmcli.losses.resample import log_inclusion_probabilities, resample
from lmcli.losses.sampled import label_first_losses, sampled_logits
from lmcli.losses.tapas import resampling_scores


def inclusion_probabilities(log_w, k):
    """pi (S,) = exp(log pi); sums to k."""
    return tf.exp(log_inclusion_probabilities(log_w, k))


def sampled_logits_loss(*args, **kwargs):
    """Sampled-softmax losses (M,) of real tokens (arguments as `sampled_logits`)."""
    return label_first_losses(sampled_logits(*args, **kwargs))


def test_inclusion_probabilities_sum_to_k_and_match_monte_carlo():
    """Drawing 3 of 8 without replacement (Gumbel-top-k), 200k draws: the race approximation is within 0.02 of the
    empirical inclusion frequencies (it is exact for equal weights and drifts for very unequal ones: see README)."""
    rng = np.random.default_rng(0)
    log_w = rng.normal(size=8)
    pi = inclusion_probabilities(tf.constant(log_w, tf.float32), 3).numpy()
    assert pi.sum() == pytest.approx(3.0, abs=1e-4) and np.all((pi > 0) & (pi <= 1))
    draws = 200_000
    perturbed = log_w[None, :] - np.log(-np.log(rng.random((draws, 8))))
    empirical = np.bincount(np.argsort(-perturbed, axis=1)[:, :3].ravel(), minlength=8) / draws
    np.testing.assert_allclose(pi, empirical, atol=0.02)
    uniform = inclusion_probabilities(tf.zeros([8]), 3).numpy()
    np.testing.assert_allclose(uniform, 3 / 8, rtol=1e-5)
    np.testing.assert_array_equal(inclusion_probabilities(tf.constant(log_w, tf.float32), 8).numpy(), 1.0)


def test_keeping_every_candidate_is_the_sampled_softmax_over_the_first_pass():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(9, 4)).astype(np.float32), rng.normal(size=9).astype(np.float32)
    h, y = rng.normal(size=(5, 4)).astype(np.float32), np.array([0, 3, 3, 8, 1], np.int64)
    first = tf.constant([1, 2, 4, 6, 7], tf.int64)
    q_first = tf.constant([0.3, 0.5, 0.9, 0.2, 0.6])
    q_true = tf.constant(np.linspace(0.2, 0.9, 5), tf.float32)
    scores = resampling_scores(w, b, h, first, 1.0)
    kept, log_q = resample(scores, first, q_first, 5, seed=3, step=tf.constant(7, tf.int64))
    assert sorted(kept.numpy().tolist()) == [1, 2, 4, 6, 7]
    got = sampled_logits_loss(w, b, h, y, kept, q_true, log_q, log_sampled_expected=True).numpy()
    want = sampled_logits_loss(w, b, h, y, first, q_true, q_first).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("temperature, check", [
    (0.05, lambda freq: freq[2] > 0.95),  # the best-scored candidate, nearly always
    (100.0, lambda freq: np.all(np.abs(freq - 1 / 3) < 0.06)),  # nearly uniform
])
def test_temperature_moves_the_draw_from_the_best_score_to_uniform(temperature, check):
    """One of three candidates kept, 600 steps (stateless draws keyed on the step): at a low temperature the one
    with the highest score wins nearly always, at a very high one each is kept about a third of the time."""
    w = np.array([[1.0, 0], [2.0, 0], [3.0, 0]], np.float32)  # scores grow with the row: candidate 2 is the best
    h = np.array([[1.0, 0.0], [0.5, 0.0]], np.float32)
    first, q = tf.constant([0, 1, 2], tf.int64), tf.ones([3])
    scores = resampling_scores(w, np.zeros(3, np.float32), h, first, temperature)
    draw = tf.function(lambda step: resample(scores, first, q, 1, seed=5, step=step)[0][0])  # traced once: fast
    kept = [int(draw(tf.constant(s, tf.int64))) for s in range(600)]
    freq = np.bincount(kept, minlength=3) / len(kept)
    assert check(freq), freq


def np_race(log_w, k):
    """The exponential race in float64 and linear space, t by 200 bisections on [k, 1e6]: pi_i = 1 - exp(-p_i t)."""
    p = np.exp(log_w - log_w.max()) / np.exp(log_w - log_w.max()).sum()
    lo, hi = float(k), 1e6
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if (1 - np.exp(-p * mid)).sum() < k else (lo, mid)
    return 1 - np.exp(-p * hi)


def np_gumbel_top_k_frequencies(log_w, k, draws, rng):
    """How often each item is among the k drawn without replacement (Gumbel-top-k), in `draws` draws."""
    counts = np.zeros(len(log_w))
    for chunk in range(0, draws, 500):
        g = log_w[None, :] - np.log(-np.log(rng.random((min(500, draws - chunk), len(log_w)))))
        counts += np.bincount(np.argpartition(-g, k - 1, axis=1)[:, :k].ravel(), minlength=len(log_w))
    return counts / draws


def test_kept_candidates_carry_first_pass_count_times_second_pass_inclusion():
    """With K < S each kept candidate's log expected count is log(first-pass count) + log(probability of surviving
    the second pass): against the race solved in float64 numpy (1e-4) and against 100k Gumbel-top-k draws (0.03,
    the race approximation's error at this spread plus the draws' noise). Dropping the second factor (TF1's count)
    is off by more than 0.3 at the kept candidates."""
    log_w = np.array([0.5, -1.0, 2.0, 0.0, 1.0, -0.5])
    first = tf.constant([10, 11, 12, 13, 14, 15], tf.int64)
    q_first = np.array([0.9, 0.2, 0.5, 0.7, 0.3, 0.6], np.float32)
    kept, log_q = resample(tf.constant(log_w, tf.float32), first, tf.constant(q_first), 3, seed=2,
                           step=tf.constant(4, tf.int64))
    pos = kept.numpy() - 10
    assert len(set(pos)) == 3
    second = np.exp(log_q.numpy()) / q_first[pos]  # the kept candidates' second-pass inclusion probabilities
    np.testing.assert_allclose(second, np_race(log_w, 3)[pos], atol=1e-4)
    frequencies = np_gumbel_top_k_frequencies(log_w, 3, 100_000, np.random.default_rng(3))
    np.testing.assert_allclose(second, frequencies[pos], atol=0.03)
    assert np.max(np.abs(1 - frequencies[pos])) > 0.3  # the test data tells the two counts apart


def test_a_2048_to_1024_pass_over_200_nats_stays_finite_and_matches_monte_carlo():
    """Scores spread over 200 nats (a low temperature): p underflows in float32 linear space, so log space is the
    only way. pi sums to 1024, matches 4,000 Gumbel-top-k draws within 0.05 (the draws' own noise is about 0.03 at
    the worst of 2048 items), and the far tail's log pi moves nat for nat with the score (no clamp: a clamp at
    1e-30 would be flat at -69)."""
    rng = np.random.default_rng(5)
    log_w = rng.permutation(np.linspace(0.0, -200.0, 2048))
    log_pi = log_inclusion_probabilities(tf.constant(log_w, tf.float32), 1024).numpy()
    assert np.all(np.isfinite(log_pi)) and np.all(log_pi <= 0)
    assert np.exp(log_pi).sum() == pytest.approx(1024, rel=1e-4)
    np.testing.assert_allclose(np.exp(log_pi), np_gumbel_top_k_frequencies(log_w, 1024, 4000, rng), atol=0.05)
    tail = np.argsort(log_w)[:500]  # the 500 lowest scores: 150 to 200 nats below the best
    np.testing.assert_allclose(log_pi[tail] - log_w[tail], (log_pi[tail] - log_w[tail]).mean(), atol=1e-3)
    assert log_pi[tail].min() < -90
    kept, log_q = resample(tf.constant(log_w, tf.float32), tf.range(2048, dtype=tf.int64), tf.fill([2048], 0.5),
                           1024, seed=1, step=tf.constant(0, tf.int64))
    np.testing.assert_allclose(log_q.numpy(), np.log(0.5) + log_pi[kept.numpy()], rtol=1e-6, atol=1e-6)


class FixedFirstPass:
    def __init__(self, cand, q):
        self.cand, self.q = tf.constant(cand, tf.int64), tf.constant(q, tf.float32)

    def sample(self, labels, mask, step):
        return self.cand, tf.fill(tf.shape(labels), 0.4), self.q


def test_the_tapas_strategy_draws_its_second_pass_with_resample():
    """`--loss tapas` (default correction) on real rows equals the sampled softmax over what `resample` keeps
    from the scores of the real rows, with the run's seed and step; padded rows get 0 and do not vote."""
    from lmcli import losses
    from lmcli.config import LossConfig

    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(12, 3)).astype(np.float32), rng.normal(size=12).astype(np.float32)
    h, y = rng.normal(size=(5, 3)).astype(np.float32), np.array([1, 4, 4, 9, 0], np.int64)
    mask = np.array([1, 1, 0, 1, 1], np.float32)
    cand, q = [2, 3, 5, 7, 8, 10], [0.5, 0.4, 0.3, 0.6, 0.2, 0.7]
    cfg = LossConfig(name="tapas", num_sampled=6, num_resampled=3, resampling_temperature=0.7)
    assert cfg.tapas_correction == "resample"
    got = losses.per_token(cfg, w, b, h, y, mask, step=9, sampler=FixedFirstPass(cand, q), seed=3).numpy()
    real = mask > 0
    scores = resampling_scores(w, b, h[real], tf.constant(cand, tf.int64), 0.7)
    kept, log_q = resample(scores, tf.constant(cand, tf.int64), tf.constant(q), 3, seed=3,
                           step=tf.constant(9, tf.int64))
    want = sampled_logits_loss(w, b, h[real], y[real], kept, tf.fill([4], 0.4), log_q,
                               log_sampled_expected=True).numpy()
    np.testing.assert_allclose(got[real], want, rtol=1e-5)
    assert got[2] == 0
    top = sampled_logits_loss(w, b, h[real], y[real], tf.gather(tf.constant(cand, tf.int64),
                              tf.math.top_k(scores, 3).indices), tf.fill([4], 0.4),
                              tf.gather(tf.constant(q), tf.math.top_k(scores, 3).indices)).numpy()
    assert not np.allclose(got[real], top)  # not TF1's top-k with first-pass counts


def test_the_second_pass_draws_noise_apart_from_the_first():
    """With equal scores the kept candidates are the top K of the second pass's Gumbel noise. Over 50 steps they
    are not those of the first pass's stream (the same (seed, step) key), which would tie the passes together:
    independent draws coincide about 50 / C(6, 2) = 3.3 times."""
    same = 0
    for step in range(50):
        kept = resample(tf.zeros([6]), tf.range(6, dtype=tf.int64), tf.ones([6]), 2, seed=1,
                        step=tf.constant(step, tf.int64))[0].numpy()
        u = tf.random.stateless_uniform([6], seed=tf.constant([1, step], tf.int64), minval=1e-20, maxval=1.0)
        same += set(kept) == set(np.argsort(np.log(-np.log(u.numpy())))[:2])
    assert same < 15, same


def test_the_corrected_second_pass_gradient_averages_to_the_first_pass_gradient():
    """S = 2048 -> K = 1024 at T = 0.3 (scores spread over about 40 nats), 300 second-pass draws: the mean gradient
    (summed loss, with respect to the hidden states) of the sampled softmax over the kept candidates, each
    corrected by log pi1 + log pi2, is within 0.5% (relative norm; measured 0.1-0.15% on three seeds) of the
    gradient of the sampled softmax over all 2048 first-pass candidates, which the second pass stands in for.
    With the first-pass count alone (no second-pass factor) the mean is 2-3% off, so the test tells them apart."""
    rng = np.random.default_rng(0)
    v, d, m, s, k = 3000, 16, 6, 2048, 1024
    w, b = tf.constant(rng.normal(size=(v, d)) * 0.5, tf.float32), tf.constant(rng.normal(size=v), tf.float32)
    h, y = tf.constant(rng.normal(size=(m, d)), tf.float32), tf.constant(rng.integers(0, v, size=m))
    first = tf.constant(rng.permutation(v)[:s], tf.int64)
    q_first, q_true = tf.constant(rng.uniform(0.2, 1.0, size=s), tf.float32), tf.fill([m], 0.5)
    scores = resampling_scores(w, b, h, first, 0.3)  # (S,)

    def grad(kept, log_q):
        with tf.GradientTape() as tape:
            tape.watch(h)
            loss = tf.reduce_sum(sampled_logits_loss(w, b, h, y, kept, q_true, log_q, log_sampled_expected=True))
        return tape.gradient(loss, h)  # (M, D)

    @tf.function
    def draw(step):
        kept, log_q = resample(scores, first, q_first, k, seed=11, step=step)  # (K,), (K,)
        where = tf.argmax(tf.cast(tf.equal(kept[:, None], first[None, :]), tf.int32), axis=1)  # (K,)
        return grad(kept, log_q), grad(kept, tf.math.log(tf.gather(q_first, where)))

    want = grad(first, tf.math.log(q_first)).numpy()
    draws = [draw(tf.constant(step, tf.int64)) for step in range(300)]
    corrected, first_count_only = (np.mean([g[i].numpy() for g in draws], axis=0) for i in (0, 1))
    assert np.linalg.norm(corrected - want) / np.linalg.norm(want) < 0.005
    assert np.linalg.norm(first_count_only - want) / np.linalg.norm(want) > 0.015
