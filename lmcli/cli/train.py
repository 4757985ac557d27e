"""`lmcli train`: train a run dir on a data dir, resuming from its latest checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lmcli.cli.binding import bind, given, overrides
from lmcli.cli.options import (
    ConfigOpt,
    JsonOpt,
    QuietOpt,
    ThreadsOpt,
    choices,
    emit_json,
    print_table,
    progress_for,
)
from lmcli.config import (
    AUX_DISTANCES,
    AUX_LOSSES,
    CANDIDATE_SETS,
    DISTRIBUTES,
    LOSSES,
    LR_SCHEDULES,
    OPTIMIZERS,
    PAD_SIDES,
    PADDINGS,
    PRECISIONS,
    SAMPLERS,
    SECTIONS,
    TAPAS_CORRECTIONS,
    TEMPERATURE_DECAYS,
    DataConfig,
    LossConfig,
    ModelConfig,
    TermsConfig,
    TrainConfig,
)

M, DT, L, TM, T = ModelConfig(), DataConfig(), LossConfig(), TermsConfig(), TrainConfig()
MODEL, LOSS, TERMS, DATA, OPTIM, DEVICES, RUN = (
    "Model", "Loss strategy", "Loss terms and regularisers", "Data layout", "Optimisation and schedule",
    "Devices and precision", "Run, checkpoints and logs")


def _opt(help: str, default: Any, panel: str, *decls: str, names: tuple[str, ...] = ()) -> Any:
    """An option whose absence keeps the run's saved value (the default shown, for a new run); `names` are its
    choices."""
    return typer.Option(*decls, help=f"{help} \\[default: {default}]", show_default=False, rich_help_panel=panel,
                        **(choices(names) if names else {}))


def _flag(on: str, off: str, help: str, default: bool, panel: str) -> Any:
    return _opt(help, on if default else off, panel, f"{on}/{off}")


def train(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help="Data dir written by `lmcli prepare`.", show_default=False)],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Where checkpoints and logs go (a new or an lmcli "
                                          "run dir).", show_default=False)],
    # model
    embedding_dim: Annotated[Optional[int], _opt("Embedding width E.", M.embedding_dim, MODEL)] = None,
    hidden: Annotated[Optional[int], _opt("LSTM units per layer.", M.hidden, MODEL)] = None,
    layers: Annotated[Optional[int], _opt("Stacked LSTM layers.", M.layers, MODEL)] = None,
    proj_dim: Annotated[Optional[int], _opt("Projection width D after the LSTM; 0 = none.", M.proj_dim, MODEL)] = None,
    dropout: Annotated[Optional[float], _opt("Dropout on embeddings, between layers and before the output.",
                                             M.dropout, MODEL)] = None,
    tie_embeddings: Annotated[Optional[bool], _flag("--tie-embeddings", "--no-tie-embeddings",
                                                    "Share W with the embedding (needs D == E).",
                                                    M.tie_embeddings, MODEL)] = None,
    # loss strategy
    loss: Annotated[Optional[str], _opt("Loss strategy (evaluation is always the full softmax).", L.name, LOSS,
                                        names=LOSSES)] = None,
    num_sampled: Annotated[Optional[int], _opt("sampled/tapas: candidates drawn per step.", L.num_sampled,
                                               LOSS)] = None,
    sampler: Annotated[Optional[str], _opt("Candidate sampler; auto = unigram (learned-unigram for tapas).",
                                           L.sampler, LOSS, names=SAMPLERS)] = None,
    unigram_distortion: Annotated[Optional[float], _opt("Unigram counts are raised to this power.",
                                                        L.unigram_distortion, LOSS)] = None,
    remove_accidental_hits: Annotated[Optional[bool], _flag(
        "--remove-accidental-hits", "--keep-accidental-hits", "Drop candidates equal to the label.",
        L.remove_accidental_hits, LOSS)] = None,
    candidate_sets: Annotated[Optional[str], _opt(
        "sampled: one candidate set shared by the batch, or one per batch row (costs rows x V per step).",
        L.candidate_sets, LOSS, names=CANDIDATE_SETS)] = None,
    num_resampled: Annotated[Optional[int], _opt("tapas: candidates kept by the second pass (< --num-sampled).",
                                                 L.num_resampled, LOSS)] = None,
    resampling_temperature: Annotated[Optional[float], _opt("tapas: resampling temperature T at the start.",
                                                            L.resampling_temperature, LOSS)] = None,
    final_resampling_temperature: Annotated[Optional[float], _opt(
        "tapas: T at the end of training; 0 = keep T constant.", L.final_resampling_temperature, LOSS)] = None,
    temperature_decay: Annotated[Optional[str], _opt("tapas: how T moves over the run.", L.temperature_decay,
                                                     LOSS, names=TEMPERATURE_DECAYS)] = None,
    tapas_correction: Annotated[Optional[str], _opt(
        "tapas: resample = draw the second pass by score and correct by its probability; none = TF1's top-k.",
        L.tapas_correction, LOSS, names=TAPAS_CORRECTIONS)] = None,
    # terms and regularisers
    aux_loss: Annotated[Optional[list[str]], _opt("Add a loss term (repeatable).", "none", TERMS,
                                                  names=AUX_LOSSES)] = None,
    aux_weight: Annotated[Optional[float], _opt("embedding term: its weight.", TM.aux_weight, TERMS)] = None,
    aux_power: Annotated[Optional[float], _opt("embedding term: K in p <- p^K / sum p^K.", TM.aux_power,
                                               TERMS)] = None,
    aux_rounds: Annotated[Optional[int], _opt("embedding term: rounds R of sharpening.", TM.aux_rounds,
                                              TERMS)] = None,
    aux_distance: Annotated[Optional[str], _opt("embedding term: distance to the target word's embedding.",
                                                TM.aux_distance, TERMS, names=AUX_DISTANCES)] = None,
    ar_alpha: Annotated[Optional[float], _opt("ar term: weight of mean(h^2).", TM.ar_alpha, TERMS)] = None,
    tar_beta: Annotated[Optional[float], _opt("tar term: weight of mean((h_t - h_t-1)^2).", TM.tar_beta,
                                              TERMS)] = None,
    embedding_dropout: Annotated[Optional[float], _opt("Drop whole word types per batch with this probability.",
                                                       M.embedding_dropout, TERMS)] = None,
    variational_embedding: Annotated[Optional[bool], _flag(
        "--variational-embedding", "--no-variational-embedding", "Learn a Gaussian dropout rate per word "
        "(adds the kl term).", M.variational_embedding, TERMS)] = None,
    kl_weight: Annotated[Optional[float], _opt("kl term: final weight of KL / training tokens.", TM.kl_weight,
                                               TERMS)] = None,
    kl_warmup_epochs: Annotated[Optional[float], _opt("kl term: epochs of the linear ramp from 0.",
                                                      TM.kl_warmup_epochs, TERMS)] = None,
    # data layout
    padding: Annotated[Optional[str], _opt("pack (TBPTT, carried state) or pad (one line per row).",
                                           DT.padding, DATA, names=PADDINGS)] = None,
    batch_size: Annotated[Optional[int], _opt("Rows per batch.", DT.batch_size, DATA)] = None,
    seq_len: Annotated[Optional[int], _opt("pack: tokens per window.", DT.seq_len, DATA)] = None,
    bucket_by_length: Annotated[Optional[bool], _flag("--bucket-by-length", "--no-bucket-by-length",
                                                      "pad: batch lines of similar length together.",
                                                      DT.bucket_by_length, DATA)] = None,
    max_len: Annotated[Optional[int], _opt("pad: longer lines are cut into pieces of this many tokens.",
                                           DT.max_len, DATA)] = None,
    pad_side: Annotated[Optional[str], _opt("pad: where padding goes.", DT.pad_side, DATA, names=PAD_SIDES)] = None,
    # optimisation
    optimizer: Annotated[Optional[str], _opt("auto = lazy-adam for sampled/tapas, adam for full.",
                                             T.optimizer, OPTIM, names=OPTIMIZERS)] = None,
    lr: Annotated[Optional[float], _opt("Base learning rate.", T.lr, OPTIM)] = None,
    lr_schedule: Annotated[Optional[str], _opt("How the rate moves (plateau: divide by --lr-decay when "
                                               "validation did not improve).", T.lr_schedule, OPTIM,
                                               names=LR_SCHEDULES)] = None,
    warmup_steps: Annotated[Optional[int], _opt("Linear warm-up of the rate over these first steps.",
                                                T.warmup_steps, OPTIM)] = None,
    lr_decay: Annotated[Optional[float], _opt("step/exponential/plateau: the divisor (>= 1).", T.lr_decay,
                                              OPTIM)] = None,
    lr_decay_every: Annotated[Optional[int], _opt("step/exponential: epochs per division.", T.lr_decay_every,
                                                  OPTIM)] = None,
    min_lr: Annotated[Optional[float], _opt("The rate never goes below this.", T.min_lr, OPTIM)] = None,
    clip_norm: Annotated[Optional[float], _opt("Clip the global gradient norm; 0 = off.", T.clip_norm, OPTIM)] = None,
    # devices and precision
    precision: Annotated[Optional[str], _opt("Compute the LSTMs in half precision on float32 variables (the output "
                                             "layer and the loss stay float32; float16 with loss scaling).",
                                             T.precision, DEVICES, names=PRECISIONS)] = None,
    distribute: Annotated[Optional[str], _opt("auto = multi-worker when TF_CONFIG is set, mirrored when more than "
                                              "one GPU is visible, else none.", T.distribute, DEVICES,
                                              names=DISTRIBUTES)] = None,
    devices: Annotated[Optional[str], _opt("mirrored: the devices, comma-separated (gpu:0,gpu:1; cpu:0,cpu:1 "
                                           "splits the CPU); empty = every GPU.", "every GPU", DEVICES)] = None,
    worker_timeout: Annotated[Optional[float], _opt("multi-worker: seconds to wait for another worker before "
                                                    "failing.", T.worker_timeout, DEVICES)] = None,
    # run, checkpoints and logs
    epochs: Annotated[Optional[int], _opt("Epochs in all (a resumed run continues up to this).", T.epochs, RUN)] = None,
    max_steps: Annotated[Optional[int], _opt("Stop after this many steps in all; 0 = no limit.", T.max_steps,
                                             RUN)] = None,
    seed: Annotated[Optional[int], _opt("Seed of initialisation, shuffling, dropout and sampling.", T.seed,
                                        RUN)] = None,
    checkpoint_every: Annotated[Optional[int], _opt("Steps between checkpoints.", T.checkpoint_every, RUN)] = None,
    keep: Annotated[Optional[int], _opt("Latest checkpoints kept (the best is kept apart).", T.keep, RUN)] = None,
    log_every: Annotated[Optional[int], _opt("Steps between metrics.jsonl records.", T.log_every, RUN)] = None,
    export_on_finish: Annotated[Optional[Path], typer.Option(
        help="Export the best checkpoint here when training ends (replaces it).", show_default=False,
        rich_help_panel=RUN)] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Discard the run dir's checkpoints and start over.",
                                          rich_help_panel=RUN)] = False,
    config: ConfigOpt = None,
    intra_op_threads: ThreadsOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train an LSTM language model; rerun on the same run dir to resume at the exact step.

    Options not given keep a resumed run's saved values (a new run takes the defaults shown). Any option can
    also come from a --config file or from LMCLI_TRAIN_<OPTION> (e.g. LMCLI_TRAIN_NUM_SAMPLED=2048); the
    command line wins, then the environment, then --config.
    """
    from lmcli.train.run import train as run_train

    result = run_train(data_dir, run_dir, overrides(TRAIN, given(ctx)), restart=restart, progress=progress_for(quiet))
    if export_on_finish is not None:  # the chief's job: every worker writing the same dir would race
        from lmcli.serve.exporting import export as run_export

        result["export"] = run_export(run_dir, export_on_finish, force=True) if result["worker"] == 0 else None
    if json_out:
        emit_json(result)
    elif not quiet:
        print_table(f"trained {run_dir}", list(result.items()))


# Each option above sets the run config's field of its name; --loss sets loss.name; V comes from the data dir.
TRAIN = bind(train, SECTIONS, aliases={("loss", "name"): "loss"}, internal=(("model", "vocab_size"),),
             extras=("ctx", "data_dir", "run_dir", "export_on_finish", "restart",
                     "config", "intra_op_threads", "json_out", "quiet"))
