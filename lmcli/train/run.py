"""`train`: resolve a run's config, plan its memory, pick its tf.distribute strategy, lock its run dir and run
the Trainer (`lmcli.train.loop`); a failure before the first checkpoint leaves the run dir as it was."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import tensorflow as tf

from lmcli import __version__
from lmcli.config import RunConfig
from lmcli.data.shards import DataDir, open_data_dir
from lmcli.runtime.errors import ConfigError, LmcliError, PeerError, RunDirError
from lmcli.runtime.progress import Progress
from lmcli.runtime.rundir import PendingRunDir
from lmcli.runtime.runlock import RunLock
from lmcli.runtime.signals import StopRequests
from lmcli.train import memory
from lmcli.train.checkpoints import RunPaths
from lmcli.train.distribution import check_batch, make_cluster
from lmcli.train.loop import Trainer

FROZEN_SECTIONS = ("model", "data", "loss", "terms")  # what a resumed run may not change


def resolve_config(data: DataDir, paths: RunPaths, overrides: dict[str, dict[str, Any]],
                   restart: bool) -> tuple[RunConfig, bool]:
    """The run's config: saved config (when resuming) or defaults, with the given options on top; and whether its
    candidate sets were left to `auto` (a new run), which the memory plan may still turn into one shared set."""
    saved = RunConfig.load(paths.config) if paths.exists() and not restart else None
    cfg = (saved or RunConfig()).merged(overrides)
    auto_sets = cfg.loss.candidate_sets == "auto"
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, vocab_size=data.vocab_size),
        data_dir=str(Path(data.path).resolve()), tokenizer_sha256=data.tokenizer_sha256,
        lmcli_version=__version__).resolved()
    if saved is not None:
        if saved.tokenizer_sha256 != data.tokenizer_sha256:
            raise RunDirError(f"{data.path} has a different tokenizer than the one {paths.root} was "
                              "trained with; use the original data dir, or --restart")
        diffs = saved.differences(cfg, FROZEN_SECTIONS)
        diffs += [d for d in saved.differences(cfg, ("train",)) if d.split(":")[0] in
                  ("train.optimizer", "train.seed", "train.precision")]
        if diffs:
            raise ConfigError(f"{paths.root} was trained with other settings ({'; '.join(diffs)}); "
                              "use --restart to start over, or another --run-dir")
    cfg.validate()
    return cfg, auto_sets


def affordable(cfg: RunConfig, auto_sets: bool, plan_fn) -> tuple[RunConfig, memory.MemoryPlan, str]:
    """(config, its memory plan, a note): per-row candidate sets chosen by `auto` become one shared set when they do
    not fit and the shared set does. `plan_fn(cfg)` is the plan of a config on the run's devices."""
    plan = plan_fn(cfg)
    if not (auto_sets and cfg.loss.candidate_sets == "row" and not memory.fits(plan)):
        return cfg, plan, ""
    shared = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, candidate_sets="batch"))
    shared_plan = plan_fn(shared)
    if not memory.fits(shared_plan):
        return cfg, plan, ""
    return shared, shared_plan, "per-row candidate sets do not fit in memory: one set shared by the batch"


def train(data_dir: Path, run_dir: Path, overrides: dict[str, dict[str, Any]], restart: bool = False,
          progress: Progress = Progress()) -> dict:
    """Train (or resume) the run in `run_dir` on `data_dir`. Returns a JSON-ready summary.

    The memory the run needs is estimated and checked before anything is allocated. The chief holds the run
    dir's lock throughout; SIGTERM/SIGINT stop after the current step with a checkpoint (every worker at the
    same step). A failure before the first checkpoint leaves the run dir as it was.
    """
    data = open_data_dir(data_dir)
    paths = RunPaths(Path(run_dir))
    _check_run_dir(paths)
    cfg, auto_sets = resolve_config(data, paths, overrides, restart)
    cluster = make_cluster(cfg.train.distribute, cfg.train.devices, cfg.train.worker_timeout)
    check_batch(cfg.data.batch_size, cfg.data.padding, cluster.replicas)
    cfg, plan, note = affordable(cfg, auto_sets, lambda c: memory.plan_for(c, cluster.replicas, cluster.devices))
    if note:
        progress.log(note)
    progress.log(f"memory: {plan.describe()}")
    memory.check(plan)
    rundir = PendingRunDir(paths, cfg, data.tokenizer_path, restart, owner=cluster.is_chief)
    trainer = None
    try:
        with (RunLock(paths.root) if cluster.is_chief else contextlib.nullcontext()), StopRequests() as stops:
            trainer = Trainer(cfg, data, paths, progress, rundir, cluster)
            if not restart:
                trainer.restore()  # writes nothing: an unusable run dir is left as it was
            result = trainer.run(stops)
            cluster.finish()
    except tf.errors.ResourceExhaustedError:
        rundir.rollback()
        where = f"at step {trainer.step + 1}" if trainer is not None else "while building the model"
        raise memory.out_of_memory(plan, where) from None
    except PEER_FAILURES as e:
        rundir.rollback()
        if cluster.workers == 1:
            raise
        raise peer_failure(e, trainer) from None
    except LmcliError:  # a stop every worker made at the same step (a signal, the NaN guard): leave together
        rundir.rollback()
        _leave(cluster)
        raise
    except BaseException:
        rundir.rollback()
        raise
    finally:
        if trainer is not None:
            trainer.close()
    return {**result, "memory": plan.as_dict()}


def _leave(cluster) -> None:
    try:
        cluster.finish()
    except tf.errors.OpError:  # another worker is gone: the error already raised says more
        pass


PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                 tf.errors.CancelledError, tf.errors.InternalError)


def peer_failure(e: Exception, trainer) -> PeerError:
    saved = f"the last checkpoint is step {trainer.last_saved}" if trainer and trainer.last_saved >= 0 else \
        "no checkpoint was written"
    return PeerError(f"another worker stopped or cannot be reached ({type(e).__name__} in a collective); {saved}: "
                     "rerun every worker to resume")


def _check_run_dir(paths: RunPaths) -> None:
    """Refuse a --run-dir that is a file, or a directory without config.json holding files train would replace."""
    root = paths.root
    if root.exists() and not root.is_dir():
        raise RunDirError(f"--run-dir {root} exists and is not a directory")
    if root.is_dir() and not paths.exists():
        ours = [p.name for p in (paths.tokenizer, paths.metrics, paths.checkpoints, paths.best, paths.tensorboard)
                if p.exists()]
        if ours:
            raise RunDirError(f"--run-dir {root} is not an lmcli run dir (no config.json) but has "
                              f"{', '.join(ours)}; refusing to write into it, give a new or empty directory")
