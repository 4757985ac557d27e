"""The distributed sampled step is flat in V: it never materialises a dense [V, D] (or [V, E]) tensor, checked on
the traced step's graph and by its cost (the allocator's peak during a step at two vocabulary sizes).

Before issue 15 every gather from a mirrored variable (W, b, E, LazyAdam's slots) read the whole variable: a
`ReadVariableOp` with a [V, D] output in each replica and each update, and a copy of all V x D values per read.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from lmcli.config import LossConfig, ModelConfig, RunConfig, TermsConfig
from lmcli.train.distribution import make_cluster, replica_feeds
from lmcli.train.step import build_training_step

V, E, D = 1013, 12, 14  # sizes no other tensor of the step has
CASES = {
    "sampled": ({"name": "sampled", "num_sampled": 40}, {}, ()),
    "sampled-row": ({"name": "sampled", "num_sampled": 40, "candidate_sets": "row"}, {}, ()),
    "tapas": ({"name": "tapas", "num_sampled": 40, "num_resampled": 20}, {}, ()),
    "tied, embedding term": ({"name": "sampled", "num_sampled": 40}, {"tie_embeddings": True, "hidden": E},
                             ("embedding",)),
    "variational, word dropout": ({"name": "sampled", "num_sampled": 40},
                                  {"variational_embedding": True, "embedding_dropout": 0.1}, ("tar",)),
}


def _step(vocab: int, loss: dict, model: dict, terms: tuple, dim: int = D, emb: int = E, rows: int = 4,
          devices: str = "cpu:0,cpu:1"):
    """(step function, per-replica feeds) of lmcli's distributed step on 2 logical CPU devices (`devices` "": one
    device, no strategy)."""
    model = {"embedding_dim": emb, "hidden": dim, **model}
    cfg = RunConfig(model=ModelConfig(vocab_size=vocab, **model), loss=LossConfig(**loss),
                    terms=TermsConfig(aux_loss=terms)).resolved()
    cluster = make_cluster("mirrored", devices) if devices else make_cluster("none")
    built = build_training_step(cfg, cluster, (1e5 / np.arange(1, vocab + 1)).astype(np.int64), 10, 1000)
    step, net = built.run, built.model
    ids = np.random.default_rng(0).integers(0, vocab, (rows, 9)).astype(np.int32)
    arrays = {"inputs": ids[:, :-1], "labels": ids[:, 1:], "mask": np.ones((rows, 8), np.float32)}
    return step, (lambda i: replica_feeds(cluster, arrays, net.zero_state(rows), i, 0.0))


def _graphs(graph: tf.Graph) -> list[tf.Graph]:
    """`graph` and the functions it calls (loop bodies, gradients)."""
    from tensorflow.python.framework import function_def_to_graph

    return [graph] + [function_def_to_graph.function_def_to_graph(f) for f in graph.as_graph_def().library.function]


def dense_vocab_tensors(graph: tf.Graph, vocab: int) -> list[str]:
    """Ops of `graph` (and of the functions it calls) whose output has a vocab-sized first axis and a second axis:
    a dense [V, ...] matrix."""
    found = []
    for g in _graphs(graph):
        for op in g.get_operations():
            for out in op.outputs:
                shape = out.shape
                if shape.rank is not None and shape.rank >= 2 and shape[0] == vocab:
                    found.append(f"{op.type} {op.name} {shape}")
    return found


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_distributed_sampled_step_builds_no_dense_vocabulary_matrix(case):
    """The whole step (forward, loss and terms, all-reduce, clipping, LazyAdam's update) on 2 replicas."""
    step, feeds = _step(V, *CASES[case])
    graph = step.get_concrete_function(feeds(0)).graph
    assert dense_vocab_tensors(graph, V) == []


def test_the_check_sees_a_dense_read_of_a_mirrored_variable():
    """The check itself: a plain `tf.gather` on the mirrored W (what the step did before) is found."""
    cluster = make_cluster("mirrored", "cpu:0,cpu:1")
    with cluster.strategy.scope():
        w = tf.Variable(tf.zeros([V, D]))

    @tf.function
    def gather():
        return cluster.strategy.run(lambda: tf.gather(w, [1, 2]))

    assert any(s.startswith("ReadVariableOp") for s in
               dense_vocab_tensors(gather.get_concrete_function().graph, V))


def _step_peak(vocab: int) -> int:
    """Bytes the allocator takes during one distributed sampled step, beyond what it held before (D = 128)."""
    step, feeds = _step(vocab, {"name": "sampled", "num_sampled": 64}, {}, (), dim=128, emb=128, rows=2)
    for i in range(2):  # trace, warm up
        step(feeds(i))
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    float(step(feeds(2))["loss"])
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def test_the_distributed_step_costs_the_same_memory_at_two_vocabulary_sizes():
    """From V = 10k to V = 80k one dense [V, 128] float32 copy would add 36 MB to the step's peak (before the fix
    it read W, E and LazyAdam's slots densely: several such copies); the step may grow by its V-sized sampler
    vectors (a few floats per class and replica), well under half of one such copy."""
    small, large = _step_peak(10_000), _step_peak(80_000)
    one_copy = (80_000 - 10_000) * 128 * 4
    assert large - small < one_copy / 2, (small, large)


def _first_step_peak(vocab: int) -> int:
    """Bytes the allocator takes during the first distributed sampled step (trace included), beyond what it held
    before (D = 128)."""
    step, feeds = _step(vocab, {"name": "sampled", "num_sampled": 64}, {}, (), dim=128, emb=128, rows=2)
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    float(step(feeds(0))["loss"])
    return tf.config.experimental.get_memory_info("CPU:0")["peak"] - before


def test_the_first_distributed_step_costs_the_same_memory_at_two_vocabulary_sizes():
    """The replicas' copies of W, E and LazyAdam's slots each have a buffer of their own before the first step
    (`distribution.variable_scope`). When the copies on the second device started out sharing the first's buffer,
    the first step's sparse updates copied every one of them (copy-on-write: 6 [V, 128] matrices between these
    sizes, about 215 MB), both replicas at once, so that step peaked one matrix above the two copies."""
    small, large = _first_step_peak(10_000), _first_step_peak(80_000)
    one_copy = (80_000 - 10_000) * 128 * 4
    assert large - small < one_copy / 2, (small, large)


def _weight_shaped_work_in_loops(devices: str, shapes: set) -> tuple[int, list[str]]:
    """(the number of while-loop bodies in lmcli's sampled step, the ops in them computing a tensor of one of
    `shapes`; a captured weight is only an argument there, a Placeholder)."""
    step, feeds = _step(V, *CASES["sampled"], devices=devices)
    bodies = [g for g in _graphs(step.get_concrete_function(feeds(0)).graph) if "while_body" in g.name]
    return len(bodies), [f"{op.type} {out.shape}" for g in bodies for op in g.get_operations()
                         if op.type not in ("Placeholder", "Identity") for out in op.outputs
                         if out.shape.rank == 2 and tuple(out.shape.as_list()) in shapes]


@pytest.mark.parametrize("devices", ["cpu:0,cpu:1", ""], ids=["two replicas", "one device"])
def test_no_lstm_loop_computes_a_weight_gradient(devices):
    """The LSTM's time loops (forward and gradient) compute only (B, *)-sized tensors; the kernel (E, 4H) and
    recurrent (H, 4H) gradients are three matmuls after the loop (`model/lstm.py`). Keras' generic loop computes and
    adds both at every time step, a fixed cost per step and per replica (README: 0.61-0.65 x one device's tokens/s
    on two replicas for an LSTM alone)."""
    bodies, work = _weight_shaped_work_in_loops(devices, {(E, 4 * D), (D, 4 * D), (E + D, 4 * D)})
    assert bodies >= (4 if devices else 2), bodies  # forward and gradient loops, per replica
    assert not work, work
