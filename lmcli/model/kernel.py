"""Which LSTM kernel training runs, and the batch layout it needs.

Keras 3 runs its LSTM layers on the cuDNN kernel when a GPU is visible and the layer allows it (tanh and sigmoid
activations, a bias, no recurrent dropout, not unrolled: lmcli's LSTMs always do), provided every mask is
right-padded with no fully masked row; otherwise it asserts at run time. lmcli keeps to that: packed windows run
unmasked (`network.lstm_mask`), pad-mode lines never are empty, and left padding is converted to right padding
for training and validation (the LSTM carries its state over padding, so both sides give the same loss; tested).
Without a GPU, lmcli's LSTM layers run their own loop (`model/lstm.py`).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from lmcli.config import DataConfig

CUDNN, LOOP = "cudnn", "lmcli loop"


def lstm_kernel(data: DataConfig) -> tuple[str, DataConfig]:
    """(the kernel name for a log line, the layout training should build batches in)."""
    if not tf.config.list_logical_devices("GPU"):
        return f"{LOOP} (no GPU; weight gradients after the time loop: model/lstm.py)", data
    if data.padding == "pad" and data.pad_side == "left":
        return f"{CUDNN} (left padding converted to right padding: same loss)", dataclasses.replace(
            data, pad_side="right")
    return CUDNN, data
