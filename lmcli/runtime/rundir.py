"""A run dir that changes only at the run's first checkpoint.

Until then `train` writes nothing into it: config.json, the tokenizer copy, metrics and (with --restart) the
removal of the old run all wait for `commit`. A failure before it (an error, out of memory, a NaN, Ctrl-C)
leaves the run dir as it was: a directory `train` created is removed, an existing one is untouched (its lock
file aside, which records the last holder; one `train` created is removed).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from lmcli.config import RunConfig
from lmcli.runtime.errors import OutputError
from lmcli.runtime.fileio import describe_os_error
from lmcli.runtime.runlock import LOCK_NAME
from lmcli.train.checkpoints import RunPaths


class PendingRunDir:
    def __init__(self, paths: RunPaths, cfg: RunConfig, tokenizer: Path, restart: bool, owner: bool = True) -> None:
        """`owner`: this process writes the run dir (the chief of a multi-worker run; the others never touch it)."""
        self.paths, self.cfg, self.tokenizer, self.restart, self.owner = paths, cfg, Path(tokenizer), restart, owner
        self.created = not paths.root.exists()
        self.had_lock = (paths.root / LOCK_NAME).exists()
        self.committed = False

    def commit(self, open_log: Callable[[], None], after_clear: Callable[[], None]) -> None:
        """Write the run's files (once): clear the old run (--restart), config.json, the tokenizer, metrics."""
        if self.committed or not self.owner:
            return
        if self.restart:
            self.paths.clear()
            after_clear()
        self.cfg.save(self.paths.config)
        try:
            shutil.copyfile(self.tokenizer, self.paths.tokenizer)
        except OSError as e:
            raise OutputError(describe_os_error(f"cannot write {self.paths.tokenizer}", e)) from None
        open_log()
        self.committed = True

    def rollback(self) -> None:
        """After a failure: undo what starting did, unless a checkpoint was written."""
        if self.committed or not self.owner:
            return
        if self.created:
            shutil.rmtree(self.paths.root, ignore_errors=True)
        elif not self.had_lock:
            (self.paths.root / LOCK_NAME).unlink(missing_ok=True)
