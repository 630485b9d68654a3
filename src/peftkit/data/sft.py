"""Supervised fine-tuning examples: the loss covers the response tokens only.

The prompt is rendered by :func:`sft_prompt` (the tokenizer's chat template when it has one, else
``prompt + "\\n"``) and the response is ``response + EOS``. Prompt and response are tokenized
separately and concatenated, so the boundary between them is exact: ``labels`` is ``-100`` on every
prompt token and equals ``input_ids`` on every response token (EOS included). Generation should
render prompts with the same :func:`sft_prompt` so that it sees exactly what training saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._common import Row, eos_id, get_field, row_name, token_ids
from .errors import DataError
from .spec import RowEncoder, TaskSpec

IGNORE_INDEX = -100
Message = dict[str, str]


def sft_prompt(
    tokenizer: Any, prompt_or_messages: str | Sequence[Message], system_prompt: str | None = None
) -> str:
    """The prompt text a model is trained (and should be asked) with.

    Args:
        tokenizer: a Hugging Face tokenizer; its ``chat_template`` is used when set.
        prompt_or_messages: a user prompt, or the chat so far (without the response).
        system_prompt: prepended as a system message unless the chat starts with one.

    With a chat template this is ``apply_chat_template(messages, add_generation_prompt=True)``.
    Without one it is each message's content on its own line, ending with ``"\\n"`` (for a plain
    prompt: ``prompt + "\\n"``), after the system prompt's line if any.
    """
    messages = _as_messages(prompt_or_messages)
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "".join(m["content"] + "\n" for m in messages)


def _as_messages(prompt_or_messages: str | Sequence[Message]) -> list[Message]:
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": prompt_or_messages}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt_or_messages]


def sft_row_encoder(tokenizer: Any, spec: TaskSpec) -> RowEncoder:
    """One record -> ``input_ids``, ``attention_mask``, ``labels`` (``-100`` on the prompt)."""
    eos = eos_id(tokenizer)
    # a chat template writes its own BOS text; a plain prompt gets the tokenizer's special tokens
    prompt_special = not getattr(tokenizer, "chat_template", None)

    def encode_row(record: dict[str, Any], i: int) -> Row:
        parts = _prompt_and_response(record, spec, i)
        if isinstance(parts, str):
            return Row(dropped=parts)
        prompt, response = parts
        prompt_ids = token_ids(tokenizer, sft_prompt(tokenizer, prompt, spec.system_prompt), prompt_special)
        response_ids = token_ids(tokenizer, response, special=False) + [eos]
        prompt_ids, response_ids, cut = fit_prompt_response(prompt_ids, response_ids, spec.max_length)
        example = {
            "input_ids": prompt_ids + response_ids,
            "attention_mask": [1] * (len(prompt_ids) + len(response_ids)),
            "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
        }
        return Row(example, cut)

    return encode_row


def _prompt_and_response(record: dict[str, Any], spec: TaskSpec, i: int) -> tuple[Any, str] | str:
    """(prompt or chat-so-far, response text), or the reason the record is dropped."""
    if spec.messages_column:
        return _split_chat(get_field(record, spec.messages_column, i), row_name(record, i))
    prompt = str(get_field(record, spec.prompt_column, i))
    response = str(get_field(record, spec.response_column, i))
    return (prompt, response) if response.strip() else "empty response"


def _split_chat(messages: Any, where: str) -> tuple[list[Message], str] | str:
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages
    ):
        raise DataError(
            f"{where}: messages must be a list of {{'role', 'content'}} dicts, got {messages!r:.200}"
        )
    if not messages or messages[-1]["role"] != "assistant":
        return "chat does not end with an assistant message"
    response = str(messages[-1]["content"])
    return (messages[:-1], response) if response.strip() else "empty response"


def fit_prompt_response(
    prompt: list[int], response: list[int], max_length: int
) -> tuple[list[int], list[int], bool]:
    """Fit ``prompt + response`` into ``max_length`` tokens.

    The prompt is cut from the left first (its end, next to the response, matters most), but keeps
    at least ``min(len(prompt), max_length // 2)`` tokens so the response still has context; then
    the response is cut at its end. Returns the two parts and whether anything was cut.
    """
    excess = len(prompt) + len(response) - max_length
    if excess <= 0:
        return prompt, response, False
    keep_prompt = max(len(prompt) - excess, min(len(prompt), max_length // 2))
    prompt = prompt[len(prompt) - keep_prompt :]
    return prompt, response[: max_length - len(prompt)], True
