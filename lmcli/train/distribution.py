"""Data-parallel training on tf.distribute: which strategy runs, how a global batch is split over its replicas,
and the one distributed step.

`--batch-size` is the global batch: replica r of R holds rows [r B/R, (r+1) B/R) (in pack mode the same rows
every step, with their carried LSTM state). Every replica divides its loss by the global real-token count, so the
gradients tf.distribute sums over replicas are one device's gradient on the same global batch; candidate
sampling and dropout are keyed on (seed, step) and drawn for the global batch, so results do not depend on the
replica count. The gradients are all-reduced (SUM) by tf.distribute (`ReplicaContext.all_reduce`, IndexedSlices
kept sparse: gathered, never densified), then duplicate rows are merged and the global norm clipped, and the
optimizer applies them without reducing again (`optim.no_reduce`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from lmcli.config import DISTRIBUTES
from lmcli.runtime.errors import ConfigError
from lmcli.runtime.watchdog import PeerWatch, peers_of


@dataclass(frozen=True)
class Cluster:
    """The strategy a run trains under, and this process's place in it."""

    strategy: Any
    kind: str  # none | mirrored | multi-worker
    replicas: int  # replicas in sync, over all workers
    worker: int = 0  # this worker's index (0: the chief)
    workers: int = 1
    watch: Optional[PeerWatch] = None  # multi-worker: exits this process when another worker is gone

    @property
    def is_chief(self) -> bool:
        return self.worker == 0

    def finish(self) -> None:
        """Leave the run together: wait until every worker gets here (a collective), then stop watching them (a
        worker that has finished is not a dead one)."""
        if self.workers > 1:
            _barrier(self.strategy)()
        if self.watch is not None:
            self.watch.stop()

    @property
    def devices(self) -> list[str]:
        """This process's replicas' devices ([] for the default strategy: TensorFlow's default device)."""
        try:
            return list(self.strategy.extended.worker_devices)
        except RuntimeError:
            return []

    def describe(self) -> str:
        where = f", worker {self.worker} of {self.workers}" if self.workers > 1 else ""
        devices = f" ({', '.join(self.devices)})" if self.devices else ""
        return f"{self.kind}: {self.replicas} replica{'s' * (self.replicas > 1)}{devices}{where}"


def resolve_kind(kind: str) -> str:
    """auto: multi-worker when TF_CONFIG names a cluster, mirrored when more than one GPU is visible, else none."""
    if kind != "auto":
        return kind
    if _tf_config().get("cluster"):
        return "multi-worker"
    return "mirrored" if len(tf.config.list_logical_devices("GPU")) > 1 else "none"


def parse_devices(devices: str) -> list[str]:
    """'gpu:0,gpu:1' or '/cpu:0,/cpu:1' -> ['/gpu:0', '/gpu:1']; '' -> []."""
    out = []
    for name in (d.strip() for d in devices.split(",")):
        if name:
            out.append(name if name.startswith("/") else f"/{name}")
    return out


def shared_core_threads(devices: str, cores: Optional[int] = None) -> int:
    """`--intra-op-threads 0`'s count for a run on `--devices`: the host's cores divided among the logical CPU
    devices it names when there are several (at least 1), else 0 (TensorFlow's choice, one per core).

    Those replicas run side by side on the same cores, each with TensorFlow's intra-op pool; at one thread per
    core each, every op of each replica is split over cores the other replica is using. Two replicas on 2 cores,
    E = H = 512, sampled 32k (`bench/scale.py`): 7,645 tokens/s with one per core, 11,039 with 1."""
    wanted = [d for d in parse_devices(devices) if "cpu" in d.lower()]
    if len(wanted) < 2:
        return 0
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, cores // len(wanted))


def configure_cpu_devices(devices: str) -> None:
    """Split the CPU into as many logical devices as `--devices` names (cpu:0, cpu:1, ...), before TensorFlow
    starts: a multi-device run on one CPU (what the tests and the benchmarks use)."""
    wanted = [d for d in parse_devices(devices) if "cpu" in d.lower()]
    if len(wanted) > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * len(wanted))
        except RuntimeError:  # already initialised: keep what there is
            pass


