"""A strategy declares everything about itself: registered in one line, it is validated, resolved, planned for and
trained with no other change. The toy below (label smoothing) is the README's "Adding a strategy" example, word
for word; it is registered only for the tests that use it (monkeypatch on the registry's dict)."""

from __future__ import annotations

# lmcli/losses/smoothed.py
import tensorflow as tf

from lmcli.config import LossConfig
from lmcli.losses.context import LossInputs, StrategyContext, StrategyOutput
from lmcli.losses.strategy import OutputMemory, StepSize, Strategy, every_class
from lmcli.runtime.errors import ConfigError

EPSILON = 0.1  # probability mass spread evenly over the V classes


def strategy(inputs: LossInputs, config: LossConfig, ctx: StrategyContext) -> StrategyOutput:
    """Full softmax against the target (1 - EPSILON) * one_hot(label) + EPSILON / V; 0 where mask is 0."""
    logits = tf.matmul(inputs.hidden, inputs.weights, transpose_b=True) + inputs.bias  # (N, V)
    log_p = tf.nn.log_softmax(logits)  # (N, V)
    nll = -tf.gather(log_p, inputs.labels, batch_dims=1)  # (N,)
    losses = (1 - EPSILON) * nll - EPSILON * tf.reduce_mean(log_p, axis=-1)  # (N,)
    return StrategyOutput(losses * inputs.mask, logits)


def check(config: LossConfig, vocab_size: int) -> None:
    if vocab_size < 2:
        raise ConfigError("--loss smoothed needs at least 2 classes to spread its mass over")


def memory(config: LossConfig, size: StepSize) -> OutputMemory:
    """The full softmax's, plus the (N, V) log-probabilities."""
    full = every_class(config, size)
    return OutputMemory(full.bytes + 4 * size.tokens * size.vocab_size, full.classes)


# Adagrad only to show that the choice is the strategy's (the full softmax's is Adam).
STRATEGY = Strategy(strategy, draws_candidates=False, check=check, optimizer="adagrad", sampler="unigram",
                    memory=memory)

# lmcli/config/sections.py, in STRATEGY_MODULES (the registry):
#     "smoothed": "lmcli.losses.smoothed",
# ---- end of the README's example ---------------------------------------------------------------------------------

import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lmcli import losses  # noqa: E402
from lmcli.config import LOSSES, ModelConfig, RunConfig  # noqa: E402
from lmcli.train import memory as memory_plan  # noqa: E402

V = 50


@pytest.fixture
def smoothed(monkeypatch):
    monkeypatch.setitem(losses.STRATEGIES, "smoothed", STRATEGY)


def run_config(name: str, vocab_size: int = V) -> RunConfig:
    return RunConfig(model=ModelConfig(vocab_size=vocab_size, embedding_dim=8, hidden=16), loss=LossConfig(name=name))


def test_config_validation_resolution_and_the_memory_plan_ask_the_registry(smoothed):
    cfg = run_config("smoothed").resolved()
    assert (cfg.train.optimizer, cfg.loss.sampler) == ("adagrad", "unigram")  # what 'auto' means, from its entry
    cfg.validate()
    with pytest.raises(ConfigError, match="^--loss smoothed needs at least 2 classes"):
        run_config("smoothed", vocab_size=1).validate()
    with pytest.raises(ConfigError, match="unknown sampler 'nosuch'"):  # the options' choices still come first
        dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, sampler="nosuch")).validate()
    full = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, name="full"))
    tokens = cfg.data.batch_size * cfg.data.seq_len
    extra = memory_plan.estimate(cfg).training_step - memory_plan.estimate(full).training_step
    assert extra == 4 * tokens * V  # its (N, V) log-probabilities


def test_its_function_is_the_one_the_registry_runs(smoothed):
    rng = np.random.default_rng(0)
    w, b, h = (rng.normal(size=s).astype(np.float32) for s in ((V, 4), (V,), (3, 4)))
    y, mask = np.array([1, 7, 49]), np.array([1, 1, 0], np.float32)
    got = losses.per_token(LossConfig(name="smoothed"), w, b, h, y, mask).numpy()
    logits = h @ w.T + b
    log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    want = ((1 - EPSILON) * -log_p[np.arange(3), y] - EPSILON * log_p.mean(-1)) * mask
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_run_trains_with_it_and_saves_its_choices(smoothed, tiny_data_dir, tmp_path):
    from lmcli.runtime.progress import Progress
    from lmcli.train.run import train

    result = train(tiny_data_dir, tmp_path / "run", {"model": {"embedding_dim": 8, "hidden": 16},
                                                    "data": {"batch_size": 4, "seq_len": 6},
                                                    "loss": {"name": "smoothed"}, "train": {"max_steps": 2}},
                   progress=Progress())
    assert result["steps"] == 2
    saved = RunConfig.load(tmp_path / "run" / "config.json")
    assert (saved.loss.name, saved.train.optimizer, saved.loss.sampler) == ("smoothed", "adagrad", "unigram")


def test_unknown_loss_names_list_the_registered_ones(smoothed):
    with pytest.raises(ConfigError, match=r"^unknown loss 'nosuch' \(choose from full, sampled, tapas, smoothed\)$"):
        run_config("nosuch").validate()


def test_unknown_loss_names_are_refused_after_the_model_checks():
    with pytest.raises(ConfigError, match=r"^unknown loss 'nosuch' \(choose from full, sampled, tapas\)$"):
        run_config("nosuch").resolved().validate()
    with pytest.raises(ConfigError, match="^--hidden must be positive"):
        dataclasses.replace(run_config("nosuch"), model=ModelConfig(vocab_size=V, hidden=0)).resolved().validate()


def test_help_lists_the_registered_names():
    """`lmcli.config.LOSSES` is what --help lists without importing TensorFlow: the registry's names."""
    assert LOSSES == tuple(losses.STRATEGIES)


def test_the_readme_example_is_this_files_toy():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("**Adding a strategy**", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert example in Path(__file__).read_text()
