"""Errors raised by library code. The CLI prints one line and exits with `exit_code`.

Exit codes (documented in the README):
    0   success
    1   internal error (a bug in lmcli: please report it, rerun with --verbose for the traceback)
    2   usage error (unknown option, invalid choice; reported by the CLI parser)
    3   input error: missing, unreadable, empty, binary or non-UTF-8 input
    4   configuration error: an invalid or inconsistent option value
    5   run-dir or data-dir error: missing/corrupt checkpoint, manifest or tokenizer mismatch
    6   output error: an output exists (without --force), or writing it failed (disk full)
    7   numerical error: the loss became NaN or Inf
    8   run dir locked by another live process
    9   out of memory: the configuration does not fit (found before allocating), or an allocation failed
    10  another worker of a multi-worker run failed or could not be reached
    130 interrupted by SIGINT (a checkpoint was written)
    143 terminated by SIGTERM (a checkpoint was written)
"""

from __future__ import annotations


class LmcliError(Exception):
    """Base class of every error a user can cause. Carries the process exit code."""

    exit_code = 1


class InputError(LmcliError):
    """A missing, unreadable, empty or malformed input file."""

    exit_code = 3


class ConfigError(LmcliError):
    """An option value that is out of range or inconsistent with another."""

    exit_code = 4


class RunDirError(LmcliError):
    """A run dir or data dir that is missing pieces, corrupt, or incompatible."""

    exit_code = 5


class OutputError(LmcliError):
    """An output that already exists, or that could not be written."""

    exit_code = 6


class NumericalError(LmcliError):
    """Training produced a non-finite loss."""

    exit_code = 7


class LockError(LmcliError):
    """Another live process holds the run dir."""

    exit_code = 8


class MemoryLimitError(LmcliError):
    """The run does not fit in memory (estimated before allocating, or an allocation failed)."""

    exit_code = 9


class PeerError(LmcliError):
    """Another worker of a multi-worker run stopped or cannot be reached."""

    exit_code = 10


class Interrupted(LmcliError):
    """Training stopped on a signal after writing a checkpoint."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
