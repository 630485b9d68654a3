"""`peftkit serve` as users run it: the server as a subprocess on a free loopback port, a tiny model and
adapters of eight kinds saved to folders, the real `openai` client (and raw HTTP for what a client
library would not send). Greedy answers must equal `peftkit generate` token for token."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

import httpx  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from serve_helpers import ADAPTERS, save_adapter, save_adapters, save_base  # noqa: E402

from peftkit import LoraConfig  # noqa: E402
from peftkit.cli.common import load_with_adapter  # noqa: E402
from peftkit.data import sft_prompt  # noqa: E402
from peftkit.decoding import generate  # noqa: E402
from peftkit.generation import decoding_config  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
CONTEXT = 2048
LONG = 1500  # tokens of a request that must still be running a moment later
KEY = "s3cret-key"
QUESTION = "what is the capital of france ?"


# ---- the server process --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`peftkit serve ARGS` on a free loopback port, stopped by :meth:`stop`."""

    def __init__(self, args: list[str], log: Path, api_key: str | None = None):
        self.port, self.api_key, self.log = free_port(), api_key, log
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "peftkit", "serve", *map(str, args), "--port", str(self.port)]
        if api_key:
            cmd += ["--api-key", api_key]
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=ENV)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"peftkit serve exited {self.proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"peftkit serve did not come up in 120 s:\n{log.read_text()}")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=self.api_key or "unused", max_retries=0, timeout=120
        )

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", headers=self.headers(), timeout=120, **kw)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.headers(), timeout=60)

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.get("/metrics").text)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)


