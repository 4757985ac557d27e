"""Options to config, one way for every command: each config field has exactly one option and each option exactly
one field (the few internal fields and the aliases listed), checked against the dataclasses; and what a command
hands the library is exactly the options that were given."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
from typer.testing import CliRunner

from lmcli.cli import binding, generate, prepare, train
from lmcli.cli import eval as eval_cmd
from lmcli.cli.main import app
from lmcli.config import SECTIONS, EvalConfig, GenerateConfig, PrepareConfig

# command -> (its function, its table, the config sections it fills, the fields no option sets, the aliases)
COMMANDS = {
    "train": (train.train, train.TRAIN, SECTIONS, {("model", "vocab_size")}, {"loss": ("loss", "name")}),
    "prepare": (prepare.prepare, prepare.PREPARE, {"prepare": PrepareConfig},
                {("prepare", "max_sentences"), ("prepare", "shard_tokens")}, {}),
    "eval": (eval_cmd.evaluate, eval_cmd.EVAL, {"eval": EvalConfig}, set(), {}),
    "generate": (generate.generate, generate.GENERATE, {"generate": GenerateConfig}, set(), {}),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_has_one_option_and_every_option_one_field(command):
    fn, table, sections, internal, aliases = COMMANDS[command]
    fields = {(s, f.name) for s, cls in sections.items() for f in dataclasses.fields(cls)}
    assert sorted(table.options.values()) == sorted(fields - internal)  # each field once, the internal ones never
    for option, target in table.options.items():
        assert target == aliases.get(option, (target[0], option)), option  # its own name, or a listed alias
    parameters = set(inspect.signature(fn).parameters)
    assert set(table.options) | table.extras == parameters and not set(table.options) & table.extras


@dataclasses.dataclass(frozen=True)
class Toy:
    size: int = 1
    name: str = "a"


def toy(ctx: typer.Context, size: Annotated[int, typer.Option()] = 1, name: Annotated[str, typer.Option()] = "a",
        out: Annotated[Optional[Path], typer.Option()] = None) -> None:
    """A command with two options for Toy's fields and one extra."""


def test_bind_refuses_a_field_without_option_an_option_without_field_and_a_clash():
    ok = binding.bind(toy, {"toy": Toy}, extras=("ctx", "out"))
    assert ok.options == {"size": ("toy", "size"), "name": ("toy", "name")}

    @dataclasses.dataclass(frozen=True)
    class Grown(Toy):
        depth: int = 2  # a new field, no option yet

    with pytest.raises(TypeError, match="field toy.depth has no option depth"):
        binding.bind(toy, {"toy": Grown}, extras=("ctx", "out"))
    with pytest.raises(TypeError, match="parameter out sets no field and is not an extra"):
        binding.bind(toy, {"toy": Toy}, extras=("ctx",))

    @dataclasses.dataclass(frozen=True)
    class Clash(Toy):
        out: str = ""  # a new field named like an unrelated parameter: it must not take that value silently

    with pytest.raises(TypeError, match="option out is also listed as an extra"):
        binding.bind(toy, {"toy": Clash}, extras=("ctx", "out"))
    with pytest.raises(TypeError, match="toy.nosuch in internal is not a field"):
        binding.bind(toy, {"toy": Toy}, internal=(("toy", "nosuch"),), extras=("ctx", "out"))


def test_overrides_holds_only_the_given_options_and_paths_as_text():
    table = binding.bind(toy, {"toy": Toy}, aliases={("toy", "name"): "out"}, extras=("ctx", "name"))
    assert binding.overrides(table, {"out": Path("x/y"), "ctx": None}) == {"toy": {"name": "x/y"}}
    assert binding.overrides(table, {}) == {"toy": {}}


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env, auto_envvar_prefix="LMCLI")  # as `run()` does


def test_train_hands_over_exactly_the_options_given(monkeypatch, tmp_path):
    """Command line, environment and --config all count as given; the rest is left to the run's defaults or saved
    values."""
    import lmcli.train.run

    seen = {}
    monkeypatch.setattr(lmcli.train.run, "train",
                        lambda data_dir, run_dir, overrides, **kw: seen.update(overrides) or {"worker": 0})
    toml = tmp_path / "opts.toml"
    toml.write_text("[train]\nhidden = 64\n")
    r = invoke("train", tmp_path, "--run-dir", tmp_path / "run", "--loss", "tapas", "--aux-loss", "ar",
               "--no-tie-embeddings", "--config", toml, "--quiet", env={"LMCLI_TRAIN_SEED": "7"})
    assert r.exit_code == 0, r.output
    assert seen == {"model": {"hidden": 64, "tie_embeddings": False}, "data": {}, "loss": {"name": "tapas"},
                    "terms": {"aux_loss": ["ar"]}, "train": {"seed": 7}}


def test_eval_and_prepare_build_their_configs_from_the_options_given(monkeypatch, tmp_path):
    import lmcli.data.prepare
    import lmcli.serve.evaluation

    seen = {}
    monkeypatch.setattr(lmcli.serve.evaluation, "evaluate", lambda model, **kw: seen.update(kw) or {
        "source": "s", "model_kind": "run", "checkpoint_step": 1})
    assert invoke("eval", tmp_path, "--split", "valid", "--batch-size", 3, "--json").exit_code == 0
    assert {k: seen[k] for k in ("split", "batch_size", "encoding_errors", "whole_lines", "text")} == {
        "split": "valid", "batch_size": 3, "encoding_errors": "strict", "whole_lines": False, "text": None}

    monkeypatch.setattr(lmcli.data.prepare, "prepare", lambda inputs, out, cfg, *a, **kw: seen.update(cfg=cfg) or {})
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b\n")
    r = invoke("prepare", corpus, "--out", tmp_path / "dd", "--vocab-size", "max", "--tokenizer", tmp_path / "t.model",
               "--json")
    assert r.exit_code == 0, r.output
    assert seen["cfg"] == PrepareConfig(vocab_size="max", tokenizer=str(tmp_path / "t.model"))
