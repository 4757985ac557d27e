"""Shared option aliases and output helpers for the commands."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lmcli.runtime.errors import ConfigError
from lmcli.runtime.progress import Progress, make_progress


def _load_config(ctx: typer.Context, param, value: Optional[Path]) -> Optional[Path]:
    """--config FILE.toml: option values for this command (the command line wins).

    Keys are option names (dashes or underscores); a [command] table applies to that command only,
    top-level keys to every command that has the option.
    """
    if value is None:
        return value
    import tomllib

    try:
        doc = tomllib.loads(Path(value).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {value}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"--config {value}: {e}") from None
    name = ctx.command.name
    if name in doc and not isinstance(doc[name], dict):
        raise ConfigError(f"--config {value}: '{name}' must be a table ([{name}]) of option values")
    flat = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    flat.update(doc.get(name, {}) if isinstance(doc.get(name), dict) else {})
    known = {p.name for p in ctx.command.params}
    values = {}
    for key, v in flat.items():
        k = key.replace("-", "_")
        if k not in known or k == "config":
            if name in doc and key in doc[name]:
                raise ConfigError(f"--config {value}: [{name}] has no option '{key}'")
            continue
        values[k] = v
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return value


ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="TOML file of option values (keys = option names; a \\[command] table per command). "
    "The command line wins.", is_eager=True, callback=_load_config, show_default=False)]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout (logs go to stderr).")]
ThreadsOpt = Annotated[int, typer.Option(
    "--intra-op-threads", help="Threads one TensorFlow op may use on the CPU; 0 = TensorFlow's choice (one per core), "
    "or for `train` on several logical CPU devices (--devices cpu:0,cpu:1) the cores divided among them (README).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
RunDirArg = Annotated[Path, typer.Argument(help="A run dir written by `lmcli train`.", show_default=False)]
ModelArg = Annotated[Path, typer.Argument(help="A run dir (`lmcli train`) or an export dir (`lmcli export`).",
                                          show_default=False)]
CheckpointOpt = Annotated[str, typer.Option("--checkpoint", help="Run dirs: best | latest | a step number.")]


def choices(names: tuple[str, ...]) -> dict:
    """typer.Option arguments that show `names` as the option's choices and complete them in the shell.

    The value stays a plain string, checked by the config, so a name outside the list is a configuration
    error (exit 4) with the list in the message, wherever it came from (command line, --config, environment).
    """
    def complete(ctx, param, incomplete: str) -> list[str]:
        return [n for n in names if n.startswith(incomplete)]

    return {"metavar": "[" + "|".join(names) + "]", "shell_complete": complete}


def progress_for(quiet: bool) -> Progress:
    return make_progress(quiet=quiet)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def emit_json(result: dict) -> None:
    """The one JSON object a command prints with --json (non-finite numbers become null)."""
    sys.stdout.write(json.dumps(_clean(result), sort_keys=True) + "\n")
    sys.stdout.flush()


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    """A two-column rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for name, value in rows:
        if isinstance(value, float):
            value = f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"
        table.add_row(name, "-" if value is None else str(value))
    Console().print(table)