LABELS = r'\{(?:[a-zA-Z_]+="(?:[^"\\]|\\.)*",?)*\}'
SAMPLE = re.compile(rf"^([a-zA-Z_:][a-zA-Z0-9_:]*)({LABELS})? (-?(?:[0-9.]+(?:e[+-]?[0-9]+)?|\+Inf|NaN))$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format, strictly: every line a comment or ``name{labels} value``."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


# ---- folders and references ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    base = save_base(root / "base", context=CONTEXT)
    adapter_dir = root / "adapters"
    paths = save_adapters(base, adapter_dir)
    other = root / "other-base"  # same architecture, other shapes: the fingerprint must refuse it
    tok = transformers.AutoTokenizer.from_pretrained(base)
    shapes = {"hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    cfg = transformers.LlamaConfig(vocab_size=len(tok), num_key_value_heads=2, **shapes)
    transformers.LlamaForCausalLM(cfg).save_pretrained(other)
    save_adapter(
        other, adapter_dir / "wrong-base", lambda: LoraConfig(r=2, target_modules=["q_proj"]), seed=9
    )
    pickled = adapter_dir / "pickled"
    shutil.copytree(paths["lora"], pickled)
    from safetensors.torch import load_file

    torch.save(load_file(pickled / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    (pickled / "adapter_model.safetensors").unlink()
    corrupt = adapter_dir / "corrupt"
    shutil.copytree(paths["lora"], corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    outside = root / "outside"
    shutil.copytree(paths["lora"], outside)
    (adapter_dir / "link-out").symlink_to(outside, target_is_directory=True)
    return {"root": root, "base": base, "adapter_dir": adapter_dir, "outside": outside, **paths}


@pytest.fixture(scope="module")
def server(folders):
    args = [
        "--model",
        folders["base"],
        "--served-model-name",
        "tiny",
        "--adapter-dir",
        folders["adapter_dir"],
    ]
    for name in ADAPTERS:
        args += ["--adapter", f"{name}={folders[name]}"]
    served = Served([*args, "--max-batch", "24", "--max-queue", "64"], folders["root"] / "server.log")
    yield served
    served.stop()


@pytest.fixture(scope="module")
def guarded(folders):
    args = ["--model", folders["base"], "--served-model-name", "tiny", "--max-batch", "1", "--max-queue", "1"]
    served = Served(args, folders["root"] / "guarded.log", api_key=KEY)
    yield served
    served.stop()


@functools.cache
def reference_model(base: str, adapter: str | None):
    """The model `peftkit generate --model base --adapter adapter` loads."""
    args = argparse.Namespace(model=base, adapter=adapter, quantize=None, allow_pickle=False)
    return load_with_adapter(args, task="causal-lm")


def expected(
    folders, adapter: str | None, prompt: str, max_new: int, chat: bool = True, **options
) -> list[int]:
    """Token ids `peftkit generate` produces (its run path: template, tokenisation, engine)."""
    model, tok = reference_model(str(folders["base"]), str(folders[adapter]) if adapter else None)
    text = sft_prompt(tok, prompt) if chat else prompt
    enc = tok(text, return_tensors="pt", add_special_tokens=not chat or not tok.chat_template)
    config = decoding_config(tok, max_new, **options)
    out = generate(model, enc["input_ids"], enc["attention_mask"], config, tokenizer=tok)
    new = out.new_tokens[0].tolist()
    return new[: new.index(tok.eos_token_id) + 1] if tok.eos_token_id in new else new


def ids_of(choice) -> list[int]:
    return list(choice.model_extra["token_ids"])


def chat(client, model: str, max_tokens: int = 12, stream: bool = False, **extra):
    """(token ids, text, finish reason) of one greedy chat answer, streamed or not."""
    kw = dict(
        model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=max_tokens
    )
    body = {"return_token_ids": True, **extra}
    if not stream:
        out = client.chat.completions.create(**kw, extra_body=body)
        return ids_of(out.choices[0]), out.choices[0].message.content, out.choices[0].finish_reason
    tokens, text, finish = [], "", None
    for chunk in client.chat.completions.create(**kw, stream=True, extra_body=body):
        for choice in chunk.choices:
            tokens += choice.model_extra.get("token_ids") or []
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return tokens, text, finish


# ---- answers -------------------------------------------------------------------------------------
def test_models_list_the_base_and_every_adapter_with_method_and_parent(server):
    cards = {m.id: m for m in server.client().models.list().data}
    assert (
        cards["tiny"].model_extra["parent"] is None and cards["tiny"].model_extra["max_model_len"] == CONTEXT
    )
    methods = {n: cards[n].model_extra["method"] for n in ADAPTERS}
    assert methods == {
        "lora": "lora",
        "adalora": "adalora",
        "prompt": "prompt_tuning",
        "prefix": "prefix_tuning",
        "ptuning": "p_tuning",
        "deep": "p_tuning_v2",
        "bottleneck": "bottleneck",
        "full": "full",
    }
    assert all(cards[n].model_extra["parent"] == "tiny" for n in ADAPTERS)
    assert server.client().models.retrieve("prefix").model_extra["method"] == "prefix_tuning"


def test_concurrent_requests_for_eight_adapters_equal_peftkit_generate(server, folders):
    """16 requests at once (8 adapters of 7 methods, streamed and not) share the batch; each answer
    equals `peftkit generate` with that adapter, token for token."""
    client = server.client()
    jobs = [(name, stream) for stream in (False, True) for name in ADAPTERS]
    before = server.metrics()
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: chat(client, job[0], max_tokens=16, stream=job[1]), jobs))
    tok = reference_model(str(folders["base"]), None)[1]
    for (name, stream), (tokens, text, finish) in zip(jobs, answers, strict=True):
        want = expected(folders, name, QUESTION, 16)
        assert tokens == want, f"{name} stream={stream}"
        assert finish == ("stop" if want[-1] == tok.eos_token_id else "length")
        assert text == tok.decode(want, skip_special_tokens=True)
    after = server.metrics()
    steps = after["peftkit_batch_size_count"] - before.get("peftkit_batch_size_count", 0)
    single = after['peftkit_batch_size_bucket{le="1"}'] - before.get('peftkit_batch_size_bucket{le="1"}', 0)
    assert single < steps / 2  # most steps decoded several requests' rows together
    assert len({tuple(a[0]) for a in answers[:8]}) >= 6  # the adapters really differ


def test_answers_equal_the_peftkit_generate_command(server, folders):
    for name in ("prefix",):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "peftkit",
                "generate",
                "--model",
                str(folders["base"]),
                "--adapter",
                str(folders[name]),
                "--max-new-tokens",
                "10",
                QUESTION,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=ENV,
        )
        assert out.returncode == 0, out.stderr
        assert chat(server.client(), name, max_tokens=10)[1] == out.stdout.rstrip("\n")


def test_completions_stop_seed_n_usage_and_several_prompts(server, folders):
    client = server.client()
    prompt = "the movie was"
    want = expected(folders, "lora", prompt, 12, chat=False)
    out = client.completions.create(
        model="lora", prompt=prompt, temperature=0, max_tokens=12, extra_body={"return_token_ids": True}
    )
    tok = reference_model(str(folders["base"]), None)[1]
    assert ids_of(out.choices[0]) == want and out.usage.prompt_tokens == len(tok(prompt)["input_ids"])
    assert out.usage.completion_tokens == len(
        want
    ) and out.usage.total_tokens == out.usage.prompt_tokens + len(want)
    words = out.choices[0].text.split()
    stop = words[len(words) // 2]
    cut = client.completions.create(model="lora", prompt=prompt, temperature=0, max_tokens=12, stop=[stop])
    assert cut.choices[0].text == out.choices[0].text[: out.choices[0].text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    sampled = dict(model="prefix", prompt=prompt, temperature=0.9, top_p=0.95, max_tokens=8, n=3, seed=11)
    first, again = (
        client.completions.create(**sampled, extra_body={"return_token_ids": True}) for _ in range(2)
    )
    assert [ids_of(c) for c in first.choices] == [ids_of(c) for c in again.choices]
    assert ids_of(first.choices[0]) == expected(
        folders, "prefix", prompt, 8, chat=False, strategy="sample", temperature=0.9, top_p=0.95, seed=11
    )
    assert len({tuple(ids_of(c)) for c in first.choices}) > 1 and first.usage.completion_tokens == sum(
        len(ids_of(c)) for c in first.choices
    )
    several = client.completions.create(
        model="tiny",
        prompt=["hello", "the dog"],
        temperature=0,
        max_tokens=5,
        extra_body={"return_token_ids": True},
    )
    assert [c.index for c in several.choices] == [0, 1]
    assert ids_of(several.choices[1]) == expected(folders, None, "the dog", 5, chat=False)


def test_peftkit_decoding_fields_beam_and_contrastive(server, folders):
    client = server.client()
    beams = client.completions.create(
        model="deep",
        prompt="hello world",
        max_tokens=6,
        n=2,
        extra_body={"num_beams": 3, "return_token_ids": True},
    )
    model, tok = reference_model(str(folders["base"]), str(folders["deep"]))
    enc = tok("hello world", return_tensors="pt")
    ref = generate(
        model,
        enc["input_ids"],
        None,
        decoding_config(tok, 6, strategy="beam", num_beams=3, num_return_sequences=2),
        tokenizer=tok,
    )
    for i, choice in enumerate(beams.choices):
        new = ref.new_tokens[i].tolist()
        assert ids_of(choice) == (new[: new.index(tok.eos_token_id) + 1] if tok.eos_token_id in new else new)
    contrastive = chat(client, "bottleneck", max_tokens=8, penalty_alpha=0.6, top_k=3)
    assert contrastive[0] == expected(
        folders, "bottleneck", QUESTION, 8, strategy="contrastive", penalty_alpha=0.6, top_k=3
    )
    penalised = chat(client, "full", max_tokens=10, repetition_penalty=1.5, stream=True)
    assert penalised[0] == expected(folders, "full", QUESTION, 10, repetition_penalty=1.5)


def test_stream_is_server_sent_events_ending_with_done(server):
    body = {
        "model": "prompt",
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 0,
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}


# ---- adapters loaded and unloaded while serving ----------------------------------------------------
def test_hot_load_and_unload_under_traffic(server, folders):
    client = server.client()
    want = expected(folders, "prefix", QUESTION, 6)
    stop, failures, served = threading.Event(), [], []

    def traffic():
        while not stop.is_set():
            try:
                got = chat(client, "prefix", max_tokens=6)[0]
                served.append(got == want)
            except Exception as err:  # reported below
                failures.append(repr(err))

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        r = server.post("/v1/load_lora_adapter", json={"lora_name": "hot", "lora_path": "lora"})
        assert r.status_code == 200 and "Success" in r.text
        assert chat(client, "hot")[0] == expected(folders, "lora", QUESTION, 12)
        stream = client.chat.completions.create(
            model="hot",
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            max_tokens=LONG,
            stream=True,
            extra_body={"min_tokens": LONG, "return_token_ids": True},
        )
        chunks = iter(stream)
        tokens = list(next(chunks).choices[0].model_extra.get("token_ids") or [])
        r = server.post("/v1/unload_lora_adapter", json={"lora_name": "hot"})
        assert r.status_code == 200 and "1 running requests finish" in r.text
        assert "hot" not in {m.id for m in client.models.list().data}
        with pytest.raises(openai.NotFoundError):
            chat(client, "hot")
        finish = None
        for chunk in chunks:  # the running request goes on to its last token
            for choice in chunk.choices:
                tokens += choice.model_extra.get("token_ids") or []
                finish = choice.finish_reason or finish
        assert len(tokens) == LONG and finish == "length"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # deleted once its request has ended: the name is free again
            r = server.post("/v1/load_lora_adapter", json={"lora_name": "hot", "lora_path": "prompt"})
            if r.status_code != 409:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        assert chat(client, "hot")[0] == expected(folders, "prompt", QUESTION, 12)
        assert server.post("/v1/unload_lora_adapter", json={"lora_name": "hot"}).status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures and served and all(served)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"lora_name": "x", "lora_path": "../outside"}, 403, "inside --adapter-dir"),
        ({"lora_name": "x", "lora_path": "/etc"}, 403, "inside --adapter-dir"),
        ({"lora_name": "x", "lora_path": "link-out"}, 403, "inside --adapter-dir"),
        ({"lora_name": "x", "lora_path": "pickled"}, 400, "only safetensors"),
        ({"lora_name": "x", "lora_path": "missing"}, 400, "not an adapter folder"),
        ({"lora_name": "x", "lora_path": "wrong-base"}, 400, "different base model"),
        ({"lora_name": "x", "lora_path": "corrupt"}, 400, "cannot be read"),
        ({"lora_name": "lora", "lora_path": "lora"}, 400, "already loaded"),
        ({"lora_name": "tiny", "lora_path": "lora"}, 400, "already loaded"),
        ({"lora_name": "a.b", "lora_path": "lora"}, 400, "lora_name must be"),
        ({"lora_name": "x"}, 400, "lora_path is required"),
    ],
    ids=[
        "dotdot",
        "absolute",
        "symlink",
        "pickle",
        "missing",
        "fingerprint",
        "corrupt",
        "taken",
        "base",
        "name",
        "no-path",
    ],
)
def test_a_refused_load_leaves_the_server_serving(server, folders, body, status, needle):
    r = server.post("/v1/load_lora_adapter", json=body)
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text
    assert "x" not in {m.id for m in server.client().models.list().data}
    assert chat(server.client(), "lora", max_tokens=6)[0] == expected(folders, "lora", QUESTION, 6)


