"""The web layer: FastAPI routes speaking the OpenAI API (plus vLLM's adapter calls) over the scheduler.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models`` (and
``/v1/models/{id}``), ``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter``,
``GET /health``, ``GET /metrics`` and the playground page at ``/``. Every error is an OpenAI error
body with a 4xx status for bad input; a decoding failure (a bug) is a 500 that leaves the server up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..data import sft_prompt
from .adapters import AdapterTable
from .batch import row_slots
from .jobs import Job
from .metrics import Metrics
from .protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    LoadAdapter,
    Sampling,
    UnloadAdapter,
    decoding_config,
    validation_message,
)
from .scheduler import Scheduler
from .streams import Channel
from .streams import Response as Assembled

log = logging.getLogger("peftkit.serve")
OPEN_PATHS = ("/health",)  # answered without the API key
PAGE_PATHS = ("/",)  # the playground page holds no data: it asks for the key and sends it with each call
MAX_BODY = 4 * 1024 * 1024  # bytes
COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
DISCONNECT_CHECK = 0.25  # seconds between checks that a client still waits for a whole response
ROUTES = (
    "/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
    "/v1/load_lora_adapter", "/v1/unload_lora_adapter",
)  # fmt: skip


@dataclass
class Server:
    """What the routes work with."""

    table: AdapterTable
    scheduler: Scheduler
    metrics: Metrics
    context: int | None  # tokens a row may hold (virtual + prompt + new), None: no limit known
    api_key: str | None = None


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


class Guard:
    """ASGI middleware: the API key, the body size limit, and the request counter."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = {"code": 500}

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                return await error_response(refusal)(scope, receive, counted_send)
            await self.app(scope, _limited(receive), counted_send)
        finally:
            endpoint = (
                path if path in ROUTES else "/v1/models/:id" if path.startswith("/v1/models/") else "other"
            )
            self.server.metrics.count(
                self.server.metrics.requests, endpoint=endpoint, status=str(status["code"])
            )

    def _refusal(self, scope) -> ApiError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        key = self.server.api_key
        if key and scope["path"] not in OPEN_PATHS + PAGE_PATHS:
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return ApiError(
                    401,
                    "a valid API key is needed: send the header 'Authorization: Bearer KEY'",
                    code="invalid_api_key",
                )
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return ApiError(413, f"the body must be at most {MAX_BODY} bytes", code="body_too_large")
        return None


def _limited(receive):
    """``receive`` that refuses a body (chunked or not) longer than :data:`MAX_BODY`."""
    seen = {"bytes": 0}

    async def wrapped():
        message = await receive()
        seen["bytes"] += len(message.get("body", b""))
        if seen["bytes"] > MAX_BODY:
            raise ApiError(413, f"the body must be at most {MAX_BODY} bytes", code="body_too_large")
        return message

    return wrapped


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.scheduler.start()
        try:
            yield
        finally:
            server.scheduler.stop()

    app = FastAPI(title="peftkit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _add_error_handlers(app)
    routes = Routes(server)
    app.get("/")(routes.playground)
    app.get("/health")(routes.health)
    app.get("/metrics")(routes.metrics)
    app.get("/v1/models")(routes.models)
    app.get("/v1/models/{model_id:path}")(routes.model)
    app.post("/v1/chat/completions")(routes.chat)
    app.post("/v1/completions")(routes.completions)
    app.post("/v1/load_lora_adapter")(routes.load)
    app.post("/v1/unload_lora_adapter")(routes.unload)
    app.add_middleware(Guard, server=server)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, err: ApiError):
        return error_response(err)

    async def invalid(request: Request, err: RequestValidationError):
        message, param = validation_message(list(err.errors()))
        return error_response(ApiError(400, message, param=param))

    async def http_error(request: Request, err: HTTPException):
        code = "not_found" if err.status_code == 404 else None
        return error_response(ApiError(err.status_code, str(err.detail), code=code))

    async def crash(request: Request, err: Exception):
        log.exception("unexpected error", exc_info=err)
        return JSONResponse(ApiError(500, f"internal error: {type(err).__name__}").body(), status_code=500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, crash)


