"""dlm: fast generation for masked-diffusion language models (LLaDA, Dream and their formats).

    import dlm
    model = dlm.load("path/to/LLaDA-8B-Instruct")
    out = model.generate(["What is 2 + 2?"], dlm.GenerationConfig(gen_length=64, scheduler="threshold",
                                                                  cache="dual", chat_template=True))
    print(out.texts[0])
"""

from .config import GenerationConfig
from .errors import CheckpointError, ConfigError, DlmError, GenerationError, RegistryError, SchedulerError
from .outputs import GenerationOutput, StepEvent, StepTrace
from . import schedulers, cache, verify  # noqa: E402
from .schedulers import Scheduler, register_scheduler
from .cache import CachePolicy, register_cache
from .verify import register_verifier
from .models import register_model
from .api import DiffusionLM, Engine, Request, load

__version__ = "0.1.0"

__all__ = [
    "CachePolicy", "CheckpointError", "ConfigError", "DiffusionLM", "DlmError", "Engine", "Request", "GenerationConfig",
    "GenerationError", "GenerationOutput", "RegistryError", "Scheduler", "SchedulerError", "StepEvent", "StepTrace",
    "cache", "load", "register_cache", "register_model", "register_scheduler", "register_verifier", "schedulers",
    "verify",
]