_made: dict[tuple, Cluster] = {}


def make_cluster(kind: str, devices: str = "", timeout: float = 60.0) -> Cluster:
    """The Cluster for `--distribute kind --devices devices` (made once per process: TensorFlow allows one
    multi-worker strategy per process, created before other ops)."""
    kind = resolve_kind(kind)
    if kind not in DISTRIBUTES:
        raise ConfigError(f"unknown --distribute '{kind}' (choose from {', '.join(DISTRIBUTES)})")
    key = (kind, devices)
    if key not in _made:
        _made[key] = _build(kind, parse_devices(devices), timeout)
    return _made[key]


def _build(kind: str, devices: list[str], timeout: float) -> Cluster:
    if kind == "none":
        if len(devices) > 1:
            raise ConfigError(f"--devices names {len(devices)} devices; use --distribute mirrored to train on them")
        strategy = tf.distribute.OneDeviceStrategy(devices[0]) if devices else tf.distribute.get_strategy()
        return Cluster(strategy, "none", 1)
    if kind == "mirrored":
        known = {d.name.lower().replace("/device:", "/").replace("/job:localhost/replica:0/task:0", "")
                 for d in tf.config.list_logical_devices()}
        missing = [d for d in devices if d.lower() not in known]
        if missing:
            raise ConfigError(f"--devices: no device {', '.join(missing)} here (have {', '.join(sorted(known))})")
        strategy = tf.distribute.MirroredStrategy(devices or None)
        return Cluster(strategy, "mirrored", strategy.num_replicas_in_sync)
    config = _tf_config()
    if not config.get("cluster"):
        raise ConfigError("--distribute multi-worker needs TF_CONFIG (see the README: Slurm and Kubernetes)")
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    task = config.get("task", {})
    workers = len(config["cluster"].get("worker", [])) + len(config["cluster"].get("chief", []))
    index = int(task.get("index", 0)) + (1 if task.get("type") == "worker" and "chief" in config["cluster"] else 0)
    watch = PeerWatch(peers_of(config)).start()
    return Cluster(strategy, "multi-worker", strategy.num_replicas_in_sync, index, workers, watch)


@contextlib.contextmanager
def variable_scope(cluster: Cluster) -> Iterator[None]:
    """`cluster.strategy.scope()`, with every replica's copy of a variable created in a buffer of its own.

    MirroredStrategy creates the copies on devices 1, 2, ... from `identity(primary.value())`: on logical CPU
    devices (one host memory) that is the primary's own buffer, so the copies start out sharing it. The first
    step's row-sparse gather or scatter on each copy then finds the buffer shared and copies it (TensorFlow's
    copy-on-write), both replicas at once, so that step peaked at one [V, D] matrix more than the replicas'
    copies (measured at V = 200k and 400k, D = 512). A creator entered outside the strategy's scope is called
    once per copy (the mirrored creator's `next_creator`); it gives each copy after the first a deep copy of its
    initial value, with the same values (a GPU copy already has its own buffer: left as it is)."""
    with tf.variable_creator_scope(_own_buffer), cluster.strategy.scope():
        yield


def _own_buffer(next_creator, **kwargs):
    initial = kwargs.get("initial_value")
    if "/replica_" in str(kwargs.get("name") or "") and callable(initial):  # the mirrored creator's copy names
        kwargs["initial_value"] = lambda: _unshared(initial())
    return next_creator(**kwargs)


def own_buffers(strategy, variables) -> None:
    """After a checkpoint restore: give every copy after the first of each mirrored variable a buffer of its own
    again (the restore assigns one tensor to all the copies, which then share it, as at creation)."""
    for variable in variables:
        inner = getattr(variable, "value", None)  # a Keras variable's tf.Variable (a tf.Variable's is a method)
        variable = inner if isinstance(inner, tf.distribute.DistributedValues) else variable
        if isinstance(variable, tf.distribute.DistributedValues):
            for copy in strategy.experimental_local_results(variable)[1:]:
                copy.assign(_unshared(copy.read_value()))


