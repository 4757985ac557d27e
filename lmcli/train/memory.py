"""Memory planned, not discovered: an estimate of what a run needs, made from its config before anything is
allocated, checked against what the machine has.

The estimate (bytes) is the TensorFlow runtime, plus the parameters, plus the optimizer's slots (Adam: 2 per
parameter, Adagrad: 1, SGD: 0), plus the larger of one training step's transient tensors and one validation
batch's, plus, in host memory, the CPU allocator's table for those tensors: TensorFlow's oneDNN allocator keeps
them in BFC regions with one 8-byte chunk handle per 256 bytes of region, 1/32 more. The training-step part was
calibrated on this project's 2-core CPU machines (E = H = 512, batch 32 x 35, peak RSS after 3 steps): full
softmax at V = 32k / 100k with adam, lazy-adam and sgd, sampled at V = 32k / 100k with lazy-adam, adam and
adagrad, TAPAS at 100k: every measured peak was 90% to 97% of the estimate, before the table was counted (see
the README). The output layer's share is the loss strategy's own (`Strategy.memory`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional

from lmcli import losses
from lmcli.config import RunConfig
from lmcli.runtime.errors import MemoryLimitError  # noqa: F401 (re-exported for callers)

RUNTIME = 750 * 2**20  # TensorFlow, Keras and the compiled step, measured on CPU
SLOTS = {"adam": 2, "lazy-adam": 2, "adagrad": 1, "sgd": 0}
DENSIFY = {"adam": 2.0, "adagrad": 1.5}  # per V x (E + D): Keras turns IndexedSlices into dense updates
REDUCE = "--batch-size, --seq-len, --num-sampled, --proj-dim or --precision mixed-float16 / mixed-bfloat16"
GB = 1e9
HOST = "host memory"
HOST_TABLE = 32  # host tensors per byte of the CPU allocator's chunk-handle table (8 bytes per 256)


@dataclass(frozen=True)
class MemoryPlan:
    """The estimate, in bytes, and what is available (None when it cannot be known)."""

    parameters: int
    optimizer_slots: int
    training_step: int
    validation: int
    runtime: int = RUNTIME
    available: Optional[int] = None
    copies: int = 1  # replicas whose parameters, slots and step share this memory
    where: str = HOST

    @property
    def training(self) -> int:
        """Bytes of the training steps alone (no validation): what a peak measured over steps is compared with."""
        tensors = self.copies * (self.parameters + self.optimizer_slots + self.training_step)
        return self.runtime + tensors + self._table(tensors)

    @property
    def total(self) -> int:
        """Bytes this memory needs: each copy's parameters, slots and step (validation runs on one)."""
        return self.runtime + self._tensors() + self.allocator

    @property
    def allocator(self) -> int:
        """Bytes of the host allocator's chunk-handle table for `total`'s tensors (0 on a GPU, whose table is kept
        in the host's memory, not the GPU's)."""
        return self._table(self._tensors())

    def _tensors(self) -> int:
        return self.copies * (self.parameters + self.optimizer_slots) + max(self.copies * self.training_step,
                                                                           self.validation)

    def _table(self, tensors: int) -> int:
        return tensors // HOST_TABLE if self.where == HOST else 0

    def describe(self) -> str:
        times = f"{self.copies} x " if self.copies > 1 else ""
        parts = (f"parameters {times}{self.parameters / GB:.2f}, optimizer {times}{self.optimizer_slots / GB:.2f}, "
                 f"training step {times}{self.training_step / GB:.2f}, validation {self.validation / GB:.2f}, "
                 f"runtime {self.runtime / GB:.2f}")
        parts += f", allocator {self.allocator / GB:.2f}" if self.allocator else ""
        have = f"; {self.available / GB:.1f} GB available in {self.where}" if self.available else ""
        return f"about {self.total / GB:.1f} GB ({parts}){have}"

    def as_dict(self) -> dict:
        return {**asdict(self), "allocator": self.allocator, "total": self.total}


def parameter_count(cfg: RunConfig) -> int:
    m = cfg.model
    v, e, h, d = m.vocab_size, m.embedding_dim, m.hidden, m.output_dim
    lstm = sum(4 * h * ((e if i == 0 else h) + h) + 4 * h for i in range(m.layers))
    return v * e + lstm + (h * m.proj_dim) + (0 if m.tie_embeddings else v * d) + v + (
        v if m.variational_embedding else 0)


