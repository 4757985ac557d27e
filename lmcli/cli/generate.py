"""`lmcli generate`: sample continuations of a prompt (or a file of prompts), streaming text as it comes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmcli.cli.binding import bind, given, overrides
from lmcli.cli.options import CheckpointOpt, ConfigOpt, JsonOpt, ModelArg, QuietOpt, ThreadsOpt, emit_json
from lmcli.config import GenerateConfig

G = GenerateConfig()


def generate(
    ctx: typer.Context,
    model: ModelArg,
    prompt: Annotated[Optional[str], typer.Option(help="Text to continue.", show_default=False)] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="File of prompts, one per line; JSONL out, one batch.",
                                                    show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option(help="New tokens per sample at most.")] = G.max_tokens,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 = greedy.")] = G.temperature,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely; 0 = off.")] = G.top_k,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass; 1 = off.")] = G.top_p,
    seed: Annotated[Optional[int], typer.Option(help="Seed; the same seed gives the same text for a prompt.",
                                                show_default=False)] = None,
    num_samples: Annotated[int, typer.Option(help="Samples per prompt.")] = G.num_samples,
    stop: Annotated[Optional[list[str]], typer.Option(help="Stop when this text appears (repeatable); "
                                                      "it is not printed.", show_default=False)] = None,
    checkpoint: CheckpointOpt = "best",
    config: ConfigOpt = None,
    intra_op_threads: ThreadsOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Continue prompts, one LSTM step per token with the state carried; stops at </s>, --stop or --max-tokens."""
    from lmcli.data.corpus import read_lines
    from lmcli.runtime.errors import ConfigError
    from lmcli.serve.generation import check_request
    from lmcli.serve.generation import generate as run_generate
    from lmcli.serve.inference import open_model

    if (prompt is None) == (prompts is None):
        raise ConfigError("give exactly one of --prompt TEXT or --prompts FILE")
    texts = [prompt] if prompt is not None else list(read_lines(str(prompts)))
    if not texts:
        raise ConfigError(f"{prompts} has no prompts")
    cfg = GenerateConfig(**overrides(GENERATE, given(ctx))["generate"])
    check_request(texts, cfg, stop or ())
    backend, tokenizer, info = open_model(model, checkpoint)
    stream = not json_out and not quiet and prompts is None and num_samples == 1
    if stream:
        sys.stdout.write(texts[0])
        sys.stdout.flush()

    def on_text(row: int, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    samples = run_generate(backend, tokenizer, texts, cfg, info.start_id, stop or (), on_text if stream else None)
    if json_out:
        emit_json({"model": str(model), "checkpoint_step": info.checkpoint_step, "samples": samples})
    elif prompts is not None:
        for s in samples:
            sys.stdout.write(json.dumps(s) + "\n")
    elif stream:
        sys.stdout.write("\n")
    else:
        for s in samples:
            sys.stdout.write(s["text"] + "\n")


# Each option above sets GenerateConfig's field of its name.
GENERATE = bind(generate, {"generate": GenerateConfig},
                extras=("ctx", "model", "prompt", "prompts", "stop", "checkpoint",
                        "config", "intra_op_threads", "json_out", "quiet"))
