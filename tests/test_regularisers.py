"""Embedding regularisers and training noise: word-type dropout, the variational gate, and stateless noise that
does not depend on how a batch is split over replicas."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lmcli.model.embedding import WordEmbedding
from lmcli.model.noise import Noise

V, E = 30, 6


def layer(**kw) -> WordEmbedding:
    tf.random.set_seed(0)
    emb = WordEmbedding(V, E, **kw)
    emb.build()
    return emb


def test_word_dropout_drops_a_type_everywhere_in_the_batch_and_keeps_the_gradient_row_sparse():
    emb = layer(word_dropout=0.4)
    ids = tf.constant(np.random.default_rng(0).integers(0, V, size=(4, 12)), tf.int32)
    theta = emb.matrix().numpy()
    dropped_share = []
    for step in range(40):
        with tf.GradientTape() as tape:
            out = emb(ids, noise=Noise(7, tf.constant(step, tf.int64)))
            total = tf.reduce_sum(out)
        x = out.numpy()
        per_type = {}
        for i, token in np.ndenumerate(ids.numpy()):
            kept = not np.all(x[i] == 0)
            if kept:
                np.testing.assert_allclose(x[i], theta[token] / 0.6, rtol=1e-6)
            assert per_type.setdefault(token, kept) == kept  # the same word: dropped everywhere or nowhere
        dropped_share.append(1 - np.mean(list(per_type.values())))
        grad = tape.gradient(total, emb.embeddings.value)
        assert isinstance(grad, tf.IndexedSlices)
        assert set(grad.indices.numpy()) <= set(ids.numpy().ravel())
    assert np.mean(dropped_share) == pytest.approx(0.4, abs=0.08)
    again = emb(ids, noise=Noise(7, tf.constant(3, tf.int64))).numpy()  # stateless: the same step, the same mask
    np.testing.assert_array_equal(again, emb(ids, noise=Noise(7, tf.constant(3, tf.int64))).numpy())
    np.testing.assert_array_equal(emb(ids).numpy(), theta[ids.numpy()])  # no noise: the plain lookup


def test_variational_gate_is_one_gaussian_per_token_with_variance_alpha():
    emb = layer(variational=True)
    emb.log_alpha.assign(np.log(np.full(V, 0.25, np.float32)))  # alpha = 0.25: gate ~ N(1, 0.25)
    ids = tf.constant(np.arange(V).reshape(3, 10) % V, tf.int32)
    theta = emb.matrix().numpy()[ids.numpy()]  # (3, 10, E)
    gates = []
    for step in range(200):
        x = emb(ids, noise=Noise(1, tf.constant(step, tf.int64))).numpy()
        ratio = x / theta  # (3, 10, E): the same gate on every coordinate of a token
        np.testing.assert_allclose(ratio, np.repeat(ratio[..., :1], E, axis=-1), rtol=1e-4)
        gates.append(ratio[..., 0])
    gates = np.array(gates)
    assert gates.mean() == pytest.approx(1.0, abs=0.02) and gates.std() == pytest.approx(0.5, abs=0.02)
    np.testing.assert_array_equal(emb(ids).numpy(), theta)  # inference: the mean theta


def test_noise_rows_do_not_depend_on_how_the_batch_is_split():
    whole = Noise(5, tf.constant(11, tf.int64))
    x = tf.ones([6, 3, 4])
    full_mask = whole.dropout(x, 0.5, site=9).numpy()
    parts = [Noise(5, tf.constant(11, tf.int64), offset, 6).dropout(x[offset:offset + 2], 0.5, site=9).numpy()
             for offset in (0, 2, 4)]
    np.testing.assert_array_equal(np.concatenate(parts), full_mask)
    assert 0.3 < (full_mask == 0).mean() < 0.7 and set(np.unique(full_mask)) == {0.0, 2.0}
    other = Noise(5, tf.constant(12, tf.int64)).dropout(x, 0.5, site=9).numpy()
    assert not np.array_equal(other, full_mask)  # another step, another mask


@pytest.mark.parametrize("model_options", [{"embedding_dropout": 0.5}, {"variational_embedding": True},
                                           {"dropout": 0.3}, {}])
def test_training_steps_see_the_noise_and_scoring_does_not(model_options):
    """The strategy's loss in training equals the full-softmax score of the same batch only without noise."""
    import keras

    from lmcli.config import LossConfig, ModelConfig
    from lmcli.model import build_model
    from lmcli.train.objective import Objective

    keras.utils.set_random_seed(1)
    model = build_model(ModelConfig(vocab_size=V, embedding_dim=E, hidden=8, **model_options))
    if model.variational_embedding:
        model.embedding.log_alpha.assign(tf.zeros([V]))  # alpha = 1: plenty of noise
    model.compile(keras.optimizers.SGD(0.0), Objective(LossConfig(), provided=model.extras_provided), seed=3)
    ids = np.random.default_rng(2).integers(0, V, size=(3, 9)).astype(np.int32)
    batch = {"inputs": ids[:, :-1], "labels": ids[:, 1:], "mask": np.ones((3, 8), np.float32),
             "step": tf.constant(4, tf.int64)}
    scored = model.score(batch["inputs"], batch["labels"], batch["mask"])
    clean = float(scored["nll_sum"]) / float(scored["tokens"])
    noisy = [float(model.compute_objective(batch)[1]["strategy_loss"]) for _ in range(2)]
    assert noisy[0] == noisy[1]  # stateless: the same step draws the same noise
    if model_options:
        assert abs(noisy[0] - clean) > 1e-4
    else:  # nothing random: the training loss is the full-softmax score
        assert noisy[0] == pytest.approx(clean, rel=1e-6)
