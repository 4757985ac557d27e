"""`lmcli export`: a checkpoint -> a self-contained SavedModel (needs only TensorFlow to load)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmcli.cli.options import CheckpointOpt, ConfigOpt, JsonOpt, QuietOpt, RunDirArg, emit_json, print_table


def export(
    run_dir: RunDirArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Export dir to write.", show_default=False)],
    checkpoint: CheckpointOpt = "best",
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Reload the export in a keras-free "
                                         "process and compare log-probs with the checkpoint (1e-5).")] = True,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing export dir.")] = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export signatures log_probs, score, init_state, step, serving_default, plus the tokenizer."""
    from lmcli.serve.exporting import export as run_export

    result = run_export(run_dir, out, checkpoint=checkpoint, verify=verify, force=force)
    if json_out:
        emit_json(result)
    elif not quiet:
        print_table(f"exported {out}", list(result.items()))
