"""TAPAS rank-resampled softmax: hand-derived kept candidates, equality with tf.nn.sampled_softmax_loss on
those candidates, sharded weights, TF1's errors, masking, the lmcli strategy and its temperature schedule."""

import math

import numpy as np
import pytest
import tensorflow as tf

from lmcli import losses
from lmcli.config import LossConfig
from lmcli.losses import sharding
from lmcli.losses.tapas import (
    rank_resample,
    rank_sampled_softmax_loss,
    resampling_temperature,
)

# Two rows x0 = e0, x1 = e1, so w . x_j just reads w's coordinates. Class 0 is the target (logit 0).
#   class 1 = "peaked":  logits (10, 0): the best fit of x0, poor on average (mean 5)
#   class 2 = "average": logits (7, 7):  the best on average
#   class 3 = "bad":     logits (-5, -5)
# Score_i(T) = logsumexp_j(w_i . x_j / T):
#   T = 0.5: peaked 20.0, average 14 + log 2 = 14.69, bad < 0          -> keeps 1
#   T = 100: peaked log(e^0.1 + 1) = 0.744, average 0.07 + log 2 = 0.763 -> keeps 2
W = np.array([[0, 0], [10, 0], [7, 7], [-5, -5]], np.float32)
B = np.zeros(4, np.float32)
X = np.eye(2, dtype=np.float32)
Y = np.array([[0], [0]], np.int64)
SAMPLED = ([1, 2, 3], [[1.0], [1.0]], [1.0, 1.0, 1.0])  # expected counts 1: log q = 0, easy by hand
LOW_T_LOSSES = [math.log1p(math.exp(10)), math.log(2)]  # row 0: logits (0, 10); row 1: (0, 0)
HIGH_T_LOSSES = [math.log1p(math.exp(7))] * 2  # both rows: logits (0, 7)

# A 7-class case with biases and distinct expected counts, for equality with tf.nn.sampled_softmax_loss.
W7 = np.array([[1, 0], [0, 1], [2, 1], [-1, 3], [0.5, 0.5], [3, -1], [-2, -2]], np.float32)
B7 = np.array([0.1, -0.2, 0.3, 0.0, 0.5, -0.4, 0.2], np.float32)
X7 = np.array([[1, 0.5], [-0.5, 1], [0.2, 0.3]], np.float32)
Y7 = np.array([[0], [3], [5]], np.int64)
SAMPLED7 = ([2, 3, 4, 5, 6], [[0.3], [0.4], [0.5]], [0.1, 0.2, 0.3, 0.4, 0.6])
# Scores at T = 1 (logsumexp over the rows of w.x + b): 2 -> 3.02, 3 -> 3.61, 4 -> 2.04, 5 -> 2.21,
# 6 -> -0.04. The best three are 2, 3 and 5 (5 is also row 2's label: an accidental hit).
# Without row 1 (masked): 2 -> 2.95, 3 -> 1.30, 4 -> 1.72, 5 -> 2.21, 6 -> -0.67: keeps 2, 4 and 5.
KEPT7 = [2, 3, 5]


def rsl(w, b, y, x, sampled_values, num_sampled, num_resampled, temperature, strategy="div", **kw):
    """rank_sampled_softmax_loss with the TF1 argument list spelled out."""
    return rank_sampled_softmax_loss(
        weights=w, biases=b, labels=y, inputs=x, num_sampled=num_sampled, num_resampled=num_resampled,
        num_classes=kw.pop("num_classes", 7), num_true=kw.pop("num_true", 1), sampled_values=sampled_values,
        resampling_temperature=temperature, remove_accidental_hits=kw.pop("hits", True),
        partition_strategy=strategy, **kw).numpy()


def kept(w, b, x, sampled_values, k, temperature, strategy="div", mask=None):
    ids, _, counts = rank_resample(w, b, x, sampled_values, k, temperature, strategy, mask=mask)
    order = np.argsort(ids.numpy())
    return ids.numpy()[order].tolist(), counts.numpy()[order].tolist()


def nn_loss(w, b, y, x, values, k, num_true=1, hits=True):
    return tf.nn.sampled_softmax_loss(w, b, y, x, k, 7, num_true=num_true, sampled_values=values,
                                      remove_accidental_hits=hits).numpy()


@pytest.mark.parametrize("temperature, want_ids, want_losses", [
    (0.5, [1], LOW_T_LOSSES), (tf.constant(0.5), [1], LOW_T_LOSSES), (100.0, [2], HIGH_T_LOSSES)])
