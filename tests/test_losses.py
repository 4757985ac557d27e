"""Full-softmax strategy and the reduction, against numpy."""

import numpy as np
import pytest
import tensorflow as tf

from lmcli import losses
from lmcli.config import LossConfig
from lmcli.losses import masked_mean
from lmcli.runtime.errors import ConfigError


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def tiny_case(seed=0, n=7, v=5, d=3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(v, d)).astype(np.float32)
    b = rng.normal(size=(v,)).astype(np.float32)
    h = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, v, size=n).astype(np.int32)
    m = np.array([1, 1, 0, 1, 0, 1, 1], np.float32)[:n]
    return w, b, h, y, m


def run_full(w, b, h, y, m):
    return losses.per_token(LossConfig(), tf.constant(w), tf.constant(b), tf.constant(h), tf.constant(y),
                            tf.constant(m)).numpy()


def test_full_softmax_matches_numpy():
    w, b, h, y, m = tiny_case()
    got = run_full(w, b, h, y, m)
    logp = np_log_softmax(h.astype(np.float64) @ w.T.astype(np.float64) + b)
    want = -logp[np.arange(len(y)), y] * m
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[m == 0] == 0)


def test_hand_checked_uniform_case():
    # W = 0, b = 0: every class has probability 1/V, so each real token costs log V.
    v = 4
    got = run_full(np.zeros((v, 2), np.float32), np.zeros(v, np.float32), np.ones((3, 2), np.float32),
                   np.array([0, 3, 1], np.int32), np.array([1, 0, 1], np.float32))
    np.testing.assert_allclose(got, [np.log(4), 0, np.log(4)], rtol=1e-6)


def test_masked_labels_do_not_matter():
    w, b, h, y, m = tiny_case(1)
    y2 = y.copy()
    y2[m == 0] = (y2[m == 0] + 1) % 5
    np.testing.assert_array_equal(run_full(w, b, h, y, m), run_full(w, b, h, y2, m))


def test_masked_mean_is_over_real_tokens():
    loss = tf.constant([1.0, 2.0, 100.0, 3.0])
    mask = tf.constant([1.0, 1.0, 0.0, 1.0])
    assert masked_mean(loss * mask, mask).numpy() == pytest.approx(2.0)
    assert masked_mean(tf.zeros(3), tf.zeros(3)).numpy() == 0.0


def test_unknown_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown loss 'nope'"):
        losses.get("nope")
