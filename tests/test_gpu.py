"""GPU-only checks: the cuDNN LSTM kernel runs in training, left padding is converted for it, and mixed precision
trains on a real GPU. Skipped where no GPU is visible (CI and the 2-core development machines have none)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lmcli.config import DataConfig, LossConfig, ModelConfig, TrainConfig
from lmcli.model import build_model
from lmcli.model.kernel import lstm_kernel
from lmcli.train.distribution import make_cluster, make_step, replica_feeds
from lmcli.train.objective import Objective
from lmcli.train.optim import make_optimizer

pytestmark = pytest.mark.skipif(not tf.config.list_logical_devices("GPU"),
                                reason="needs a GPU: these check the cuDNN kernel and half precision on one")
V = 64


def step_and_feeds(precision: str = "float32", padding: str = "pack"):
    keras.utils.set_random_seed(0)
    cluster = make_cluster("none")
    model = build_model(ModelConfig(vocab_size=V, embedding_dim=16, hidden=32), precision)
    optimizer = make_optimizer(TrainConfig(optimizer="adam", precision=precision))
    model.compile(optimizer, Objective(LossConfig()), clip_norm=1.0)
    ids = np.random.default_rng(0).integers(4, V, (4, 9)).astype(np.int32)
    mask = np.ones((4, 8), np.float32)
    if padding == "pad":
        mask[1, 5:] = 0  # right padding
    arrays = {"inputs": ids[:, :-1], "labels": ids[:, 1:], "mask": mask}
    state = model.zero_state(4) if padding == "pack" else None
    step = make_step(cluster, model.train_step, {"loss", "strategy_loss", "tokens"})
    return step, (lambda i: replica_feeds(cluster, arrays, state, i, 0.0))


@pytest.mark.parametrize("padding", ["pack", "pad"])
def test_training_runs_the_cudnn_lstm_kernel(padding):
    step, feeds = step_and_feeds(padding=padding)
    graph_def = step.get_concrete_function(feeds(0)).graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    ops |= {node.op for function in graph_def.library.function for node in function.node_def}
    assert any(op.startswith("CudnnRNN") for op in ops), sorted(ops)
    assert np.isfinite(float(step(feeds(0))["loss"]))


def test_left_padding_is_trained_right_padded_on_the_gpu():
    kernel, layout = lstm_kernel(DataConfig(padding="pad", pad_side="left"))
    assert kernel.startswith("cudnn") and layout.pad_side == "right"


@pytest.mark.parametrize("precision", ["mixed-float16", "mixed-bfloat16"])
def test_mixed_precision_trains_on_the_gpu(precision):
    ref, ref_feeds = step_and_feeds("float32")
    got, got_feeds = step_and_feeds(precision)
    a = [float(ref(ref_feeds(i))["loss"]) for i in range(5)]
    b = [float(got(got_feeds(i))["loss"]) for i in range(5)]
    np.testing.assert_allclose(b, a, rtol=2e-2)
    assert b[-1] < b[0]