def test_temperature_decides_peaked_versus_average(temperature, want_ids, want_losses):
    assert kept(W, B, X, SAMPLED, 1, temperature) == (want_ids, [1.0])
    got = rsl(W, B, Y, X, SAMPLED, 3, 1, temperature, num_classes=4)
    np.testing.assert_allclose(got, want_losses, rtol=1e-6)


def test_equals_sampled_softmax_on_the_kept_candidates():
    ids, counts = kept(W7, B7, X7, SAMPLED7, 3, 1.0)
    assert ids == KEPT7
    assert counts == pytest.approx([0.1, 0.2, 0.4])  # the kept ones' first-pass counts, not rescaled
    want = {}
    for hits in (True, False):
        want[hits] = nn_loss(W7, B7, Y7, X7, (KEPT7, SAMPLED7[1], [0.1, 0.2, 0.4]), 3, hits=hits)
        np.testing.assert_allclose(rsl(W7, B7, Y7, X7, SAMPLED7, 5, 3, 1.0, hits=hits), want[hits], rtol=1e-6)
    assert want[True][2] != pytest.approx(want[False][2])  # the accidental hit of row 2 matters


def test_num_true_two_is_passed_through():
    y = np.array([[0, 1], [1, 4], [2, 0]], np.int64)
    values = (SAMPLED7[0], [[0.3, 0.2], [0.4, 0.2], [0.5, 0.3]], SAMPLED7[2])
    got = rsl(W7, B7, y, X7, values, 5, 3, 1.0, num_true=2)
    want = nn_loss(W7, B7, y, X7, (KEPT7, values[1], [0.1, 0.2, 0.4]), 3, num_true=2)
    np.testing.assert_allclose(got, want, rtol=1e-6)


SHARDINGS = [("div", [4, 3]), ("div", [3, 2, 2]), ("mod", [4, 3]), ("mod", [3, 2, 2])]


def split(a, strategy, sizes):
    """Shards of `a` laid out as TF1's embedding_lookup expects."""
    n = len(sizes)
    if strategy == "mod":
        return [tf.constant(a[p::n]) for p in range(n)]
    bounds = np.cumsum([0] + sizes)
    return [tf.constant(a[bounds[p]:bounds[p + 1]]) for p in range(n)]


@pytest.mark.parametrize("strategy, sizes", SHARDINGS)
def test_gather_rows_matches_tf1_embedding_lookup(strategy, sizes):
    shards = split(W7, strategy, sizes)
    assert [int(s.shape[0]) for s in shards] == sizes
    ids = tf.constant([6, 0, 3, 3, 5, 1, 2, 4], tf.int64)
    want = tf.compat.v1.nn.embedding_lookup(shards, ids, partition_strategy=strategy)
    np.testing.assert_array_equal(sharding.gather_rows(shards, ids, strategy), want)
    np.testing.assert_array_equal(sharding.gather_rows(shards, ids, strategy), W7[ids.numpy()])


@pytest.mark.parametrize("strategy, sizes", SHARDINGS)
@pytest.mark.parametrize("shard_biases", [False, True])
def test_sharded_weights_give_the_unsharded_result(strategy, sizes, shard_biases):
    w = split(W7, strategy, sizes)
    b = split(B7, strategy, sizes) if shard_biases else B7
    assert kept(w, b, X7, SAMPLED7, 3, 1.0, strategy) == kept(W7, B7, X7, SAMPLED7, 3, 1.0)
    unsharded = rsl(W7, B7, Y7, X7, SAMPLED7, 5, 3, 1.0, strategy)
    np.testing.assert_allclose(rsl(w, b, Y7, X7, SAMPLED7, 5, 3, 1.0, strategy), unsharded, rtol=1e-6)
    tf1 = tf.compat.v1.nn.sampled_softmax_loss(w, b, Y7, X7, 3, 7, sampled_values=(
        KEPT7, SAMPLED7[1], [0.1, 0.2, 0.4]), partition_strategy=strategy)
    np.testing.assert_allclose(unsharded, tf1, rtol=1e-6)


def test_wrongly_sized_div_shards_are_refused():
    shards = [tf.constant(W7[:2]), tf.constant(W7[2:])]  # 7 rows in 2 "div" shards must be [4, 3]
    with pytest.raises(ValueError, match=r"'div' shards of 7 rows must have sizes \[4, 3\], got \[2, 5\]"):
        sharding.gather_rows(shards, tf.constant([0]), "div")


