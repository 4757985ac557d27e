"""Runs `lmcli ARGS...` in this process with a fault injected at a checkpoint or a step.

    python tests/kill_driver.py MODE STEP -- lmcli-args...

MODE: before-save | mid-save (files written, index not updated, data torn) | torn-indexed (index updated,
data file torn) | after-save | sigterm | sigint (the signal arrives during step STEP). Used by test_jobs.py
only; not part of lmcli.
"""

import os
import signal
import sys


def kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def tear(prefix: str) -> None:
    data = f"{prefix}.data-00000-of-00001"
    size = os.path.getsize(data)
    with open(data, "r+b") as f:
        f.truncate(size // 2)


def main() -> None:
    mode, at = sys.argv[1], int(sys.argv[2])
    args = sys.argv[sys.argv.index("--") + 1:]
    import tensorflow as tf

    import lmcli.train.run as training

    original = tf.train.CheckpointManager.save

    def save(self, checkpoint_number=None, **kw):
        if checkpoint_number == at and self.directory.endswith("checkpoints"):
            if mode == "before-save":
                kill()
            if mode == "mid-save":
                prefix = f"{self._prefix}-{checkpoint_number}"
                self._checkpoint.write(prefix)
                tear(prefix)
                kill()
            if mode in ("torn-indexed", "after-save"):
                path = original(self, checkpoint_number=checkpoint_number, **kw)
                if mode == "torn-indexed":
                    tear(path)
                kill()
        return original(self, checkpoint_number=checkpoint_number, **kw)

    tf.train.CheckpointManager.save = save
    init = training.Trainer.__init__

    def patched_init(self, *a, **kw):
        init(self, *a, **kw)
        step_fn = self.train_fn

        def wrapped(feed):
            if mode in ("sigterm", "sigint") and int(feed["step"]) == at:
                os.kill(os.getpid(), signal.SIGTERM if mode == "sigterm" else signal.SIGINT)
            return step_fn(feed)

        self.train_fn = wrapped

    training.Trainer.__init__ = patched_init
    from lmcli.cli.main import app

    app(args, prog_name="lmcli")


if __name__ == "__main__":
    main()
