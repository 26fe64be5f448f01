"""genmodels: generative-AI architectures from small, named components."""
from .config import ConfigError, ModelConfig, preset
from .models import build_model

__version__ = "0.1.0"
__all__ = ["ConfigError", "ModelConfig", "build_model", "preset"]
