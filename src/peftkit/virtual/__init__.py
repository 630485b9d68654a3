"""Virtual tokens as a stage of the model (prompt tuning, prefix tuning, P-tuning v1/v2, AdaPtLoRA's
task prompts).

* :mod:`.config`: the fields every virtual-token method shares;
* :mod:`.dims`: what such a method reads off its base model;
* :mod:`.adapter`: the protocol one adapter follows, and the reparametrised prompt;
* :mod:`.method`: the registration base and peft's task-type table;
* :mod:`.layout`: where each row's virtual tokens go (embeddings, cache prefix, mask, positions);
* :mod:`.stage`: the stage in :class:`~peftkit.PeftModel` that owns the adapters.
"""

from .adapter import PEFT_KEY, InputAdapter, ReparametrisedPrompt, check_shape
from .config import PromptLearningConfig
from .dims import ModelDims, check_sizes, model_dims
from .layout import forward_with_virtual_tokens, transform_inputs
from .method import InputMethod, peft_task_type
from .stage import VirtualTokenStage

__all__ = [
    "PEFT_KEY",
    "InputAdapter",
    "InputMethod",
    "ModelDims",
    "PromptLearningConfig",
    "ReparametrisedPrompt",
    "VirtualTokenStage",
    "check_shape",
    "check_sizes",
    "forward_with_virtual_tokens",
    "model_dims",
    "peft_task_type",
    "transform_inputs",
]
