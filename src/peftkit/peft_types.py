"""peft's enums under peft's names: ``TaskType``, ``PeftType``, ``PromptTuningInit`` and
``PromptEncoderReparameterizationType``.

Each member is a ``str`` (``TaskType.CAUSAL_LM == "CAUSAL_LM"``: a ``StrEnum``), so a config holds either
form and saves the same JSON. ``PeftType`` lists the methods peftkit shares with peft (peftkit's own methods
have no peft type and save ``peftkit_method`` instead).
"""

from __future__ import annotations

import enum


class TaskType(enum.StrEnum):
    """What the base model does; picks the wrapper class (:data:`peftkit.task_models.TASK_CLASSES`)."""

    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"


class PeftType(enum.StrEnum):
    """peft's name of a method, written as ``peft_type`` into ``adapter_config.json``."""

    PROMPT_TUNING = "PROMPT_TUNING"
    P_TUNING = "P_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    LORA = "LORA"
    ADALORA = "ADALORA"
    IA3 = "IA3"


class PromptTuningInit(enum.StrEnum):
    """How prompt tuning's virtual tokens start (:class:`~peftkit.PromptTuningConfig`)."""

    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    RANDOM = "RANDOM"


class PromptEncoderReparameterizationType(enum.StrEnum):
    """P-tuning's prompt encoder (:class:`~peftkit.PromptEncoderConfig`)."""

    MLP = "MLP"
    LSTM = "LSTM"


def plain(value: object) -> object:
    """An enum member as its plain string (JSON, comparisons in messages); anything else unchanged."""
    return value.value if isinstance(value, enum.Enum) else value


__all__ = ["PeftType", "PromptEncoderReparameterizationType", "PromptTuningInit", "TaskType", "plain"]
