"""peft's ``AutoPeftModel*``: load the base model an adapter folder names (``base_model_name_or_path`` in its
``adapter_config.json``; peftkit reads local folders) and the adapter onto it, in one call.

``AutoPeftModelForCausalLM`` and its siblings load the base with the matching ``transformers`` auto class
and expect the adapter's ``task_type`` to match; the plain ``AutoPeftModel`` is for adapters without a task
type, whose config records the base's class (``auto_mapping``, written by ``save_pretrained``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar

from .config import PeftConfig
from .errors import ConfigError
from .model import PeftModel
from .peft_types import plain
from .task_models import (
    PeftModelForCausalLM,
    PeftModelForFeatureExtraction,
    PeftModelForQuestionAnswering,
    PeftModelForSeq2SeqLM,
    PeftModelForSequenceClassification,
    PeftModelForTokenClassification,
)

PEFTKIT_OPTIONS = (
    "allow_pickle",
    "ignore_mismatch",
    "low_cpu_mem_usage",
    "autocast_adapter_dtype",
    "torch_device",
)


class AutoPeftModel:
    """Loads base model and adapter from an adapter folder (see the module docstring)."""

    target_class: ClassVar[str | None] = None  # the transformers auto class of the base
    target_peft_class: ClassVar[type[PeftModel]] = PeftModel

    def __init__(self, *args: Any, **kwargs: Any):
        raise TypeError(
            f"{type(self).__name__} is not built directly: call {type(self).__name__}.from_pretrained"
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> PeftModel:
        """The adapter at ``pretrained_model_name_or_path`` on its base model. ``kwargs`` go to the base's
        ``from_pretrained`` (``torch_dtype``, ...), except peftkit's loading options (``allow_pickle``,
        ``ignore_mismatch``, ...), which go to :meth:`PeftModel.from_pretrained`."""
        if revision is not None:
            raise ConfigError("revision", "peftkit loads base models and adapters from local folders")
        saved = PeftConfig.from_pretrained(pretrained_model_name_or_path)
        base_path = saved.base_model_name_or_path
        if not base_path:
            raise ConfigError(
                "base_model_name_or_path",
                f"{pretrained_model_name_or_path}: adapter_config.json names no base model; load the base "
                "yourself and use PeftModel.from_pretrained(base, path)",
            )
        options = {k: kwargs.pop(k) for k in PEFTKIT_OPTIONS if k in kwargs}
        base = cls._base_class(saved, Path(pretrained_model_name_or_path)).from_pretrained(
            base_path, **kwargs
        )
        return cls.target_peft_class.from_pretrained(
            base, pretrained_model_name_or_path, adapter_name, is_trainable, config, **options
        )

    @classmethod
    def _base_class(cls, saved: PeftConfig, folder: Path) -> Any:
        import transformers

        task = plain(saved.task_type)
        if cls.target_class is not None:
            expected = getattr(cls.target_peft_class, "task_type", None)
            if task is not None and task != expected:
                raise ConfigError(
                    "task_type",
                    f"the adapter is for task_type={task!r}, {cls.__name__} loads {expected!r} adapters; "
                    "use the auto class of that task",
                )
            return getattr(transformers, cls.target_class)
        if task is not None:
            raise ConfigError(
                "task_type",
                f"Cannot use `AutoPeftModel` with a task type ({task!r}), please use a specific class for "
                "your task type (AutoPeftModelForCausalLM, ...)",
            )
        return _mapped_class(folder)


def _mapped_class(folder: Path) -> Any:
    """The base class an adapter without a task type recorded (``auto_mapping``): transformers' only."""
    from .checkpoint import read_config

    mapping = read_config(folder).get("auto_mapping") or {}
    library, name = mapping.get("parent_library", ""), mapping.get("base_model_class")
    if not name or not (library == "transformers" or library.startswith("transformers.")):
        raise ConfigError(
            "auto_mapping",
            f"{folder}: Cannot infer the auto class from the config (auto_mapping {mapping!r}: a "
            "transformers class is needed); load the base yourself and use PeftModel.from_pretrained",
        )
    return getattr(importlib.import_module(library), name)


class AutoPeftModelForCausalLM(AutoPeftModel):
    target_class = "AutoModelForCausalLM"
    target_peft_class = PeftModelForCausalLM


class AutoPeftModelForSeq2SeqLM(AutoPeftModel):
    target_class = "AutoModelForSeq2SeqLM"
    target_peft_class = PeftModelForSeq2SeqLM


class AutoPeftModelForSequenceClassification(AutoPeftModel):
    target_class = "AutoModelForSequenceClassification"
    target_peft_class = PeftModelForSequenceClassification


class AutoPeftModelForTokenClassification(AutoPeftModel):
    target_class = "AutoModelForTokenClassification"
    target_peft_class = PeftModelForTokenClassification


class AutoPeftModelForQuestionAnswering(AutoPeftModel):
    target_class = "AutoModelForQuestionAnswering"
    target_peft_class = PeftModelForQuestionAnswering


class AutoPeftModelForFeatureExtraction(AutoPeftModel):
    target_class = "AutoModel"
    target_peft_class = PeftModelForFeatureExtraction
