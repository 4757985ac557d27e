"""Which LSTM kernel training runs, and the batch layout it needs.

Keras 3 runs its LSTM layers on the cuDNN kernel when a GPU is visible and the layer allows it (tanh and sigmoid
activations, a bias, no recurrent dropout, not unrolled: lmcli's LSTMs always do), provided every mask is
right-padded with no fully masked row; otherwise it asserts at run time. lmcli keeps to that: packed windows run
unmasked (`network.lstm_mask`), pad-mode lines never are empty, and left padding is converted to right padding
for training and validation (the LSTM carries its state over padding, so both sides give the same loss; tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Iterator

import tensorflow as tf

from lmcli.config import DataConfig

CUDNN, GENERIC = "cudnn", "generic"
REPLICA_LOOP_ITERATIONS = 4  # the generic LSTM loop's parallel iterations under several replicas of one process
# Keras' module with the generic LSTM's time loop (its package's `rnn` attribute is a function of that name).
try:
    keras_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")
except ImportError:  # another Keras layout: the loops keep Keras' own setting
    keras_rnn = None


def lstm_kernel(data: DataConfig) -> tuple[str, DataConfig]:
    """(the kernel name for a log line, the layout training should build batches in)."""
    if not tf.config.list_logical_devices("GPU"):
        return f"{GENERIC} (no GPU)", data
    if data.padding == "pad" and data.pad_side == "left":
        return f"{CUDNN} (left padding converted to right padding: same loss)", dataclasses.replace(
            data, pad_side="right")
    return CUDNN, data


@contextlib.contextmanager
def replica_loops() -> Iterator[None]:
    """While a replica of a step with several local replicas is traced: the generic LSTM's time loop, and so its
    gradient loop, runs REPLICA_LOOP_ITERATIONS iterations at a time instead of Keras' fixed 32.

    Under mirrored on devices that share the host's cores, each replica's backward loop ran up to 32 time steps
    ahead of their sum, each holding an [E + H, 4H] weight gradient (an LSTM alone, E = H = 512, two replicas:
    270-300 MB at the step's peak; 38 MB with 1, 50-59 MB with 4; 21 MB on one device, 32 or 1). lmcli's sampled
    step on two replicas, 32k: the allocator's overhead 0.08-0.09 GB with 4 against 0.18-0.45 GB with 32 (it
    varies with the scheduling), at about the same speed (A/B pairs: 0.94 to 1.07, 0.99 on average; 1 was 4-8%
    slower with one intra-op thread). Keras takes no option for it, so Keras' rnn module sees, for the trace, a
    `tf` whose while_loop sets it; on one replica, or when the module is not as expected, nothing changes. The
    cuDNN kernel has no loop."""
    if _local_replicas() <= 1 or getattr(keras_rnn, "tf", None) is not tf:
        yield
        return
    keras_rnn.tf = _BoundedLoops()
    try:
        yield
    finally:
        keras_rnn.tf = tf


class _BoundedLoops:
    """TensorFlow's module as Keras' rnn module uses it, with a bounded while_loop."""

    def __getattr__(self, name: str):
        return getattr(tf, name)

    @staticmethod
    def while_loop(*args, **kwargs):
        return tf.while_loop(*args, **{**kwargs, "parallel_iterations": REPLICA_LOOP_ITERATIONS})


def _local_replicas() -> int:
    if not tf.distribute.has_strategy():
        return 1
    try:
        return len(tf.distribute.get_strategy().extended.worker_devices)
    except (RuntimeError, AttributeError):
        return 1