def test_unloading_an_unknown_adapter_is_404(server):
    r = server.post("/v1/unload_lora_adapter", json={"lora_name": "never-loaded"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# ---- bad input -----------------------------------------------------------------------------------
CHAT = "/v1/chat/completions"
DONE = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}


def with_(**changes) -> dict:
    return {**DONE, **changes}


BAD = [
    (CHAT, b"{not json", 400, "not valid JSON"),
    (CHAT, b"[1, 2]", 400, "valid dictionary"),
    (CHAT, {"messages": DONE["messages"]}, 400, "model is required"),
    (CHAT, with_(model="nope"), 404, "does not exist"),
    (CHAT, with_(messages=[]), 400, "messages"),
    (CHAT, with_(messages=[{"role": "robot", "content": "hi"}]), 400, "role"),
    (CHAT, with_(temperature=2.5), 400, "temperature"),
    (
        CHAT,
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        400,
        "temperature",
    ),
    (CHAT, with_(top_p=0), 400, "top_p"),
    (CHAT, with_(n=0), 400, "n"),
    (CHAT, with_(n=500), 400, "batches at most"),
    (CHAT, with_(max_tokens=0), 400, "max_tokens"),
    (CHAT, with_(max_tokens=CONTEXT), 400, "context is 2048 tokens"),
    (CHAT, with_(max_tokens=4, max_completion_tokens=5), 400, "differ"),
    (CHAT, with_(stop=["a", "b", "c", "d", "e"]), 400, "stop strings"),
    (CHAT, with_(seed=2**70), 400, "seed"),
    (CHAT, with_(top_k=-1), 400, "top_k"),
    (CHAT, with_(repetition_penalty=0), 400, "repetition_penalty"),
    (CHAT, with_(num_beams=2, temperature=0.7), 400, "does not sample"),
    (CHAT, with_(num_beams=2, n=3, temperature=0), 400, "num_beams"),
    (CHAT, with_(tools=[{"type": "function"}]), 400, "unknown field 'tools'"),
    (CHAT, with_(logprobs=True), 400, "logprobs is not supported"),
    (CHAT, with_(presence_penalty=0.5), 400, "presence_penalty is not supported"),
    (CHAT, with_(stream_options={"include_usage": True}), 400, "needs stream"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "echo": True}, 400, "echo"),
    ("/v1/completions", {"model": "tiny", "prompt": [5, 10**6]}, 400, "outside the vocabulary"),
    ("/v1/completions", {"model": "tiny", "prompt": "the " * (CONTEXT + 10)}, 400, "context is 2048 tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": []}, 400, "prompt is empty"),
    ("/v1/completions", {"model": "tiny"}, 400, "prompt is required"),
    ("/v1/load_lora_adapter", {"lora_path": "lora"}, 400, "lora_name is required"),
    ("/v1/nowhere", {}, 404, "Not Found"),
    ("/v1/completions", b"x" * (5 * 1024 * 1024), 413, "at most"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"), BAD, ids=[f"{i}-{b[3][:18]}" for i, b in enumerate(BAD)]
)
def test_bad_input_is_a_4xx_with_an_openai_error_body(server, path, body, status, needle):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(
        f"{server.url}{path}", content=raw, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (
        needle in error["message"] and isinstance(error["type"], str) and "param" in error and "code" in error
    )


def test_the_server_is_still_healthy_after_bad_input(server, folders):
    assert httpx.post(f"{server.url}/v1/models", timeout=10).status_code == 405
    assert httpx.get(f"{server.url}/health", timeout=10).json() == {"status": "ok"}
    assert chat(server.client(), "deep", max_tokens=5)[0] == expected(folders, "deep", QUESTION, 5)
    errors = server.metrics()
    assert not any(k.startswith("peftkit_requests_total") and 'status="500"' in k for k in errors)


# ---- auth, the queue, disconnects -------------------------------------------------------------------
def test_api_key_guards_every_endpoint_but_health(guarded):
    url = guarded.url
    for path in ("/v1/models", "/metrics", "/v1/models/tiny"):
        r = httpx.get(f"{url}{path}", timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    for path in (CHAT, "/v1/completions", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        assert httpx.post(f"{url}{path}", json={}, timeout=10).status_code == 401
    wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{url}/", timeout=10).status_code == 200  # the page: no data, it asks for the key
    assert [m.id for m in guarded.client().models.list().data] == ["tiny"]
    assert guarded.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "y"}).status_code == 403


def test_a_full_queue_answers_429_and_a_disconnect_frees_the_row(guarded, folders):
    """One row, one waiting place: a long stream runs, a second request waits, a third is refused;
    closing the stream frees the row and the waiting request is answered."""
    client = guarded.client()
    stream = client.completions.create(
        model="tiny",
        prompt="hello",
        temperature=0,
        max_tokens=LONG,
        stream=True,
        extra_body={"min_tokens": LONG},
    )
    chunks = iter(stream)
    next(chunks)  # running now
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            lambda: client.completions.create(
                model="tiny",
                prompt="the dog",
                temperature=0,
                max_tokens=5,
                extra_body={"return_token_ids": True},
            )
        )
        deadline = time.monotonic() + 30
        while guarded.metrics()["peftkit_queue_depth"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(openai.RateLimitError) as err:
            client.completions.create(model="tiny", prompt="x", max_tokens=2)
        assert err.value.status_code == 429 and "queue is full" in str(err.value)
        stream.close()  # the client goes away mid-answer
        answer = waiting.result(timeout=60)
    assert ids_of(answer.choices[0]) == expected(folders, None, "the dog", 5, chat=False)
    deadline = time.monotonic() + 10
    while guarded.metrics()["peftkit_running_rows"] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    metrics = guarded.metrics()
    assert metrics["peftkit_running_rows"] == 0 and metrics["peftkit_queue_depth"] == 0
    assert metrics['peftkit_generation_tokens_total{model="tiny"}'] < LONG  # the long answer was cut short


def test_a_client_that_stops_waiting_frees_its_row(server):
    """A non-streamed request whose client gives up is cancelled: its row leaves the batch."""
    before = server.metrics().get('peftkit_generation_tokens_total{model="adalora"}', 0)
    body = {"model": "adalora", "prompt": "hello", "temperature": 0, "max_tokens": LONG, "min_tokens": LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 15
    while server.metrics()["peftkit_running_rows"] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = server.metrics()
    assert after["peftkit_running_rows"] == 0
    assert after['peftkit_generation_tokens_total{model="adalora"}'] - before < LONG


# ---- metrics ---------------------------------------------------------------------------------------
def test_metrics_are_prometheus_text_with_latency_histograms(server):
    chat(server.client(), "lora", max_tokens=3)
    r = server.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    m = parse_metrics(r.text)
    assert m['peftkit_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1
    assert (
        m['peftkit_generation_tokens_total{model="lora"}'] >= 3
        and m['peftkit_prompt_tokens_total{model="lora"}'] > 0
    )
    for name in (
        "time_to_first_token_seconds",
        "time_per_output_token_seconds",
        "request_latency_seconds",
        "batch_size",
    ):
        buckets = [v for k, v in m.items() if k.startswith(f"peftkit_{name}_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == m[f"peftkit_{name}_count"] > 0  # cumulative
        assert m[f"peftkit_{name}_sum"] > 0 and not math.isnan(m[f"peftkit_{name}_sum"])
    assert "# TYPE peftkit_queue_depth gauge" in r.text and "# TYPE peftkit_batch_size histogram" in r.text


# ---- the command line ------------------------------------------------------------------------------
def test_serve_refuses_bad_options_cleanly(folders, capsys):
    from peftkit.cli import main

    for args, needle in [
        (["--adapter", "nameless"], "expected NAME=FOLDER"),
        (["--max-batch", "0"], "--max-batch must be >= 1"),
        (["--adapter-dir", folders["root"] / "nope"], "no such folder"),
    ]:
        assert main(["serve", *map(str, args)]) == 2
        assert needle in capsys.readouterr().err
    pickled = f"x={folders['adapter_dir'] / 'pickled'}"
    out = subprocess.run(
        [sys.executable, "-m", "peftkit", "serve", "--model", str(folders["base"]), "--adapter", pickled],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert out.returncode == 2 and "peftkit serve: error:" in out.stderr and "only safetensors" in out.stderr
    assert "Traceback" not in out.stderr


# ---- the playground in a real browser ----------------------------------------------------------------
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def test_playground_streams_two_answers_side_by_side_in_chromium(server, tmp_path, monkeypatch):
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (browser_path and driver_path):
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium and chromedriver (.ci/run installs chromium chromium-driver)")
        pytest.skip("needs chromium and chromedriver: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{server.url}/")
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-models")
        )
        Select(driver.find_element(By.ID, "model-a")).select_by_value("prefix")
        Select(driver.find_element(By.ID, "model-b")).select_by_value("lora")
        tokens = driver.find_element(By.ID, "max-tokens")
        tokens.clear()
        tokens.send_keys("12")
        driver.find_element(By.ID, "prompt").send_keys(QUESTION)
        driver.find_element(By.ID, "send").click()
        panes = ("answer-a", "answer-b")
        WebDriverWait(driver, 60).until(
            lambda d: all(
                d.find_element(By.ID, p).get_attribute("data-state") in ("done", "error") for p in panes
            )
        )
        states = [driver.find_element(By.ID, p).get_attribute("data-state") for p in panes]
        shown = [
            driver.find_element(By.CSS_SELECTOR, f"#{p} pre").get_attribute("textContent") for p in panes
        ]
    finally:
        driver.quit()
    assert states == ["done", "done"], shown
    answers = [chat(server.client(), name, max_tokens=12)[1] for name in ("prefix", "lora")]
    assert shown == answers and all(answers) and answers[0] != answers[1]
