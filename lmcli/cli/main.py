"""Root Typer app: --version, --verbose, the subcommands, and the one error boundary."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Optional

import typer
from typer._click import exceptions as click_exc  # typer vendors click (pinned <0.30)
from typer.core import TyperGroup

from lmcli import __version__
from lmcli.runtime.errors import ConfigError, LmcliError
from lmcli.runtime.tfsetup import import_tensorflow, set_intra_op_threads

_verbose = {"on": False}


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"lmcli: error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


class LmcliGroup(TyperGroup):
    """The one error boundary: every failure becomes one stderr line and a documented exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _hide_envvars(self)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exc.NoArgsIsHelpError as e:
            e.show()
            sys.exit(2)
        except click_exc.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            _fail(f"{e.format_message()}{where}", 2)
        except click_exc.ClickException as e:
            _fail(e.format_message(), e.exit_code)
        except typer.Abort:
            _fail("aborted", 130)
        except LmcliError as e:
            _fail(str(e), e.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as e:  # a bug: one line, the traceback only with --verbose or LMCLI_DEBUG=1
            if _verbose["on"] or os.environ.get("LMCLI_DEBUG"):
                traceback.print_exc()
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            _fail(f"internal error: {type(e).__name__}: {first} (rerun with --verbose for the traceback)", 1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _hide_envvars(group: TyperGroup) -> None:
    """Every option reads LMCLI_<COMMAND>_<OPTION>; each command's help says so once, not on every line."""
    for command in group.commands.values():
        for param in command.params:
            param.show_envvar = False


app = typer.Typer(name="lmcli", cls=LmcliGroup, no_args_is_help=True, add_completion=True,
                  pretty_exceptions_enable=False, help="Train, evaluate, export and sample LSTM language models.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lmcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks of internal errors."),
) -> None:
    """lmcli: prepare -> train -> eval -> generate, with full, sampled or TAPAS softmax losses."""
    _verbose["on"] = verbose


def guarded(fn: Callable) -> Callable:
    """Commands that use TensorFlow import it first, without its start-up chatter on stderr."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if fn.__name__ != "prepare":
            threads = kwargs.get("intra_op_threads") or 0
            if threads < 0:
                raise ConfigError(f"--intra-op-threads must be >= 0, got {threads}")
            import_tensorflow(quiet=not _verbose["on"], setup=lambda: _prepare_runtime(fn.__name__, kwargs))
        return fn(*args, **kwargs)

    return wrapper


def _prepare_runtime(command: str, options: dict) -> None:
    """Before TensorFlow runs an op: its CPU threads (for `train` on several logical CPU devices, 0 divides the
    cores among them), and for `train` its devices."""
    threads = options.get("intra_op_threads") or 0
    if command == "train" and not threads:
        from lmcli.train.distribution import shared_core_threads

        threads = shared_core_threads(options.get("devices") or "")
    set_intra_op_threads(threads)
    if command == "train":
        _prepare_devices(options)


def _prepare_devices(options: dict) -> None:
    """Before TensorFlow runs an op: split the CPU for --devices cpu:0,cpu:1,..., and create a multi-worker strategy
    (TensorFlow refuses one after its runtime has started)."""
    from lmcli.train.distribution import configure_cpu_devices, make_cluster, resolve_kind

    devices = options.get("devices") or ""
    configure_cpu_devices(devices)
    if resolve_kind(options.get("distribute") or "auto") == "multi-worker":
        make_cluster("multi-worker", devices, options.get("worker_timeout") or 300.0)


def _register() -> None:
    from lmcli.cli import eval as eval_cmd
    from lmcli.cli import export, generate, prepare, train

    app.command("prepare")(guarded(prepare.prepare))
    app.command("train")(guarded(train.train))
    app.command("eval")(guarded(eval_cmd.evaluate))
    app.command("generate")(guarded(generate.generate))
    app.command("export")(guarded(export.export))


_register()


def run() -> None:
    """Console-script entry point."""
    sys.exit(app(auto_envvar_prefix="LMCLI"))