@pytest.mark.parametrize("num_sampled, num_resampled, num_classes, strategy, message", [
    (3, 3, 7, "div", r"num_resampled \(3\) must be less than num_sampled \(3\)"),
    (2, 3, 7, "div", r"num_resampled \(3\) must be less than num_sampled \(2\)"),
    (2, 1, 7, None, r"unsupported partition_strategy \(None\)"),
    (2, 1, 7, "modulo", r"unsupported partition_strategy \(modulo\)"),
    (8, 9, 7, None, r"num_sampled \(8\) cannot be greater than num_classes \(7\)"),  # checked first
])
def test_tf1_errors(num_sampled, num_resampled, num_classes, strategy, message):
    with pytest.raises(ValueError, match=message):
        rsl(W7, B7, Y7, X7, None, num_sampled, num_resampled, 1.0, strategy, num_classes=num_classes)


@pytest.mark.parametrize("compiled", [False, True])
def test_default_sampler_is_learned_unigram_and_num_sampled_may_equal_num_classes(compiled, monkeypatch):
    """sampled_values=None draws with TF's unique learned-unigram sampler, and the loss uses what it drew."""
    calls, drawn = [], []
    real = tf.random.learned_unigram_candidate_sampler

    def spy(**kwargs):
        calls.append({k: v for k, v in kwargs.items() if k != "true_classes"})
        values = real(**kwargs)
        drawn.append(values)
        return values

    monkeypatch.setattr(tf.random, "learned_unigram_candidate_sampler", spy)

    def fn():  # unique sampling of all 7 classes, keep 2
        loss = rank_sampled_softmax_loss(W7, B7, Y7, X7, 7, 2, 7, 1, None, 1.0, True, "mod")
        again = rank_sampled_softmax_loss(W7, B7, Y7, X7, 7, 2, 7, 1, drawn[-1], 1.0, True, "mod")
        return loss, again, drawn[-1][0]

    loss, again, sampled = (tf.function(fn) if compiled else fn)()
    assert calls[0] == {"num_true": 1, "num_sampled": 7, "unique": True, "range_max": 7}
    assert sorted(sampled.numpy().tolist()) == list(range(7))  # every class, once
    np.testing.assert_allclose(loss.numpy(), again.numpy(), rtol=1e-6)  # the loss is over what the spy drew
    assert loss.shape == (3,) and np.all(np.isfinite(loss.numpy())) and np.all(loss.numpy() >= 0)


def test_masked_rows_neither_vote_nor_cost():
    # Row 1 is padding; as a vote it would push class 3 (w.x = 500) into the kept set.
    x = np.array([[1, 0], [0, 0], [0, 1]], np.float32)
    y = np.array([[0], [1], [0]], np.int64)
    padded = x.copy()
    padded[1] = [-100, 0]
    mask = np.array([1, 0, 1], np.float32)
    values = (SAMPLED[0], [[1.0], [0.7], [0.5]], SAMPLED[2])
    # Row 2's target has expected count 0.5: its logit is 0 - log 0.5, against 0 for kept class 1.
    want = [LOW_T_LOSSES[0], math.log(1.5)]
    assert kept(W, B, padded, values, 1, 0.5) == ([3], [1.0])  # unmasked: the padding row wins
    for h in (x, padded):
        for m in (mask, mask.astype(bool)):
            assert kept(W, B, h, values, 1, 0.5, mask=m) == ([1], [1.0])
            got = rsl(W, B, y, h, values, 3, 1, 0.5, num_classes=4, mask=m)
            np.testing.assert_allclose(got[[0, 2]], want, rtol=1e-6)
            assert got[1] == 0.0


def test_all_rows_masked_gives_zeros():
    values = (SAMPLED[0], [[1.0], [1.0]], SAMPLED[2])
    got = rsl(W, B, Y, X, values, 3, 1, 0.5, num_classes=4, mask=np.zeros(2, np.float32))
    np.testing.assert_array_equal(got, [0.0, 0.0])


class FakeSampler:
    """Always proposes classes 1, 2, 3 with expected count 1 (log q = 0)."""

    def __init__(self):
        self.calls = []

    def sample(self, labels, mask, step):
        self.calls.append(step)
        n = tf.shape(labels)[0]
        return tf.constant([1, 2, 3], tf.int64), tf.ones([n]), tf.ones([3])


def tapas_config(**kw):
    kw = {"name": "tapas", "num_sampled": 3, "num_resampled": 1, "resampling_temperature": 0.5,
          "final_resampling_temperature": 0.0, "tapas_correction": "none", **kw}
    return LossConfig(**kw)


