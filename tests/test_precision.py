"""Mixed precision: half-precision LSTMs on float32 variables, dynamic loss scaling for float16 that keeps sparse
gradients sparse, and float32 exports."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from lmcli import losses
from lmcli.config import LossConfig, ModelConfig, TrainConfig
from lmcli.model import build_model
from lmcli.runtime.progress import Progress
from lmcli.serve.exporting import export
from lmcli.train.objective import Objective
from lmcli.train.optim import LazyAdam, SparseLossScaleOptimizer, make_optimizer
from lmcli.train.run import train

V = 40
LOSS = LossConfig(name="sampled", num_sampled=10, sampler="uniform")
IDS = np.random.default_rng(0).integers(0, V, (4, 9)).astype(np.int32)


def steps(precision: str, n: int = 5):
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(vocab_size=V, embedding_dim=8, hidden=16, proj_dim=8), precision)
    optimizer = make_optimizer(TrainConfig(optimizer="lazy-adam", precision=precision, lr=0.01))
    ctx = losses.get("sampled").setup(LOSS, V, None, 0)
    model.compile(optimizer, Objective(LOSS, ctx=ctx), clip_norm=1.0)
    step = tf.function(model.train_step)
    out = [step({"inputs": IDS[:, :-1], "labels": IDS[:, 1:], "mask": np.ones((4, 8), np.float32),
                 "step": tf.constant(i, tf.int64), "state": model.zero_state(4)}) for i in range(n)]
    return model, optimizer, [float(o["loss"]) for o in out]


@pytest.mark.parametrize("precision", ["mixed-float16", "mixed-bfloat16"])
def test_mixed_precision_losses_match_float32_within_a_stated_tolerance(precision):
    """On this tiny model the losses of 5 steps agree with float32 to 1e-3 relative, and the weights to 5e-3 (half of
    one Adam step at lr 0.01: a gradient near 0 whose sign differs in half precision moves a weight by up to lr)."""
    ref_model, _, ref = steps("float32")
    model, optimizer, got = steps(precision)
    np.testing.assert_allclose(got, ref, rtol=1e-3)
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert model.lstm_0.compute_dtype == precision.split("-")[1] and model.lstm_0.variable_dtype == "float32"
    for a, b in zip(model.weights, ref_model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=5e-3)
    assert isinstance(optimizer, SparseLossScaleOptimizer) == (precision == "mixed-float16")


def test_loss_scaling_keeps_sparse_gradients_sparse_and_skips_non_finite_steps(monkeypatch):
    seen = []
    real = LazyAdam.update_step

    def spy(self, gradient, variable, learning_rate):
        seen.append(type(gradient).__name__)
        return real(self, gradient, variable, learning_rate)

    monkeypatch.setattr(LazyAdam, "update_step", spy)
    model, optimizer, _ = steps("mixed-float16", n=1)
    assert "IndexedSlices" in seen  # W, b and E reach LazyAdam as slices, unscaled
    before = [v.numpy() for v in model.trainable_variables]
    scale = float(optimizer.dynamic_scale.numpy())
    optimizer.dynamic_scale.assign(1e38)  # the scaled gradients overflow: the step is skipped, the scale halves
    model.train_step({"inputs": IDS[:, :-1], "labels": IDS[:, 1:], "mask": np.ones((4, 8), np.float32),
                      "step": tf.constant(9, tf.int64), "state": model.zero_state(4)})
    assert float(optimizer.dynamic_scale.numpy()) == pytest.approx(5e37)
    for a, b in zip(before, model.trainable_variables):
        np.testing.assert_array_equal(a, b.numpy())
    assert scale > 1


def test_export_of_a_mixed_precision_run_is_float32_and_verifies(tiny_data_dir, tmp_path):
    out = train(tiny_data_dir, tmp_path / "r", {"model": {"embedding_dim": 8, "hidden": 16},
                                                 "data": {"batch_size": 4, "seq_len": 6},
                                                 "train": {"precision": "mixed-float16", "max_steps": 12}},
                progress=Progress())
    assert out["steps"] == 12 and np.isfinite(out["train_perplexity"])
    check = export(tmp_path / "r", tmp_path / "e", verify=True)
    assert check["verified"]
    loaded = tf.saved_model.load(str(tmp_path / "e"))
    assert all(v.dtype == tf.float32 for v in (loaded.embedding, loaded.output_bias, *loaded.kernels))
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["precision"] == "mixed-float16"
