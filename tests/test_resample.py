"""`--tapas-correction resample`: the second pass as an importance sample, against Monte Carlo and the sampled
softmax it reduces to, and its temperature's effect."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lmcli.losses.resample import inclusion_probabilities, resample
from lmcli.losses.sampled import sampled_logits_loss
from lmcli.losses.tapas import resampling_scores


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
    kept, kept_q = resample(scores, first, q_first, 5, seed=3, step=tf.constant(7, tf.int64))
    assert sorted(kept.numpy().tolist()) == [1, 2, 4, 6, 7]
    got = sampled_logits_loss(w, b, h, y, kept, q_true, kept_q).numpy()
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
    kept = [int(resample(scores, first, q, 1, seed=5, step=tf.constant(s, tf.int64))[0][0]) for s in range(600)]
    freq = np.bincount(kept, minlength=3) / len(kept)
    assert check(freq), freq


def test_kept_candidates_carry_first_pass_count_times_second_pass_inclusion():
    """With K < S each kept candidate's expected count is its first-pass count times its probability of
    surviving the second pass (not the first-pass count alone, which is TF1's)."""
    scores = tf.constant([0.5, -1.0, 2.0, 0.0, 1.0, -0.5])
    first = tf.constant([10, 11, 12, 13, 14, 15], tf.int64)
    q_first = tf.constant([0.9, 0.2, 0.5, 0.7, 0.3, 0.6])
    kept, kept_q = resample(scores, first, q_first, 3, seed=2, step=tf.constant(4, tf.int64))
    pi = inclusion_probabilities(scores, 3).numpy()
    pos = kept.numpy() - 10
    assert len(set(pos)) == 3
    np.testing.assert_allclose(kept_q.numpy(), q_first.numpy()[pos] * pi[pos], rtol=1e-6)
    assert np.all(pi[pos] < 1)


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
    kept, kept_q = resample(scores, tf.constant(cand, tf.int64), tf.constant(q), 3, seed=3,
                            step=tf.constant(9, tf.int64))
    want = sampled_logits_loss(w, b, h[real], y[real], kept, tf.fill([4], 0.4), kept_q).numpy()
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
