"""Sampled softmax and the samplers, against the full softmax and numpy."""

import numpy as np
import pytest
import tensorflow as tf

from lmcli import losses
from lmcli.config import LossConfig
from lmcli.losses import sampled
from lmcli.losses.samplers import LearnedUnigramSampler, Sampler, inclusion_tries, make_sampler
from lmcli.runtime.errors import ConfigError


def case(seed=0, n=6, v=7, d=4):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(v, d)).astype(np.float32), rng.normal(size=v).astype(np.float32),
            rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, v, n).astype(np.int64))


def sampled_logits_loss(*args, **kwargs):
    """Sampled-softmax losses (M,) of real tokens (arguments as `sampled.sampled_logits`)."""
    return sampled.label_first_losses(sampled.sampled_logits(*args, **kwargs))


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_every_class_sampled_with_exact_counts_equals_full_softmax():
    w, b, h, y = case()
    v = len(b)
    got = sampled_logits_loss(w, b, h, y, tf.range(v, dtype=tf.int64), tf.ones(len(y)), tf.ones(v),
                                      remove_accidental_hits=True).numpy()
    want = losses.per_token(LossConfig(), w, b, h, y, tf.ones(len(y))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_per_token_loss_matches_numpy_with_log_q_and_hit_removal():
    w, b, h, y = case(1)
    cand = np.array([0, 3, 5], np.int64)
    y[0] = 3  # an accidental hit
    q_true = np.linspace(0.2, 0.7, len(y)).astype(np.float32)
    q_cand = np.array([0.5, 0.25, 0.9], np.float32)
    got = sampled_logits_loss(w, b, h, y, cand, q_true, q_cand).numpy()
    true = (h * w[y]).sum(-1) + b[y] - np.log(q_true)
    logits = h @ w[cand].T + b[cand] - np.log(q_cand)
    logits[y[:, None] == cand[None, :]] = -np.inf
    want = -np_log_softmax(np.concatenate([true[:, None], logits], 1))[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5)


class FixedSampler:
    def __init__(self, cand):
        self.cand = tf.constant(cand, tf.int64)

    def sample(self, labels, mask, step):
        return self.cand, tf.ones(tf.shape(labels), tf.float32), tf.ones(tf.shape(self.cand), tf.float32)


def test_masked_positions_contribute_nothing():
    w, b, h, y = case(2)
    mask = np.array([1, 0, 1, 1, 0, 1], np.float32)
    sampler = FixedSampler([1, 2, 4])
    cfg = LossConfig(name="sampled", num_sampled=3)
    base = losses.per_token(cfg, w, b, h, y, mask, sampler=sampler).numpy()
    assert np.all(base[mask == 0] == 0) and np.all(base[mask == 1] > 0)
    h2, y2 = h.copy(), y.copy()
    h2[mask == 0] = 100.0
    y2[mask == 0] = 0
    wv = tf.Variable(w)
    with tf.GradientTape() as tape:
        other = losses.per_token(cfg, wv, b, h2, y2, mask, sampler=sampler)
        total = tf.reduce_sum(other)
    np.testing.assert_allclose(other.numpy(), base, rtol=1e-6)
    grad = tape.gradient(total, wv)
    assert isinstance(grad, tf.IndexedSlices)  # rows gathered, W never densified
    # only the real tokens' labels and the candidates are touched (the padded label 0 is not)
    assert set(grad.indices.numpy()) == set(y[mask == 1]) | {1, 2, 4}


def test_sampler_is_stateless_in_seed_and_step():
    q = np.arange(1, 51, dtype=np.float64)
    s = Sampler(q, 10, seed=3)
    y, m = tf.constant([1, 2], tf.int64), tf.ones(2)
    a = s.sample(y, m, tf.constant(5, tf.int64))[0].numpy()
    b = s.sample(y, m, tf.constant(5, tf.int64))[0].numpy()
    c = s.sample(y, m, tf.constant(6, tf.int64))[0].numpy()
    f = tf.function(lambda step: s.sample(y, m, step)[0])
    assert sorted(a) == sorted(b) == sorted(f(tf.constant(5, tf.int64)).numpy())
    assert sorted(a) != sorted(c)
    assert len(set(a)) == 10  # distinct candidates
    other = Sampler(q, 10, seed=4).sample(y, m, tf.constant(5, tf.int64))[0].numpy()
    assert sorted(other) != sorted(a)


def test_expected_counts_match_empirical_inclusion():
    q = 1.0 / np.arange(1, 31) ** 1.1
    s = Sampler(q, 8, seed=0)
    hits = np.zeros(30)
    for step in range(3000):
        hits[s._draw(s.log_q, tf.constant(step, tf.int64)).numpy()] += 1
    empirical = hits / 3000
    np.testing.assert_allclose(s.expected.numpy().sum(), 8.0, rtol=1e-3)
    np.testing.assert_allclose(s.expected.numpy(), empirical, atol=0.05)


def test_inclusion_tries_sum_to_num_sampled():
    q = np.random.default_rng(0).random(100)
    q /= q.sum()
    k = inclusion_tries(q, 20)
    assert np.sum(-np.expm1(k * np.log1p(-q))) == pytest.approx(20, rel=1e-6)


def test_learned_unigram_counts_follow_the_labels():
    s = LearnedUnigramSampler(10, 3, seed=0, distortion=1.0)
    labels = tf.constant([4, 4, 4, 7], tf.int64)
    s.sample(labels, tf.constant([1.0, 1.0, 1.0, 0.0]), tf.constant(0, tf.int64))
    counts = s.counts.numpy()
    assert counts[4] == 4.0 and counts[7] == 1.0 and counts.sum() == 13.0


def test_unigram_sampler_never_draws_what_is_never_a_label_and_errors():
    """The CLI's <pad> and <s> (ids 0 and 2) are never labels: it says so and they are never drawn. Without
    `never_labels` (a user's vocabulary, where id 0 may be a frequent word) every class can be drawn."""
    counts = np.array([0, 5, 0, 9, 4, 3, 2, 1], np.int64)
    config = LossConfig(name="sampled", num_sampled=5, sampler="unigram")
    s = make_sampler(config, 8, counts, seed=1, never_labels=(0, 2))
    everything = make_sampler(config, 8, counts, seed=1)
    seen = set()
    for step in range(50):
        drawn = s.sample(tf.constant([3], tf.int64), tf.ones(1), tf.constant(step, tf.int64))[0].numpy()
        assert 0 not in drawn and 2 not in drawn
        seen |= set(everything.sample(tf.constant([3], tf.int64), tf.ones(1), tf.constant(step, tf.int64))[0]
                    .numpy().tolist())
    assert seen == set(range(8))
    with pytest.raises(ConfigError, match="exceeds"):
        make_sampler(LossConfig(name="sampled", num_sampled=7, sampler="unigram"), 8, counts, seed=1,
                     never_labels=(0, 2))
    with pytest.raises(ConfigError, match=r"--num-sampled \(8\) must be less than the vocabulary size \(8\)"):
        LossConfig(name="sampled", num_sampled=8, sampler="unigram").validate(8)


class FixedRowSampler:
    """Row r's candidates are `cands[r]`, expected counts as given."""

    def __init__(self, cands, q_cand, q_true):
        self.cands, self.q_cand, self.q_true = (tf.constant(c) for c in (cands, q_cand, q_true))
        self.keys = []

    def sample_rows(self, labels, mask, step, row_offset=0, global_rows=0):
        self.keys.append((row_offset, global_rows))
        return self.cands, self.q_true, self.q_cand


def test_per_row_candidate_sets_match_numpy_and_ignore_padding():
    """`--candidate-sets row`: each batch row's tokens are scored against that row's own candidates, log-Q
    corrected and with hits removed, exactly as numpy computes it row by row; padded tokens get 0."""
    w, b, h, y = case(3, n=6, v=9)
    y[1] = 5  # row 0's second token hits row 0's candidate 5
    cands = np.array([[0, 5, 7], [1, 2, 5]], np.int64)  # (R=2, S=3): 5 is a hit in row 0 only
    q_cand = np.array([[0.3, 0.6, 0.2], [0.9, 0.4, 0.5]], np.float32)
    q_true = np.linspace(0.1, 0.8, 6).reshape(2, 3).astype(np.float32)
    mask = np.array([1, 1, 1, 1, 1, 0], np.float32)
    sampler = FixedRowSampler(cands, q_cand, q_true)
    cfg = LossConfig(name="sampled", num_sampled=3, candidate_sets="row")
    got = losses.per_token(cfg, w, b, h, y, mask, sampler=sampler, rows=2).numpy()
    want = np.zeros(6)
    for t in range(6):
        r = t // 3
        true = h[t] @ w[y[t]] + b[y[t]] - np.log(q_true.ravel()[t])
        logits = h[t] @ w[cands[r]].T + b[cands[r]] - np.log(q_cand[r])
        logits[cands[r] == y[t]] = -np.inf
        want[t] = -np_log_softmax(np.concatenate([[true], logits]))[0] * mask[t]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[5] == 0 and want[1] != pytest.approx(-np_log_softmax(np.concatenate(
        [[h[1] @ w[y[1]] + b[y[1]] - np.log(q_true.ravel()[1])], h[1] @ w[cands[1]].T + b[cands[1]] - np.log(
            q_cand[1])]))[0])  # a shared set (row 1's) would give another loss


def test_per_row_sets_are_keyed_on_the_global_row():
    """Row r of the global batch draws the same set whichever replica holds it: a replica holding rows 2..3 of 4
    draws what one device draws for rows 2..3; the rows' sets differ from each other and from step to step."""
    q = np.arange(1, 41, dtype=np.float64)
    s = Sampler(q, 6, seed=2)
    step = tf.constant(4, tf.int64)
    labels, mask = tf.ones([4, 3], tf.int64), tf.ones([4, 3])
    whole, true_q, cand_q = s.sample_rows(labels, mask, step)
    part = s.sample_rows(labels[2:], mask[2:], step, row_offset=2, global_rows=4)[0]
    np.testing.assert_array_equal(part.numpy(), whole.numpy()[2:])
    sets = [tuple(sorted(set(r))) for r in whole.numpy()]
    assert len(set(sets)) == 4 and whole.shape == (4, s.row_draws)
    later = s.sample_rows(labels, mask, step + 1)[0].numpy()
    assert [tuple(sorted(set(r))) for r in later] != sets
    for row, q_row in zip(whole.numpy(), cand_q.numpy()):  # each class once at its exact count, repeats at +inf
        first = np.r_[True, row[1:] != row[:-1]]
        np.testing.assert_allclose(q_row[first], tf.gather(s.row_expected, row[first]).numpy())
        assert np.all(np.isinf(q_row[~first]))
    np.testing.assert_allclose(true_q.numpy(), tf.gather(s.row_expected, labels).numpy())


def test_per_row_draws_include_each_class_with_its_stated_probability():
    """A class is in a row's set with probability 1 - (1 - q)^K (K draws with replacement), as the expected counts
    say, and a row holds num_sampled distinct classes on average (Monte Carlo over 400 steps x 8 rows)."""
    q = np.arange(1, 41, dtype=np.float64) ** 2
    s = Sampler(q, 10, seed=3)
    labels, mask = tf.ones([8, 2], tf.int64), tf.ones([8, 2])
    seen, distinct = np.zeros(40), []
    for step in range(400):
        rows = s.sample_rows(labels, mask, tf.constant(step, tf.int64))[0].numpy()
        for r in rows:
            seen[np.unique(r)] += 1
            distinct.append(len(np.unique(r)))
    want = -np.expm1(s.row_draws * np.log1p(-q / q.sum()))
    np.testing.assert_allclose(seen / 3200, want, atol=0.03)
    np.testing.assert_allclose(tf.gather(s.row_expected, np.arange(40)).numpy(), want, rtol=1e-5)
    assert abs(np.mean(distinct) - 10) < 0.2


def test_per_row_draws_cost_the_same_at_any_vocabulary_size():
    """The per-row draw holds no (rows, V) tensor: the largest tensor of its graph is a [V] constant (the cumulative
    q), at 20k and at 200k classes alike. (A Gumbel draw per row holds rows x V.)"""
    def largest(v: int) -> int:
        s = Sampler(np.arange(1, v + 1, dtype=np.float64) ** -1.0, 64, seed=1)
        fn = tf.function(lambda step: s.sample_rows(tf.ones([16, 4], tf.int64), tf.ones([16, 4]), step))
        graph = fn.get_concrete_function(tf.TensorSpec([], tf.int64)).graph
        sizes = [t.shape.num_elements() or 0 for op in graph.get_operations() for t in op.outputs]
        return max(sizes)
    assert largest(20_000) == 20_000 and largest(200_000) == 200_000


def test_tapas_refuses_per_row_sets():
    with pytest.raises(ConfigError, match="--candidate-sets row is for --loss sampled"):
        LossConfig(name="tapas", num_sampled=4, num_resampled=2, candidate_sets="row").validate(50)


def test_a_runs_unigram_sampler_never_draws_the_data_dirs_padding_and_start_ids():
    """The CLI's step tells the sampler which ids are never labels (<pad> = 0, <s> = 2): their q is 0."""
    from lmcli.config import ModelConfig, RunConfig
    from lmcli.train.distribution import make_cluster
    from lmcli.train.step import build_training_step

    cfg = RunConfig(model=ModelConfig(vocab_size=30, embedding_dim=4, hidden=4),
                    loss=LossConfig(name="sampled", num_sampled=5)).resolved()
    built = build_training_step(cfg, make_cluster("none", ""), np.full(30, 7), 10, 100)
    log_q = built.objective.ctx.sampler.log_q.numpy()
    assert np.isneginf(log_q[[0, 2]]).all() and np.isfinite(np.delete(log_q, [0, 2])).all()