def test_strategy_equal_the_tf1_call_on_real_rows():
    hidden = tf.constant([[1, 0], [-100, 0], [0, 1]], tf.float32)  # row 1 is padding
    labels = tf.constant([0, 3, 0], tf.int32)
    mask = tf.constant([1, 0, 1], tf.float32)
    sampler = FakeSampler()
    got = losses.per_token(tapas_config(), tf.Variable(W), tf.Variable(B), hidden, labels, mask,
                           sampler=sampler).numpy()
    assert len(sampler.calls) == 1
    real = rsl(W, B, Y, X, SAMPLED, 3, 1, 0.5, num_classes=4)
    np.testing.assert_allclose(got[[0, 2]], real, rtol=1e-6)
    np.testing.assert_allclose(got[[0, 2]], LOW_T_LOSSES, rtol=1e-6)
    assert got[1] == 0.0


@pytest.mark.parametrize("compiled", [False, True])
def test_strategy_follow_the_temperature_schedule(compiled):
    # T decays from 100 (keeps "average") to 0.5 (keeps "peaked") over 10 steps.
    config = tapas_config(resampling_temperature=100.0, final_resampling_temperature=0.5,
                          temperature_decay="exponential")
    sampler = FakeSampler()

    def fn(step):
        return losses.per_token(config, W, B, X, Y[:, 0], tf.ones([2]), step, sampler, total_steps=10)

    fn = tf.function(fn) if compiled else fn
    for step, want in ((0, HIGH_T_LOSSES), (10, LOW_T_LOSSES)):
        np.testing.assert_allclose(fn(tf.constant(step, tf.int64)), want, rtol=1e-6)
    assert len(sampler.calls) == (1 if compiled else 2)  # one trace serves every step


def test_strategy_need_a_sampler():
    with pytest.raises(ValueError, match="needs a candidate sampler"):
        losses.per_token(tapas_config(), W, B, X, Y[:, 0], tf.ones([2]))


@pytest.mark.parametrize("decay, quarter, middle", [
    ("linear", 1.625, 1.25),
    ("exponential", 2.0 * 0.25 ** 0.25, 1.0),
    ("cosine", 0.5 + 0.75 * (1 + math.cos(math.pi / 4)), 1.25),
])
def test_temperature_schedule(decay, quarter, middle):
    config = tapas_config(resampling_temperature=2.0, final_resampling_temperature=0.5,
                          temperature_decay=decay)
    steps = (0, 25, 50, 100, 300)
    values = [float(resampling_temperature(config, tf.constant(s, tf.int64), 100)) for s in steps]
    assert values == pytest.approx([2.0, quarter, middle, 0.5, 0.5], rel=1e-6)


@pytest.mark.parametrize("kw, total_steps", [
    ({"final_resampling_temperature": 0.0, "temperature_decay": "linear"}, 100),
    ({"final_resampling_temperature": 0.5, "temperature_decay": "constant"}, 100),
    ({"final_resampling_temperature": 0.5, "temperature_decay": "cosine"}, 0),
])
def test_temperature_is_constant_when_asked(kw, total_steps):
    config = tapas_config(resampling_temperature=2.0, **kw)
    for step in (0, 50, 100):
        assert float(resampling_temperature(config, tf.constant(step, tf.int64), total_steps)) == 2.0


@pytest.mark.parametrize("sharded", [False, True])
def test_tf_function_gradients(sharded):
    w = [tf.Variable(W7[:4]), tf.Variable(W7[4:])] if sharded else [tf.Variable(W7)]
    b = tf.Variable(B7)
    mask = tf.constant([1, 0, 1], tf.float32)

    @tf.function
    def loss_fn():
        weights = w if sharded else w[0]
        losses = rank_sampled_softmax_loss(weights, b, Y7, X7, 5, 3, 7, 1, SAMPLED7, tf.constant(1.0), True,
                                           "div", mask=mask)
        return tf.reduce_sum(losses)

    with tf.GradientTape() as tape:
        loss = loss_fn()
    grads = tape.gradient(loss, [*w, b])
    dense = [tf.convert_to_tensor(g).numpy() for g in grads]
    assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in dense)
    full = np.concatenate(dense[:-1])  # (7, 2)
    # Rows 0 and 2 are real (labels 0 and 5); row 1 (label 3) is masked, so 2, 4 and 5 are kept.
    assert all(np.abs(full[i]).sum() > 0 for i in (0, 2, 4, 5))
    np.testing.assert_array_equal(full[[1, 3, 6]], 0.0)
    assert all(dense[-1][i] != 0 for i in (0, 2, 4, 5)) and np.all(dense[-1][[1, 3, 6]] == 0)