class Routes:
    def __init__(self, server: Server):
        self.server, self.table, self.scheduler = server, server.table, server.scheduler

    # ---- plain pages ----------------------------------------------------------------------------
    async def playground(self) -> HTMLResponse:
        return HTMLResponse(resources.files("peftkit.serve").joinpath("playground.html").read_text("utf-8"))

    async def health(self) -> JSONResponse:
        thread = self.scheduler.thread
        if thread is None or not thread.is_alive():
            raise ApiError(503, "the scheduler is not running")
        return JSONResponse({"status": "ok"})

    async def metrics(self) -> PlainTextResponse:
        return PlainTextResponse(self.server.metrics.render(), media_type="text/plain; version=0.0.4")

    # ---- models and adapters ----------------------------------------------------------------------
    def _cards(self) -> list[dict[str, Any]]:
        table = self.table
        base = {
            "id": table.base_name,
            "object": "model",
            "created": table.created,
            "owned_by": "peftkit",
            "root": table.base_name,
            "parent": None,
            "method": "base",
            "max_model_len": self.server.context,
        }
        cards = [base]
        for e in table.listing():
            cards.append(
                {**base, "id": e.name, "created": e.created, "root": e.path, "parent": table.base_name}
                | {"method": e.method}
            )
        return cards

    async def models(self) -> JSONResponse:
        return JSONResponse({"object": "list", "data": self._cards()})

    async def model(self, model_id: str) -> JSONResponse:
        for card in self._cards():
            if card["id"] == model_id:
                return JSONResponse(card)
        raise ApiError(404, f"the model {model_id!r} does not exist", param="model", code="model_not_found")

    async def load(self, body: LoadAdapter) -> PlainTextResponse:
        body.refuse_unsupported()
        folder = self.table.inside_adapter_dir(body.lora_path)
        self.table.check_name(body.lora_name)

        def load():
            self.table.check_name(body.lora_name)  # again, on the thread that changes the table
            return self.table.load(body.lora_name, folder)

        await asyncio.wrap_future(self.scheduler.call(load))
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    async def unload(self, body: UnloadAdapter) -> PlainTextResponse:
        running = await asyncio.wrap_future(self.scheduler.call(lambda: self.table.unload(body.lora_name)))
        later = f" It is deleted when its {running} running requests finish." if running else ""
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.{later}")

    # ---- generation ---------------------------------------------------------------------------------
    async def chat(self, body: ChatRequest, request: Request) -> Response:
        body.refuse_unsupported()
        tok = self.table.tokenizer
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]  # fmt: skip
        try:
            text = sft_prompt(tok, messages)
        except Exception as err:  # the model's chat template refused these messages
            raise ApiError(400, f"the chat template cannot render these messages: {err}", "messages") from err
        ids = tok(text, add_special_tokens=not getattr(tok, "chat_template", None))["input_ids"]
        return await self._generate(request, body, [ids], "chat", body.budget())

    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        body.refuse_unsupported()
        prompts = [self._prompt_ids(p) for p in body.prompts()]
        return await self._generate(
            request, body, prompts, "text", body.max_tokens or COMPLETION_DEFAULT_TOKENS
        )

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        tok = self.table.tokenizer
        if isinstance(prompt, str):
            ids = tok(prompt)["input_ids"]
        else:
            vocab = len(tok)
            if any(not 0 <= t < vocab for t in prompt):
                raise ApiError(400, f"prompt holds token ids outside the vocabulary [0, {vocab})", "prompt")
            ids = list(prompt)
        if not ids:
            raise ApiError(400, "the prompt is empty", param="prompt")
        return ids

    def _budget(self, ids: list[int], adapter: str, asked: int | None) -> int:
        """New tokens for a row: ``asked``, or what the context leaves; refused past the context."""
        slots = row_slots(self.table.model, adapter)
        used = len(ids) + slots.prefix + slots.embedded
        context = self.server.context
        room = None if context is None else context - used
        if room is not None and (room < 1 or (asked or 0) > room):
            raise ApiError(
                400,
                f"this model's context is {context} tokens; the prompt takes {used} (virtual tokens "
                f"included) and max_tokens asks for {asked or 1} more: shorten the prompt or lower "
                "max_tokens",
                param="messages" if asked is None else "max_tokens",
                code="context_length_exceeded",
            )
        return asked or room or 256

    def _check_prompt(self, ids: list[int], adapter: str) -> None:
        need = self.table.virtual_placeholders(adapter)
        if need is not None and ids.count(need[0]) != need[1]:
            raise ApiError(
                400,
                f"the adapter is a P-tuning template adapter: the prompt must hold its {need[1]} placeholder "
                f"tokens (id {need[0]}), it holds {ids.count(need[0])}",
                param="prompt",
            )

    def _check_n(self, body: Sampling, prompts: int) -> None:
        rows = body.n * prompts
        limit = self.scheduler.max_batch
        if body.num_beams == 1 and rows > limit:
            raise ApiError(400, f"n x prompts = {rows} rows; this server batches at most {limit}", param="n")

    async def _generate(
        self, request: Request, body: Sampling, prompts: list[list[int]], kind: str, asked: int | None
    ) -> Response:
        self._check_n(body, len(prompts))
        channel = Channel(asyncio.get_running_loop())
        tok = self.table.tokenizer
        jobs: list[Job] = []
        try:
            for i, ids in enumerate(prompts):
                adapter = self.table.acquire(body.model)
                try:
                    self._check_prompt(ids, adapter)
                    budget = self._budget(ids, adapter, asked)
                    config = decoding_config(body, budget, _eos(tok), tok.pad_token_id)
                    job = Job(ids, adapter, config, channel.sink(i), body.n, body.seed)
                    self.scheduler.submit(job)
                except Exception:  # not queued: hand the adapter back (on the thread that may delete it)
                    self.scheduler.call(lambda adapter=adapter: self.table.release(adapter))
                    raise
                jobs.append(job)
        except Exception:
            for job in jobs:  # the prompts already queued leave with the request
                job.cancel()
            self.scheduler.nudge()
            raise
        assembled = Assembled(kind, body.model, jobs, body.return_token_ids)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self._stream(assembled, channel, usage), media_type="text/event-stream")
        return await self._whole(request, assembled, channel)

    async def _whole(self, request: Request, assembled: Assembled, channel: Channel) -> Response:
        loop = asyncio.get_running_loop()
        checked = loop.time()
        try:
            while assembled.pending:
                with contextlib.suppress(TimeoutError):
                    assembled.apply(*await asyncio.wait_for(channel.queue.get(), timeout=DISCONNECT_CHECK))
                if loop.time() - checked >= DISCONNECT_CHECK:  # has the client given up waiting?
                    checked = loop.time()
                    if await request.is_disconnected():
                        return Response(status_code=499)
        finally:
            self._cancel(assembled)
        if assembled.error:
            return JSONResponse(ApiError(500, assembled.error).body(), status_code=500)
        return JSONResponse(assembled.body())

    async def _stream(self, assembled: Assembled, channel: Channel, usage: bool):
        try:
            opening = assembled.opening()
            if opening:
                yield opening
            while assembled.pending:
                choice = assembled.apply(*await channel.queue.get())
                if choice is not None:
                    yield assembled.chunk([choice])
            if assembled.error:
                yield f"data: {json.dumps(ApiError(500, assembled.error).body())}\n\n"
            elif usage:
                yield assembled.chunk([], usage=True)
            yield "data: [DONE]\n\n"
        finally:
            self._cancel(assembled)  # the client went away mid-stream: free its rows

    def _cancel(self, assembled: Assembled) -> None:
        if assembled.pending:
            for job in assembled.jobs:
                job.cancel()
            self.scheduler.nudge()


def _eos(tok) -> list[int] | None:
    return None if tok.eos_token_id is None else [tok.eos_token_id]