def estimate(cfg: RunConfig, replicas: int = 1, available: Optional[int] = None, copies: int = 1,
             where: str = HOST) -> MemoryPlan:
    """What one memory needs for `cfg` with the global batch split over `replicas`, `copies` of them sharing that
    memory (logical CPU devices share the host's; each GPU holds one). Mixed precision halves the LSTM
    activations; the output layer and the loss stay float32."""
    m, loss = cfg.model, cfg.loss
    v, e, h, d = m.vocab_size, m.embedding_dim, m.hidden, m.output_dim
    params = parameter_count(cfg)
    rows = max(1, cfg.data.batch_size // max(replicas, 1))  # batch rows per replica
    n = rows * (cfg.data.seq_len if cfg.data.padding == "pack" else cfg.data.max_len)  # tokens per replica step
    output = losses.get(loss.name).memory(loss, losses.StepSize(n, rows, cfg.data.batch_size, v, d))
    densify = DENSIFY.get(cfg.train.optimizer, 0.0) * v * (e + d)  # Keras Adam/Adagrad: dense V x D temporaries
    terms = 4 * n * output.classes if "embedding" in cfg.term_names else 0
    lstm = 12 * n * h * m.layers + 4 * n * (e + d)
    step = output.bytes + (densify + terms) * 4 + lstm * (4 if cfg.train.precision == "float32" else 2)
    validation = 2 * n * max(replicas, 1) * v * 4  # one device's full-softmax logits of a whole evaluation batch
    return MemoryPlan(params * 4, SLOTS.get(cfg.train.optimizer, 2) * params * 4, step, validation,
                      available=available, copies=copies, where=where)


def plan_for(cfg: RunConfig, replicas: int, devices: list[str]) -> MemoryPlan:
    """The plan of a run with `replicas` in sync, this process's on `devices` (`Cluster.devices`)."""
    place = placement(devices)
    return estimate(cfg, replicas, place.available, place.copies, place.where)


@dataclass(frozen=True)
class Placement:
    """Where a run's replicas keep their copies: how many share one memory, and how much that memory has."""

    copies: int
    available: Optional[int]
    where: str


def placement(devices: list[str]) -> Placement:
    """The memory to check for replicas on `devices` (TensorFlow device names; [] = this process's default).

    GPUs: one copy per GPU, checked against the smallest GPU's memory (what TensorFlow's allocator may use there);
    CPU devices: every local replica's copy in the host's memory (Linux MemAvailable)."""
    gpus = [d for d in devices if "GPU" in d.upper()]
    if not devices:
        gpus = gpu_names()[:1]
    if gpus:
        limits = gpu_memory()
        sizes = [limits.get(_short(d)) for d in gpus]
        known = [s for s in sizes if s]
        return Placement(1, min(known) if known else None, ", ".join(_short(d) for d in gpus))
    return Placement(max(1, len(devices)), available_bytes(), HOST)


def _short(device: str) -> str:
    """'/job:localhost/replica:0/task:0/device:GPU:1' -> 'GPU:1'."""
    return ":".join(device.upper().split(":")[-2:]).split("/")[-1]


def gpu_names() -> list[str]:
    import tensorflow as tf

    return [d.name for d in tf.config.list_logical_devices("GPU")]


def gpu_memory() -> dict[str, int]:
    """{'GPU:0': bytes TensorFlow's allocator may use on it, ...}; {} without a GPU."""
    if not gpu_names():
        return {}
    from tensorflow.python.client import device_lib  # the allocator's limit; tf.config has no public total

    return {_short(d.name): int(d.memory_limit) for d in device_lib.list_local_devices() if d.device_type == "GPU"}


def available_bytes() -> Optional[int]:
    """Memory the host can still give (Linux MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def fits(plan: MemoryPlan) -> bool:
    """Whether the estimate is within what is available (True when that cannot be known)."""
    return plan.available is None or plan.total <= plan.available


def check(plan: MemoryPlan) -> None:
    """A MemoryLimitError (exit 9) before anything is allocated when the estimate exceeds what is available."""
    if not fits(plan):
        raise MemoryLimitError(f"this configuration needs {plan.describe()}: it does not fit; reduce {REDUCE}")


def out_of_memory(plan: Optional[MemoryPlan], what: str) -> MemoryLimitError:
    """The error for an allocation that failed during training."""
    estimate_text = f"; the estimate was {plan.describe()}" if plan is not None else ""
    return MemoryLimitError(f"out of memory {what}{estimate_text}; reduce {REDUCE}")
