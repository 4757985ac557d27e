"""Typed, frozen configs: defaults in the dataclasses, validated once, with JSON round trips.

Every run dir holds `config.json` = `RunConfig.to_dict()`; the model and the data pipeline are rebuilt from it
alone. `sections` holds a run's parts, `run` the RunConfig, `commands` the options of prepare, eval and
generate.
"""

from lmcli.config.commands import ENCODING_ERRORS, MODEL_TYPES, VOCAB_MAX, EvalConfig, GenerateConfig, PrepareConfig
from lmcli.config.run import SECTIONS, RunConfig
from lmcli.config.sections import (
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
    STRATEGY_MODULES,
    TAPAS_CORRECTIONS,
    TEMPERATURE_DECAYS,
    DataConfig,
    LossConfig,
    ModelConfig,
    TermsConfig,
    TrainConfig,
)

__all__ = ["AUX_DISTANCES", "AUX_LOSSES", "CANDIDATE_SETS", "DISTRIBUTES", "ENCODING_ERRORS", "LOSSES",
           "LR_SCHEDULES", "MODEL_TYPES", "OPTIMIZERS", "PADDINGS", "PAD_SIDES", "PRECISIONS", "SAMPLERS", "SECTIONS",
           "STRATEGY_MODULES",
           "TAPAS_CORRECTIONS", "TEMPERATURE_DECAYS", "VOCAB_MAX", "DataConfig", "EvalConfig", "GenerateConfig",
           "LossConfig", "ModelConfig", "PrepareConfig", "RunConfig", "TermsConfig", "TrainConfig"]
