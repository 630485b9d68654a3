"""peft's task classes: the wrapper ``get_peft_model`` and ``PeftModel.from_pretrained`` return for a config's
``task_type`` (``CAUSAL_LM`` gives :class:`PeftModelForCausalLM`, ...; no task type a plain ``PeftModel``).

Each class's ``forward`` has peft's signature, which tools read from the class: ``transformers.Trainer`` finds
the label arguments there (``labels``; ``start_positions`` / ``end_positions`` for question answering), so
``evaluate()`` reports ``eval_loss``. Classification wrappers train and save their new head
(``modules_to_save``), as peft does.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .model import TASK_CLASSES, PeftModel
from .peft_types import TaskType


def task_class(task_type: TaskType):
    """Class decorator: ``get_peft_model`` / ``from_pretrained`` wrap models of ``task_type`` in ``cls``."""

    def register(cls: type[PeftModel]) -> type[PeftModel]:
        TASK_CLASSES[task_type.value] = cls
        cls.task_type = task_type.value
        return cls

    return register


def _given(task_ids: Any, **named: Any) -> dict[str, Any]:
    """The named forward arguments that were given (a None is not passed on); peft's ``task_ids`` (multitask
    prompt tuning) is refused: peftkit's task routing is ``tasks=``."""
    if task_ids is not None:
        raise ConfigError("task_ids", "peftkit routes rows to tasks with tasks= (or model.task(...))")
    return {k: v for k, v in named.items() if v is not None}


class _Text(PeftModel):
    """The forward shared by the causal-LM and classification wrappers: text in, ``labels`` for the loss."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        task_ids=None,
        *,
        adapter_names=None,
        tasks=None,
        **kwargs,
    ):
        given = _given(
            task_ids,
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            labels=labels,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        return super().forward(adapter_names=adapter_names, tasks=tasks, **given, **kwargs)


@task_class(TaskType.CAUSAL_LM)
class PeftModelForCausalLM(_Text):
    """A causal language model with adapters (peft's class of that name)."""


@task_class(TaskType.SEQ_2_SEQ_LM)
class PeftModelForSeq2SeqLM(PeftModel):
    """An encoder-decoder language model with adapters; ``generate`` takes keywords only, as peft's."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        decoder_inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        task_ids=None,
        *,
        adapter_names=None,
        tasks=None,
        **kwargs,
    ):
        given = _given(
            task_ids,
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            decoder_inputs_embeds=decoder_inputs_embeds,
            labels=labels,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        return super().forward(adapter_names=adapter_names, tasks=tasks, **given, **kwargs)

    def generate(self, **kwargs: Any):
        return super().generate(**kwargs)


class _Classifier(_Text):
    """Shared by the classification wrappers: a model with a classification head."""

    head_names = ("classifier", "score")


@task_class(TaskType.SEQ_CLS)
class PeftModelForSequenceClassification(_Classifier):
    """Sequence classification: the new head (``classifier`` / ``score``) trains and is saved too."""


@task_class(TaskType.TOKEN_CLS)
class PeftModelForTokenClassification(_Classifier):
    """Token classification: the new head (``classifier`` / ``score``) trains and is saved too."""


@task_class(TaskType.QUESTION_ANS)
class PeftModelForQuestionAnswering(PeftModel):
    """Extractive question answering: the span head ``qa_outputs`` trains and is saved with the adapter."""

    head_names = ("qa_outputs",)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        task_ids=None,
        *,
        adapter_names=None,
        tasks=None,
        **kwargs,
    ):
        given = _given(
            task_ids,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            start_positions=start_positions,
            end_positions=end_positions,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        return super().forward(adapter_names=adapter_names, tasks=tasks, **given, **kwargs)


@task_class(TaskType.FEATURE_EXTRACTION)
class PeftModelForFeatureExtraction(PeftModel):
    """A model whose output is its hidden states (embeddings) with adapters."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        task_ids=None,
        *,
        adapter_names=None,
        tasks=None,
        **kwargs,
    ):
        given = _given(
            task_ids,
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
        )
        return super().forward(adapter_names=adapter_names, tasks=tasks, **given, **kwargs)