def _unshared(value):
    value = tf.convert_to_tensor(value)
    return tf.raw_ops.DeepCopy(x=value) if "CPU" in value.device.upper() else value


def _barrier(strategy):
    @tf.function
    def barrier():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.ones([])))
    return barrier


def _tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except ValueError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {e}") from None


def check_batch(batch_size: int, padding: str, replicas: int) -> None:
    if padding == "pack" and batch_size % replicas:
        raise ConfigError(f"--batch-size {batch_size} must be a multiple of the {replicas} replicas in pack mode "
                          "(each replica carries the state of its own rows)")


def pad_rows(arrays: dict[str, np.ndarray], replicas: int) -> dict[str, np.ndarray]:
    """A pad-mode batch with filler rows added up to a multiple of `replicas`: no loss (mask 0), and an LSTM mask
    of one step (`seq_mask`) so that no row is fully masked (cuDNN's rule)."""
    rows = len(arrays["mask"])
    extra = -rows % replicas
    seq_mask = arrays["mask"] > 0
    if extra:
        width = arrays["mask"].shape[1]
        arrays = {k: np.concatenate([v, np.zeros((extra, width), v.dtype)]) for k, v in arrays.items()}
        seq_mask = np.concatenate([seq_mask, np.arange(width)[None, :].repeat(extra, 0) == 0])
    return {**arrays, "seq_mask": seq_mask}


def replica_feeds(cluster: Cluster, arrays: dict[str, np.ndarray], state: Optional[list], step: int,
                  epoch: float, stop: bool = False) -> Any:
    """The per-replica inputs of one step: each replica's rows of the global batch (and of the carried state), its
    row offset, the global row and real-token counts, and whether this worker was asked to stop."""
    if cluster.replicas > 1 and state is None:
        arrays = pad_rows(arrays, cluster.replicas)
    rows = len(arrays["mask"])
    per = rows // cluster.replicas
    shared = {"step": tf.constant(step, tf.int64), "epoch": tf.constant(epoch, tf.float32),
              "global_rows": tf.constant(rows, tf.int32),
              "global_tokens": tf.constant(float(arrays["mask"].sum()), tf.float32),
              "stop": tf.constant(1.0 if stop else 0.0)}

    def value(ctx):
        r = ctx.replica_id_in_sync_group
        part = {k: tf.constant(v[r * per:(r + 1) * per]) for k, v in arrays.items()}
        part.update(shared, row_offset=tf.constant(r * per, tf.int32))
        if state is not None:
            part["state"] = [(h[r * per:(r + 1) * per], c[r * per:(r + 1) * per]) for h, c in state]
        return part

    return cluster.strategy.experimental_distribute_values_from_function(value)


def make_step(cluster: Cluster, train_step, additive: set[str]):
    """The distributed step: a tf.function from per-replica feeds to one set of host-ready outputs (additive
    values summed over replicas, the rest, the gathered carried state included, from the first replica)."""
    strategy = cluster.strategy

    def replica_step(feed):
        ctx = tf.distribute.get_replica_context()
        out = train_step(feed)
        out["stop"] = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(feed["stop"]))  # > 0: signalled
        if "state" in out and ctx.num_replicas_in_sync > 1:  # every replica's rows, in row order
            out["state"] = [tuple(ctx.all_gather(t, axis=0) for t in hc) for hc in out["state"]]
        return out

    @tf.function(reduce_retracing=True)
    def step(feeds):
        out = strategy.run(replica_step, args=(feeds,))
        result = {}
        for key, value in out.items():
            if key in additive:
                result[key] = strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            else:
                result[key] = strategy.experimental_local_results(value)[0]
        return result

    return step
