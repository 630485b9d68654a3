"""The OpenAI API's request bodies as clients send them, checked field by field, and its error body.

Every field is either supported or refused by name: unknown fields are an error (no silently ignored
option), and OpenAI fields peftkit does not implement (``logprobs``, ``echo``, presence/frequency
penalties, ...) are accepted only at their neutral value. peftkit's own decoding options come as
extra fields (``top_k``, ``num_beams``, ``length_penalty``, ``penalty_alpha``, ``repetition_penalty``,
``no_repeat_ngram_size``, ``min_tokens``), as ``extra_body`` in the ``openai`` client.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..decoding import DecodingConfig
from ..errors import ConfigError

MAX_STOP = 4  # stop strings per request (OpenAI's limit)
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed takes

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class ApiError(Exception):
    """An HTTP error with OpenAI's body: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    """Fields ``/v1/completions`` and ``/v1/chat/completions`` share."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = Field(None, validate_default=True)  # read as a list
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # OpenAI fields accepted only at their neutral value
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: bool | int | None = None
    # peftkit's decoding options (extra fields)
    top_k: int = Field(0, ge=0)
    num_beams: int = Field(1, ge=1, le=64)
    length_penalty: float = 1.0
    penalty_alpha: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    no_repeat_ngram_size: int = Field(0, ge=0)
    min_tokens: int = Field(0, ge=0)
    return_token_ids: bool = False  # vLLM's name: each choice carries its token ids

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"give at most {MAX_STOP} non-empty stop strings")
        return stops

    def refuse_unsupported(self) -> None:
        neutral = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "logprobs": None}
        for name, value in neutral.items():
            given = getattr(self, name)
            if given not in (value, False, 0):
                raise ApiError(400, f"{name} is not supported by peftkit serve; leave it out", param=name)
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options needs stream: true", param="stream_options")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def budget(self) -> int | None:
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise ApiError(
                400, "max_tokens and max_completion_tokens differ; give one of them", param="max_tokens"
            )
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.echo:
            raise ApiError(400, "echo is not supported by peftkit serve; leave it out", param="echo")
        if self.best_of not in (None, self.n):
            raise ApiError(400, "best_of is not supported by peftkit serve; use n", param="best_of")
        if self.suffix:
            raise ApiError(400, "suffix is not supported by peftkit serve; leave it out", param="suffix")

    def prompts(self) -> list[str | list[int]]:
        """Each prompt as text or token ids (a request may carry several)."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        if not p:
            raise ApiError(400, "prompt is empty", param="prompt")
        return list(p)


class LoadAdapter(Strict):
    lora_name: str
    lora_path: str
    load_inplace: bool = False  # vLLM's flag: replace a loaded adapter of that name; not supported

    def refuse_unsupported(self) -> None:
        if self.load_inplace:
            raise ApiError(
                400, "load_inplace is not supported: unload the adapter first", param="load_inplace"
            )


class UnloadAdapter(Strict):
    lora_name: str
    lora_int_id: int | None = None  # sent by some vLLM clients; names are what identify adapters


def strategy(req: Sampling) -> str:
    """Beam search with ``num_beams > 1``, contrastive with ``penalty_alpha``, else greedy at
    temperature 0 and sampling above (OpenAI's default temperature is 1: it samples)."""
    chosen = "beam" if req.num_beams > 1 else "contrastive" if req.penalty_alpha is not None else None
    if chosen is None:
        return "greedy" if req.temperature == 0 else "sample"
    if "temperature" in req.model_fields_set and req.temperature > 0:
        raise ApiError(
            400, f"{chosen} search does not sample: set temperature to 0 or leave it out", param="temperature"
        )
    if chosen == "beam" and req.penalty_alpha is not None:
        raise ApiError(
            400, "give num_beams (beam search) or penalty_alpha (contrastive), not both", "penalty_alpha"
        )
    return chosen


def decoding_config(
    req: Sampling, max_new_tokens: int, eos: list[int] | None, pad: int | None
) -> DecodingConfig:
    """The :class:`DecodingConfig` a request asks for; a refused value names its field."""
    chosen = strategy(req)
    options: dict[str, Any] = {
        "strategy": chosen,
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": req.min_tokens,
        "top_p": req.top_p,
        "top_k": req.top_k or (4 if chosen == "contrastive" else 0),
        "repetition_penalty": req.repetition_penalty,
        "no_repeat_ngram_size": req.no_repeat_ngram_size,
        "stop_strings": list(req.stop),
        "eos_token_id": eos,
        "pad_token_id": pad,
        "seed": req.seed,
    }
    if chosen == "sample":
        options["temperature"] = req.temperature
    if chosen == "beam":
        options.update(num_beams=req.num_beams, length_penalty=req.length_penalty, num_return_sequences=req.n)
    if req.penalty_alpha is not None:
        options["penalty_alpha"] = req.penalty_alpha
    try:
        return DecodingConfig(**options)
    except ConfigError as err:
        param = {"num_return_sequences": "n", "stop_strings": "stop", "max_new_tokens": "max_tokens"}
        raise ApiError(400, str(err), param=param.get(err.field, err.field)) from err


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One line naming the first bad field of a pydantic validation error, and that field."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    field = ".".join(p for p in loc if not p.isdigit() and not p.startswith(("list[", "str", "int"))) or None
    if kind == "extra_forbidden":
        return f"unknown field {'.'.join(loc)!r}: peftkit serve does not support it", field
    if kind == "missing":
        return f"{'.'.join(loc)} is required", field
    where = ".".join(loc) or "body"
    return f"{where}: {first.get('msg')}", field
