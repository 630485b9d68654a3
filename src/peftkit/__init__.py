"""peftkit: parameter-efficient fine-tuning for PyTorch and Hugging Face transformers.

Layers (each imports only those below it; ``tests/test_layering.py`` checks that, and that no module
reaches itself through imports):

* application: ``cli``, ``serve``, ``pipeline`` and ``run_config``, ``models`` (the model catalogue),
  ``demo``, ``evaluation``, ``plotting``;
* library, high: ``model`` (:class:`PeftModel`: adapters, the virtual-token stage, per-row routing),
  ``decoding``, ``composition``, ``training``, ``optimizers`` (LoRA+), ``data``, ``ensemble``,
  ``generation``;
* library, methods: ``methods/<name>/{config,layer,method}.py``, registered by a decorator, sharing
  ``methods/lowrank.py`` (LoRA with its DoRA option, AdaLoRA, AdaPtLoRA), ``methods/default_targets.py``
  (peft's per-architecture defaults), ``methods/parameter_delta.py`` and
  ``methods/sparse_delta.py`` (full, BitFit, selection, diff pruning); ``virtual/`` (the stage and the
  protocol every virtual-token method follows);
* library, protocol: ``layer`` (:class:`AdapterLayer`, ``attach``), ``rows`` (routing, the mixed-batch
  template), ``registry``, ``targeting``, ``slots``, ``modules_to_save``, ``quantization``,
  ``checkpoint``;
* leaves: ``config``, ``errors``, ``nn_types``, ``kv_cache``, ``signature``, ``positions``, ``names``,
  ``figures``, ``io``.
"""

from . import methods  # noqa: F401  (registers every method)
from .auto import (
    AutoPeftModel,
    AutoPeftModelForCausalLM,
    AutoPeftModelForFeatureExtraction,
    AutoPeftModelForQuestionAnswering,
    AutoPeftModelForSeq2SeqLM,
    AutoPeftModelForSequenceClassification,
    AutoPeftModelForTokenClassification,
)
from .config import PeftConfig
from .decoding import DecodingConfig, GenerationOutput, generate
from .errors import AdapterError, BaseModelMismatchError, CheckpointError, ConfigError, TargetError
from .hf_integration import register as _register_with_trainers
from .layer import AdapterLayer
from .methods.adalora import AdaLoraConfig
from .methods.adaptlora import AdaPtLoraConfig
from .methods.bitfit import BitFitConfig
from .methods.bottleneck import BottleneckConfig, Stack
from .methods.diff_pruning import DiffPruningConfig
from .methods.full import FullConfig
from .methods.fusion import FusionConfig, fusion_attention
from .methods.ia3 import IA3Config
from .methods.lora import LoraConfig
from .methods.p_tuning import PromptEncoderConfig, PTuningConfig
from .methods.p_tuning_v2 import PTuningV2Config
from .methods.prefix_tuning import PrefixTuningConfig
from .methods.prompt_tuning import PromptTuningConfig
from .methods.selection import SelectionConfig
from .model import ParameterReport, PeftModel, get_peft_model
from .peft_types import PeftType, PromptEncoderReparameterizationType, PromptTuningInit, TaskType
from .quantization import prepare_model_for_kbit_training
from .registry import LayerMethod, Method, get_method, get_peft_config, list_methods, register_method
from .rows import BASE_ROW
from .state_dicts import (
    get_base_model_state_dict,
    get_peft_model_state_dict,
    load_peft_weights,
    set_base_model_state_dict,
    set_peft_model_state_dict,
)
from .status import TunerLayerStatus, TunerModelStatus, get_layer_status, get_model_status
from .task_models import (
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
)
from .tuner import TunerModel, inject_adapter_in_model

_register_with_trainers()  # transformers' Trainer and TRL treat peftkit models as PEFT models

__version__ = "0.1.0"

__all__ = [
    "AutoPeftModel",
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForQuestionAnswering",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForQuestionAnswering",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "PeftType",
    "PromptEncoderConfig",
    "PromptEncoderReparameterizationType",
    "PromptTuningInit",
    "TaskType",
    "TunerLayerStatus",
    "TunerModel",
    "TunerModelStatus",
    "get_base_model_state_dict",
    "get_layer_status",
    "get_model_status",
    "get_peft_config",
    "get_peft_model_state_dict",
    "inject_adapter_in_model",
    "load_peft_weights",
    "prepare_model_for_kbit_training",
    "set_base_model_state_dict",
    "set_peft_model_state_dict",
    "AdaLoraConfig",
    "AdaPtLoraConfig",
    "BASE_ROW",
    "AdapterError",
    "AdapterLayer",
    "BaseModelMismatchError",
    "BitFitConfig",
    "BottleneckConfig",
    "CheckpointError",
    "ConfigError",
    "DecodingConfig",
    "DiffPruningConfig",
    "GenerationOutput",
    "FullConfig",
    "FusionConfig",
    "IA3Config",
    "LayerMethod",
    "LoraConfig",
    "PTuningConfig",
    "PTuningV2Config",
    "Method",
    "ParameterReport",
    "SelectionConfig",
    "Stack",
    "PeftConfig",
    "PeftModel",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "TargetError",
    "generate",
    "get_method",
    "get_peft_model",
    "list_methods",
    "fusion_attention",
    "register_method",
]
