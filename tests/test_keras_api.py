"""`lmcli.keras`: a user's own backbone trains under `fit` with lmcli's objectives, evaluates with the full softmax
on the same weights, exports to the CLI's stateless signatures, and the examples run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import lmcli.keras as lk
from lmcli.model.signatures import SIGNATURES, markdown_table
from lmcli.runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
V, D = 30, 8


def gru_model(seed: int = 3, vocab: int = V) -> lk.BackboneModel:
    keras.utils.set_random_seed(seed)
    embedding = lk.Embedding(vocab, 6)
    backbone = keras.Sequential([keras.Input((None,), dtype="int32"), embedding,
                                 keras.layers.GRU(D, return_sequences=True)])
    model = lk.BackboneModel(backbone, vocab, D, embedding=embedding)
    model.build()
    return model


def batch(rows: int = 4, width: int = 7, seed: int = 0):
    ids = np.random.default_rng(seed).integers(1, V, size=(rows, width + 1)).astype(np.int32)
    return ids[:, :-1], ids[:, 1:]


def weights(model) -> list[np.ndarray]:
    return [w.numpy() for w in model.trainable_weights]


@pytest.mark.parametrize("loss", ["full", "sampled", "tapas"])
def test_padding_columns_change_nothing(loss):
    """The mean is over real tokens: a batch with 3 padded columns appended (mask 0) trains exactly as the batch
    without them (the GRU is causal, so the real positions see the same inputs)."""
    x, y = batch()
    pad = np.zeros((4, 3), np.int32)
    opts = {"full": {}, "sampled": {"num_sampled": 8}, "tapas": {"num_sampled": 10, "num_resampled": 5}}[loss]
    trained = []
    for inputs, labels, mask in [(x, y, np.ones_like(y, np.float32)),
                                 (np.hstack([x, pad]), np.hstack([y, pad]), np.hstack([np.ones_like(y), pad]))]:
        model = gru_model()
        model.compile(lk.LazyAdam(0.05), lk.objective(model, loss, unigram_counts=np.ones(V), seed=1,
                                                      aux_loss=("ar",), **opts))
        out = model.train_step((tf.constant(inputs), tf.constant(labels), tf.constant(mask, tf.float32)))
        trained.append((float(out["loss"]), weights(model)))
    assert trained[0][0] == pytest.approx(trained[1][0], rel=1e-6)
    for a, b in zip(trained[0][1], trained[1][1]):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_the_step_loss_is_the_strategy_on_the_models_own_tensors(loss):
    """train_step's loss equals the strategy applied by hand (`losses.per_token`, the same sampler at step 0) to the
    model's W, b and backbone output, averaged over real tokens: the objective sees the model's own tensors."""
    from lmcli import losses

    x, y = batch()
    mask = np.ones_like(y, np.float32)
    mask[0, 4:] = 0.0
    model = gru_model()
    objective = lk.objective(model, loss, unigram_counts=np.arange(V) + 1.0, seed=5, num_sampled=8)
    model.compile(lk.LazyAdam(0.0), objective)
    w, b = (t.numpy() for t in model.output_weights())
    hidden = model.forward(tf.constant(x))[0].numpy().reshape(-1, D)  # no dropout in this backbone
    per_token = losses.per_token(objective.loss_cfg, w, b, hidden, y.reshape(-1), mask.reshape(-1), step=0,
                                 sampler=objective.ctx.sampler, seed=5, rows=4).numpy()
    got = model.train_step((tf.constant(x), tf.constant(y), tf.constant(mask)))["loss"]
    assert float(got) == pytest.approx(float((per_token * mask.ravel()).sum() / mask.sum()), rel=1e-5)


def test_two_replicas_fit_as_one_device():
    """`fit` under mirrored (2 logical CPU devices) on the same global batches gives one device's weights."""
    from lmcli.train.distribution import make_cluster

    x, y = batch(rows=8, seed=4)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat(2)
    trained = []
    for strategy in (tf.distribute.get_strategy(), make_cluster("mirrored", "cpu:0,cpu:1").strategy):
        with strategy.scope():
            model = gru_model()
            model.compile(lk.LazyAdam(0.05), lk.objective(model, "sampled", unigram_counts=np.ones(V), seed=2,
                                                          num_sampled=8, candidate_sets="row"))
        model.fit(data, epochs=1, verbose=0)
        trained.append(weights(model))
    for a, b in zip(*trained):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_export_scores_what_the_model_scores(tmp_path):
    """export -> reload (plain TensorFlow) -> `score` equals the model's full-softmax log-likelihood, padding
    excluded, and `log_probs` equals the model's."""
    model = gru_model()
    summary = lk.export(model, tmp_path / "export")
    assert summary["verified"] and summary["signatures"] == ["log_probs", "score", "serving_default"]
    served = tf.saved_model.load(str(tmp_path / "export"))
    ids = np.random.default_rng(1).integers(1, V, size=(3, 6)).astype(np.int32)
    lengths = np.array([6, 4, 2], np.int32)
    got = served.signatures["score"](ids=tf.constant(ids), lengths=tf.constant(lengths))
    mask = (np.arange(5)[None, :] < lengths[:, None] - 1).astype(np.float32)
    nll = model.score(tf.constant(ids[:, :-1]), tf.constant(ids[:, 1:]), tf.constant(mask))["nll"].numpy()
    np.testing.assert_allclose(got["loglik"].numpy(), -nll.sum(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(got["tokens"].numpy(), lengths - 1)


def test_objective_checks_its_options_as_the_cli_does():
    model = gru_model()
    with pytest.raises(ConfigError, match="unknown option"):
        lk.objective(model, "sampled", num_samples=8)
    with pytest.raises(ConfigError, match="num-sampled"):
        lk.objective(model, "sampled", unigram_counts=np.ones(V), num_sampled=V)
    bare = lk.BackboneModel(keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(V, D)]),
                            V, D)
    bare.build()
    with pytest.raises(ConfigError, match="embedding term needs"):
        lk.objective(bare, "full", aux_loss=("embedding",))


def test_the_readme_holds_the_signature_table():
    """One table of export signatures: the README shows exactly the one the graph and the exporters use."""
    assert markdown_table() in (ROOT / "README.md").read_text()
    assert set(SIGNATURES) == {"log_probs", "score", "init_state", "step"}


def run_example(name: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), "--tiny"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gru_example_trains_evaluates_and_exports():
    out = run_example("gru_sampled.py")
    assert out["valid_perplexity"] < 0.95 * out["vocab"]  # learned something, measured by the full softmax
    np.testing.assert_allclose(out["kl_weight_by_epoch"], [0.49, 0.99, 1.0], atol=0.01)  # EpochClock: epoch / 2
    assert out["export_max_abs_diff"] <= 1e-5


def test_labels_as_input_example_before_and_after():
    """The rewrite on the API learns as well as the label-smuggling original (within 25%; with the unigram
    sampler drawing the frequent out-of-vocabulary id 0 too: when it skipped it, 'after' was 4.3x 'before')."""
    out = run_example("labels_as_input.py")
    assert out["after_valid_perplexity"] < 1.25 * out["before_valid_perplexity"]
