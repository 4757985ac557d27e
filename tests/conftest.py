"""Small shared test fixtures: a deterministic ASCII corpus and a helper to write text files."""

from __future__ import annotations

import gzip
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

# 56 distinct words: a `word` tokenizer of this corpus has exactly 56 + 4 (specials) = 60 pieces.
WORDS = (
    "the a an and or but if then when while of to in on at by for with from into over under "
    "cat dog bird fish tree house river stone cloud light dark old new small big red blue green "
    "runs sees eats finds makes takes gives holds walks sleeps quickly slowly very never always here"
).split()


@pytest.fixture(scope="session")
def text_lines() -> list[str]:
    """400 lines of 3-12 words from WORDS, single-spaced ASCII (sentencepiece normalisation is a no-op)."""
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(400)]


@pytest.fixture
def write_lines(tmp_path: Path) -> Callable[..., Path]:
    """write_lines(name, lines, gz=False) -> path under tmp_path, one line per entry, '\\n'-terminated."""

    def write(name: str, lines: Sequence[str], gz: bool = False) -> Path:
        path = tmp_path / name
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        path.write_bytes(gzip.compress(data) if gz else data)
        return path

    return write


def _grammar_lines(n: int, seed: int) -> list[str]:
    """Lines of a tiny grammar, det adj? noun verb det noun, over 12 words."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        adj = [rng.choice(["big", "small", "red"])] if rng.random() < 0.5 else []
        lines.append(" ".join(["the", *adj, rng.choice(["cat", "dog", "bird"]), rng.choice(["sees", "eats"]),
                               "a", rng.choice(["fish", "tree"])]))
    return lines


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """A prepared data dir of 300 grammar lines with a 16-piece `word` tokenizer (12 words + 4 specials)."""
    from lmcli.config import PrepareConfig
    from lmcli.data.prepare import prepare
    from lmcli.runtime.progress import Progress

    root = tmp_path_factory.mktemp("tiny_data")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_grammar_lines(300, seed=1)) + "\n")
    out = root / "dd"
    prepare([str(corpus)], out, PrepareConfig(vocab_size=16, model_type="word", valid_fraction=0.1,
                                              test_fraction=0.1, seed=3), Progress())
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_data_dir, tmp_path_factory) -> Callable[..., Path]:
    """tiny_run(padding="pack", **model) -> a run dir trained 20 steps (E 8, H 16), built once per settings."""
    from lmcli.runtime.progress import Progress
    from lmcli.train.run import train

    runs: dict[tuple, Path] = {}

    def get(padding: str = "pack", **model) -> Path:
        key = (padding, *sorted(model.items()))
        if key not in runs:
            run = tmp_path_factory.mktemp(f"tiny_run_{padding}")
            train(tiny_data_dir, run, {"model": {"embedding_dim": 8, "hidden": 16, **model},
                                       "data": {"padding": padding, "batch_size": 4, "seq_len": 6},
                                       "train": {"lr": 0.02, "seed": 7, "max_steps": 20, "checkpoint_every": 10,
                                                 "log_every": 10}}, progress=Progress())
            runs[key] = run
        return runs[key]

    return get


def _two_cpu_devices() -> None:
    """Two logical CPU devices for the whole session, set before TensorFlow starts, so that mirrored training runs
    in-process (`--devices cpu:0,cpu:1`); everything else keeps using the first."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


_two_cpu_devices()


# `make test-fast` (pytest -m "not slow") leaves these out: each takes 2 s or more on 2 cores (whole trainings, kills
# and resumes, subprocesses, several workers). What stays covers every module of lmcli; `make test` runs all.
SLOW = frozenset({
    "test_the_estimate_is_within_the_stated_band_of_measured_peaks",
    "test_a_killed_worker_ends_the_other_and_sigterm_stops_both_then_both_resume",
    "test_two_workers_train_as_the_mirrored_run_and_the_chief_alone_exports",
    "test_sigkill_and_resume_with_terms_a_variational_embedding_and_plateau",
    "test_sigkill_at_many_points_resumes_to_the_uninterrupted_weights",
    "test_signal_checkpoints_then_exits_with_its_code_and_resumes",
    "test_resume_mid_epoch_gives_the_uninterrupted_weights",
    "test_sampled_softmax_test_perplexity_is_close_to_the_full_softmax",
    "test_export_reloads_without_keras_and_matches_the_checkpoint",
    "test_eval_of_the_export_equals_eval_of_the_run",
    "test_export_of_a_mixed_precision_run_is_float32_and_verifies",
    "test_mixed_precision_losses_match_float32_within_a_stated_tolerance",
    "test_variational_embedding_stays_out_of_evaluation_and_exports",
    "test_gru_example_trains_evaluates_and_exports",
    "test_labels_as_input_example_before_and_after",
    "test_two_replicas_fit_as_one_device",
    "test_two_replicas_train_exactly_as_one_device",
    "test_each_term_with_each_strategy_lowers_validation_perplexity",
    "test_each_strategy_lowers_full_softmax_validation_perplexity",
    "test_the_distributed_step_costs_the_same_memory_at_two_vocabulary_sizes",
    "test_the_first_distributed_step_costs_the_same_memory_at_two_vocabulary_sizes",
    "test_a_resumed_two_replica_run_gives_the_uninterrupted_weights",
    "test_the_distributed_sampled_step_builds_no_dense_vocabulary_matrix",
    "test_a_failure_before_the_first_checkpoint_leaves_an_old_run_dir_untouched",
    "test_intra_op_threads_reach_tensorflow_and_change_no_result",
})


def pytest_collection_modifyitems(items) -> None:
    """Mark the SLOW tests, and run the memory-plan-against-measured-peaks test first: it measures fresh processes'
    peak RSS, and inside a long suite run one such peak once came out 0.3 GB higher than alone (cause not found)."""
    for item in items:
        if getattr(item, "originalname", item.name) in SLOW:
            item.add_marker(pytest.mark.slow)
    first = [i for i in items if i.name == "test_the_estimate_is_within_the_stated_band_of_measured_peaks"]
    items[:] = first + [i for i in items if i not in first]
