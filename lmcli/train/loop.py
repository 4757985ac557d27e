"""The training loop: epochs, batches and steps, with checkpoints, validation, metrics, the learning-rate
schedule, signals and the NaN guard, on one device or under a tf.distribute strategy (`lmcli.train.distribution`).

The loop is our own (not `fit`) so that a run resumes at the exact batch of the exact epoch, with the carried
LSTM state, and checkpoints every `checkpoint_every` steps as well as at each epoch end.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

from lmcli.config import RunConfig
from lmcli.data.pipeline import make_batches
from lmcli.data.prefetch import Prefetch
from lmcli.data.shards import DataDir
from lmcli.model.backend import KerasBackend
from lmcli.model.kernel import lstm_kernel
from lmcli.runtime.errors import InputError, Interrupted, NumericalError, RunDirError
from lmcli.runtime.progress import Progress
from lmcli.runtime.rundir import PendingRunDir
from lmcli.runtime.runlog import MetricsLog, Pending, Window
from lmcli.runtime.signals import StopRequests
from lmcli.runtime.tfsetup import intra_op_threads
from lmcli.train.checkpoints import RunPaths, TrainingState, managers, save_checkpoint, short_error
from lmcli.train.distribution import Cluster, own_buffers, replica_feeds
from lmcli.train.nan_causes import non_finite_message
from lmcli.train.schedules import learning_rate, plateau_decays
from lmcli.train.step import build_training_step
from lmcli.train.validation import score_split


class Trainer:
    """The loop over (epoch, batch) with checkpoints, validation, metrics, the LR schedule, signals and the NaN
    guard. `run` walks the epochs, `_epoch` the batches of one, `_step` runs one step."""

    REFRESH = 20  # steps between device reads when no log point or checkpoint comes sooner

    def __init__(self, cfg: RunConfig, data: DataDir, paths: RunPaths, progress: Progress,
                 rundir: PendingRunDir, cluster: Cluster) -> None:
        self.cfg, self.data, self.paths, self.progress, self.rundir = cfg, data, paths, progress, rundir
        self.cluster = cluster
        # A worker that is not the chief writes its checkpoints into a directory of its own, removed after each
        # save (TensorFlow's multi-worker pattern): every worker saves, the chief's copy is the run's.
        self.write_paths = paths if cluster.is_chief else RunPaths(Path(tempfile.mkdtemp(prefix="lmcli-worker-")))
        self.specials = {"bos_id": data.bos_id, "eos_id": data.eos_id, "pad_id": data.pad_id}
        self.train_split = data.split("train")
        self.valid_split = data.split("valid") if data.has_split("valid") else None
        self.kernel, self.layout = lstm_kernel(cfg.data)
        progress.log(f"LSTM kernel: {self.kernel}")
        layout = make_batches(self.train_split, self.layout, self.specials, cfg.train.seed, 0)
        self.per_epoch, self.carries_state = len(layout), layout.carries_state
        if self.per_epoch == 0:
            raise InputError(f"{data.path}: the train split has no tokens")
        total = cfg.train.epochs * self.per_epoch
        self.total = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
        built = build_training_step(cfg, cluster, data.unigram_counts, self.total, len(self.train_split.ids))
        self.model, self.optimizer, self.train_fn = built.model, built.optimizer, built.run
        with cluster.strategy.scope():
            carry = (cfg.data.batch_size, cfg.model.hidden) if self.carries_state else None
            self.state = TrainingState(self.model, self.optimizer, carry, built.objective.variables())
        self._managers()
        self.scorer = KerasBackend(self.model)
        self.additive = {"loss", "strategy_loss", "grad_norm", *cfg.term_names}
        self.step = 0
        self.last_saved = -1

    def restore(self) -> int:
        """Resume from the newest readable checkpoint (an unreadable one is skipped with a warning).

        Call it before `run`; it writes nothing, so an unusable run dir is left as it was.
        """
        newest, (readable, _) = "", managers(self.state, self.paths, self.cfg.train.keep)  # the chief's
        for prefix in reversed(readable.checkpoints):
            why = _restore(self.state, prefix)
            if why is not None:
                self.progress.log(f"warning: skipping checkpoint {prefix}: cannot read it: {why}")
                newest = newest or f"{Path(prefix).name}: {why}"
                continue
            own_buffers(self.cluster.strategy, [*self.model.weights, *self.optimizer.variables])
            self.step = self.last_saved = int(self.state.step.numpy())
            return self.step
        if readable.checkpoints:
            raise RunDirError(f"no readable checkpoint in {self.paths.checkpoints} ({newest}); "
                              "use --restart to start over")
        return 0

    def _managers(self) -> None:
        self.latest, self.best = managers(self.state, self.write_paths, self.cfg.train.keep)

    def _commit(self) -> None:
        """Before the first checkpoint: the run dir's other files (see lmcli.runtime.rundir); the chief's job."""
        self.rundir.commit(self.log.open, self._managers)

    def _saved(self) -> None:
        if not self.cluster.is_chief:  # a worker's copy is not kept
            for p in (self.write_paths.checkpoints, self.write_paths.best):
                shutil.rmtree(p, ignore_errors=True)
            self._managers()

    def close(self) -> None:
        if not self.cluster.is_chief:
            shutil.rmtree(self.write_paths.root, ignore_errors=True)

    def save(self, epoch: int, batch: int, carry) -> None:
        self._commit()
        s = self.state
        s.step.assign(self.step), s.epoch.assign(epoch), s.batch.assign(batch)
        if self.carries_state:
            s.set_carry(carry)
        save_checkpoint(self.latest, self.step)
        self._saved()
        self.last_saved = self.step

    def validate(self, epoch: int, epoch_end: bool) -> float | None:
        """Full-softmax validation perplexity; updates the best checkpoint and, at an epoch end, the plateau
        schedule's count of epochs without progress."""
        if self.valid_split is None:
            return None
        sums = score_split(self.scorer, self.valid_split, self.layout, self.specials, self.progress, "valid")
        nll = sums["nll_sum"] / max(sums["tokens"], 1.0)
        ppl, best = math.exp(nll), float(self.state.best.numpy())
        self.log.write({"event": "valid", "step": self.step, "epoch": epoch + 1, "perplexity": ppl, "nll": nll})
        if epoch_end:
            self.state.lr_decays.assign(plateau_decays(int(self.state.lr_decays.numpy()), ppl, best))
        if ppl < best:
            self.state.best.assign(ppl)
            self._commit()
            save_checkpoint(self.best, self.step)
            self._saved()
        return ppl

    def run(self, stops: StopRequests) -> dict:
        cfg, t0, start_step = self.cfg, time.monotonic(), self.step
        epoch, first = int(self.state.epoch.numpy()), int(self.state.batch.numpy())
        self.log, self.window, self.pending = MetricsLog(self.write_paths, self.step), Window(), Pending()
        self.tokens_run, self.train_ppl, self.stop_seen = 0.0, float("nan"), False
        if self.step:
            self.progress.log(f"resuming {self.paths.root} at step {self.step} (epoch {epoch + 1}, batch {first})")
        threads = intra_op_threads()
        self.progress.log(f"distribution: {self.cluster.describe()}; intra-op threads: "
                          f"{threads or 'one per core (TensorFlow default)'}")
        valid_ppl, limit = None, cfg.train.max_steps or float("inf")
        while epoch < cfg.train.epochs and self.step < limit:
            if self._epoch(epoch, first, stops, limit):  # the whole epoch: validate, then "next epoch, batch 0"
                valid_ppl = self.validate(epoch, epoch_end=True)
                if valid_ppl is not None:
                    self.progress.log(f"epoch {epoch + 1}: step {self.step}, train ppl {self.train_ppl:.2f}, "
                                      f"valid ppl {valid_ppl:.2f}")
                epoch, first = epoch + 1, 0
                self.save(epoch, 0, self._zero())
            else:
                valid_ppl = self.validate(epoch, epoch_end=False)
        seconds = time.monotonic() - t0
        return {"run_dir": str(self.paths.root), "steps": self.step, "resumed_from_step": start_step,
                "epochs_completed": epoch, "train_perplexity": _finite(self.train_ppl), "valid_perplexity": valid_ppl,
                "best_valid_perplexity": _finite(float(self.state.best.numpy())),
                "tokens_trained": int(self.tokens_run), "seconds": seconds,
                "tokens_per_s": self.tokens_run / seconds if seconds else 0.0, "loss": cfg.loss.name,
                "lstm_kernel": self.kernel, "terms": list(cfg.term_names), "distribute": self.cluster.kind,
                "replicas": self.cluster.replicas, "workers": self.cluster.workers, "worker": self.cluster.worker,
                "intra_op_threads": threads}

    def _zero(self):
        return self.model.zero_state(self.cfg.data.batch_size) if self.carries_state else None

    def _epoch(self, epoch: int, first: int, stops: StopRequests, limit: float) -> bool:
        """Batches `first`.. of `epoch` (until `limit` steps); True when the epoch is complete."""
        cfg = self.cfg
        batches = make_batches(self.train_split, self.layout, self.specials, cfg.train.seed, epoch)
        carry = self.state.get_carry() if (self.carries_state and first) else self._zero()
        self.stops = stops
        k = first
        with self.progress.task(f"epoch {epoch + 1}/{cfg.train.epochs}", total=len(batches), completed=first) as task, \
                Prefetch(batches, first) as ahead:
            for at, batch in ahead:
                if self.step >= limit:
                    break
                carry = self._step(batch, carry, epoch + at / len(batches))
                k = at + 1
                task.update(1)
                if self.step % cfg.train.log_every == 0 or len(self.pending) >= self.REFRESH:
                    self._read(task, epoch)
                stop = self._stop_agreed(stops)
                if (self.step % cfg.train.checkpoint_every == 0 or stop
                        or (self.step >= limit and k < len(batches))):
                    self._read(task, epoch)
                    self.save(epoch, k, carry)
                if stop:
                    raise Interrupted(f"stopped by {stops.name or 'a signal to another worker'} at step "
                                      f"{self.step}; checkpoint written, rerun the same command to resume",
                                      stops.exit_code if stops.requested else 143)
            self._read(task, epoch)
        return k >= len(batches)

    def _step(self, batch, carry, epoch: float):
        """One optimiser step at the scheduled rate; its outputs wait in `pending`. Returns the carried state."""
        rate = learning_rate(self.cfg.train, self.step, epoch, self.total, int(self.state.lr_decays.numpy()))
        self.optimizer.learning_rate = rate
        feeds = replica_feeds(self.cluster, batch.as_dict(), carry if self.carries_state else None, self.step, epoch,
                              self.stops.requested)
        out = self.train_fn(feeds)
        self.step += 1
        self.pending.add(self.step, out, {"lr": rate})
        return out.get("state")

    def _stop_agreed(self, stops: StopRequests) -> bool:
        """Whether to stop after this step: a signal here, or (several workers) to any worker.

        Several workers: each step all-reduces the workers' stop flags; the flag is read with the step's other
        outputs (`_read`, at log points, checkpoints and every `REFRESH` steps, the same steps on every worker),
        not from the device every step, so every worker stops at the first read point after a signal."""
        if self.cluster.workers == 1:
            return stops.requested
        return self.stop_seen

    def _read(self, task, epoch: int) -> None:
        """Read the pending steps: the NaN guard (naming the first bad step), the window, metrics records."""
        for step, values in self.pending.fetch():
            if not math.isfinite(values["loss"]):
                raise NumericalError(non_finite_message(values["loss"], step, epoch + 1, self.last_saved, self.cfg,
                                                        self.total))
            self.stop_seen = self.stop_seen or values.pop("stop", 0.0) > 0
            self.window.add(values, self.additive)
            self.tokens_run += values["tokens"]
            if step % self.cfg.train.log_every == 0:
                self.log.write({"event": "train", "step": step, "epoch": epoch + 1, **self.window.record()})
                self.train_ppl, self.window = self.window.perplexity, Window()
        if self.window.tokens:
            self.train_ppl = self.window.perplexity
            task.update(0, step=self.step, loss=self.window.mean("loss"), ppl=self.train_ppl, tok_s=self.window.rate)


def _restore(state: TrainingState, prefix: str) -> str | None:
    """Restore `prefix` into `state`; returns why it cannot be read, or None once it is restored."""
    try:
        state.checkpoint.restore(prefix).assert_existing_objects_matched()
    except Exception as e:  # noqa: BLE001 - any failure to read a checkpoint means it is unusable
        return short_error(e)
    return None


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None
