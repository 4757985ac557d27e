"""Import TensorFlow without its start-up chatter on stderr.

TF 2.21 writes absl/oneDNN/CUDA-probe lines to fd 2 before its log level is read, so
TF_CPP_MIN_LOG_LEVEL cannot hide them. The CLI imports TensorFlow here once, with fd 2 pointed at
/dev/null, and runs the ops that print on first use (device probe, a masked LSTM step).
`--verbose` or LMCLI_DEBUG=1 leaves stderr alone.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Optional


def import_tensorflow(quiet: bool = True, setup: Optional[Callable[[], None]] = None) -> None:
    """Import TensorFlow; `setup` runs right after the import, before any op (device layout, a multi-worker
    strategy: TensorFlow allows them only then)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not quiet or os.environ.get("LMCLI_DEBUG"):
        if setup is not None:
            setup()
        return
    if "tensorflow" not in sys.modules:
        _import_silently(setup)
    import tensorflow as tf

    # Python-side WARNINGs, e.g. "unrestored values" when a checkpoint that cannot be read is collected,
    # would follow the one error line.
    tf.get_logger().setLevel(logging.ERROR)


def set_intra_op_threads(threads: int) -> None:
    """Threads one TensorFlow op may use on the CPU (0: TensorFlow's choice, one per core). Call it before the
    runtime starts (`import_tensorflow`'s setup); TensorFlow refuses a change afterwards.

    On a 2-core machine (README, Benchmarks), 1 thread made two mirrored replicas' sampled step 1.49 times as
    fast (their ops no longer split over cores the other replica is using: `train`'s default there), and on one
    device changed the sampled step by 0.99-1.00 times and made the full softmax's at V = 32k 0.78 times as fast
    (its one large product gains from every core).
    """
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)


def intra_op_threads() -> int:
    """The intra-op thread count TensorFlow runs with (0: its own choice, one per core)."""
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads()


def _import_silently(setup: Optional[Callable[[], None]] = None) -> None:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras
        import tensorflow as tf

        if setup is not None:
            setup()
        tf.config.list_physical_devices()
        keras.layers.LSTM(1)(tf.zeros([1, 1, 1]), mask=tf.constant([[True]]))
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
