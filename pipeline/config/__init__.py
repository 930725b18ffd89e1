"""The recipe as one typed config tree, a dataclass per section (validated once by
`pipeline.curriculum.recipe`). Imports only `pipeline.core`."""

from pipeline.config.base import PACKAGE_ROOT, Check, key_path
from pipeline.config.data import DataConfig, TokenizerConfig
from pipeline.config.model import PRESETS, ModelArch, ModelConfig, resolve_arch
from pipeline.config.recipe import RecipeConfig, recipe_to_plain
from pipeline.config.stages import MonitorConfig, StageConfig, UntilConfig
from pipeline.config.training import (
    DeepSpeedConfig,
    DistillConfig,
    EvalConfig,
    SamplingConfig,
    SurgeryConfig,
    TrainConfig,
)

__all__ = ["Check", "DataConfig", "DeepSpeedConfig", "DistillConfig", "EvalConfig", "key_path", "ModelArch", "ModelConfig", "MonitorConfig", "PACKAGE_ROOT", "PRESETS", "recipe_to_plain", "RecipeConfig", "resolve_arch", "SamplingConfig", "StageConfig", "SurgeryConfig", "TokenizerConfig", "TrainConfig", "UntilConfig"]
