"""`lmcli eval`: full-softmax metrics of a run or an export, on a split or a text file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmcli.cli.binding import bind, given, overrides
from lmcli.cli.options import (
    CheckpointOpt,
    ConfigOpt,
    JsonOpt,
    ModelArg,
    QuietOpt,
    ThreadsOpt,
    choices,
    emit_json,
    print_table,
    progress_for,
)
from lmcli.config import ENCODING_ERRORS, EvalConfig
from lmcli.data.layout import SPLITS

E = EvalConfig()


def evaluate(
    ctx: typer.Context,
    model: ModelArg,
    split: Annotated[str, typer.Option(help="Split of the run's data dir.", **choices(SPLITS))] = E.split,
    text: Annotated[Optional[Path], typer.Option(help="Evaluate on this text file instead of a split.",
                                                 show_default=False)] = None,
    per_line: Annotated[Optional[Path], typer.Option(help="Write per-line loglik/tokens/perplexity as JSONL "
                                                     "(each line scored alone, from a fresh state).",
                                                     show_default=False)] = None,
    token_logprobs: Annotated[bool, typer.Option("--token-logprobs", help="With --per-line: add each "
                                                 "line's pieces and log-probs.")] = E.token_logprobs,
    whole_lines: Annotated[bool, typer.Option("--whole-lines", help="Score each line whole, alone, from a "
                                              "fresh state (default: the run's own layout, as training's "
                                              "validation scores it: pack windows, or pad pieces of at most "
                                              "--max-len).")] = E.whole_lines,
    checkpoint: CheckpointOpt = "best",
    batch_size: Annotated[Optional[int], typer.Option(help="Rows per batch \\[default: the run's; in pack mode "
                                                      "another value cuts the stream into other rows].",
                                                      show_default=False)] = None,
    encoding_errors: Annotated[str, typer.Option(help="--text: invalid UTF-8 stops, or becomes U+FFFD.",
                                                 **choices(ENCODING_ERRORS))] = E.encoding_errors,
    config: ConfigOpt = None,
    intra_op_threads: ThreadsOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Tokens, NLL (nats), perplexity, bits per byte and top-1/top-5 accuracy, always with the full softmax."""
    from lmcli.serve.evaluation import evaluate as run_eval

    cfg = EvalConfig(**overrides(EVAL, given(ctx))["eval"])
    result = run_eval(model, text=text, checkpoint=checkpoint, per_line=per_line, progress=progress_for(quiet),
                      **dataclasses.asdict(cfg))
    if json_out:
        emit_json(result)
    else:
        print_table(f"eval {result['source']} ({result['model_kind']}, checkpoint step {result['checkpoint_step']})",
                    [(k, result.get(k)) for k in ("tokens", "lines", "bytes", "nll", "perplexity", "bits_per_byte",
                                                  "top1", "top5", "unigram_perplexity", "tokens_per_s", "per_line")
                     if k in result])


# Each option above sets EvalConfig's field of its name; the source, output file and checkpoint are extras.
EVAL = bind(evaluate, {"eval": EvalConfig},
            extras=("ctx", "model", "text", "per_line", "checkpoint",
                    "config", "intra_op_threads", "json_out", "quiet"))
