"""Serving: `peftkit serve` (continuous batching) beside the same server one request at a time and
beside the loop a user would write today with `peft` + `transformers` (``set_adapter`` per request).

SmolLM2-135M with 8 adapters, two each of LoRA, prompt tuning, prefix tuning and bottleneck (peft has
no bottleneck adapters: the baseline runs those two with peftkit's layers inside the same
``transformers`` generate loop; peftkit has no IA3). Random adapter weights (perturbed from their
initialisation), saved to a temporary folder. ``C`` clients (1, 4, 16, 32 by default) each send
``--requests`` chat requests back to back, adapters and questions mixed round-robin, every answer
exactly ``--max-tokens`` tokens (``min_tokens = max_tokens``), greedy. Reported per system and
client count: throughput (generated tokens / wall time), time to first token and request latency
p50/p95, failures; and whether the greedy answers are identical across systems. ``--soak S`` then
runs the batched server at ``--soak-clients`` clients for S seconds: failed requests and the server's
resident memory (growth after the first minute of warm-up).

Everything runs on 127.0.0.1, bounded in requests and time::

    .venv/bin/python bench/serve.py [--clients 1,4,16,32] [--requests 4] [--max-tokens 64]
        [--systems batched,serial,peft] [--soak 600] [--threads N] [--out bench/results/serve.json]

Smoke run (minutes): ``--clients 1,2 --requests 1 --max-tokens 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import torch
from lora_overhead import machine_info  # the same machine record as the other benchmarks

from peftkit import BottleneckConfig, LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from peftkit.io import atomic_write_json
from peftkit.models import load_model, resolve_model_path

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write a haiku about rain.",
    "Explain what a neural network is in one sentence.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Translate 'good morning' into German.",
    "List the planets of the solar system.",
]
ADAPTERS = {
    "lora-qv": lambda: LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    "lora-qkv": lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]),
    "prompt-16": lambda: PromptTuningConfig(num_virtual_tokens=16),
    "prompt-8": lambda: PromptTuningConfig(num_virtual_tokens=8),
    "prefix-16": lambda: PrefixTuningConfig(num_virtual_tokens=16),
    "prefix-8": lambda: PrefixTuningConfig(num_virtual_tokens=8),
    "bottleneck-pfeiffer": lambda: BottleneckConfig(placement="pfeiffer", reduction_factor=16),
    "bottleneck-houlsby": lambda: BottleneckConfig(placement="houlsby", reduction_factor=32),
}
PEFT_FAMILIES = {"lora": "lora-", "prompt": "prompt-", "prefix": "prefix-"}  # the rest: peftkit layers


def save_adapters(model_dir: str, root: Path) -> dict[str, Path]:
    out = {}
    for i, (name, make) in enumerate(ADAPTERS.items()):
        model, _ = load_model(model_dir)
        peft_model = get_peft_model(model, make())
        g = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            params = [p for _, layer in peft_model.layers() for p in layer.adapter_parameters("default")]
            for p in params:  # LoRA's B and bottleneck up-projections start at zero
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        peft_model.save_pretrained(root / name)
        out[name] = root / name
    return out


def requests_for(clients: int, per_client: int) -> list[list[tuple[str, str]]]:
    names = list(ADAPTERS)
    plan, k = [], 0
    for _ in range(clients):
        mine = []
        for _ in range(per_client):
            mine.append((names[k % len(names)], QUESTIONS[(k // len(names)) % len(QUESTIONS)]))
            k += 1
        plan.append(mine)
    return plan


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarise(records: list[dict], wall: float) -> dict:
    ok = [r for r in records if r.get("error") is None]
    tokens = sum(len(r["tokens"]) for r in ok)
    return {
        "requests": len(records),
        "failed": len(records) - len(ok),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall else float("nan"),
        "ttft_p50_s": percentile([r["ttft"] for r in ok], 0.5),
        "ttft_p95_s": percentile([r["ttft"] for r in ok], 0.95),
        "latency_p50_s": percentile([r["latency"] for r in ok], 0.5),
        "latency_p95_s": percentile([r["latency"] for r in ok], 0.95),
    }


# ---- the server, batched or one at a time -----------------------------------------------------------
class Server:
    def __init__(self, model_dir: str, adapters: dict[str, Path], max_batch: int, threads: int, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "peftkit",
            "serve",
            "--model",
            model_dir,
            "--served-model-name",
            "base",
            "--port",
            str(self.port),
            "--max-batch",
            str(max_batch),
            "--max-queue",
            "4096",
        ]
        for name, folder in adapters.items():
            cmd += ["--adapter", f"{name}={folder}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"peftkit serve exited:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("peftkit serve did not come up in 10 minutes")

    def ask(self, client: httpx.Client, adapter: str, question: str, max_tokens: int) -> dict:
        body = {
            "model": adapter,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "stream": True,
            "return_token_ids": True,
        }
        start, first, tokens = time.perf_counter(), None, []
        try:
            with client.stream("POST", f"{self.url}/v1/chat/completions", json=body, timeout=600) as r:
                if r.status_code != 200:
                    return {"error": f"{r.status_code} {r.read()[:200]!r}", "tokens": []}
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    for choice in json.loads(line[6:]).get("choices", []):
                        if choice.get("token_ids"):
                            first = first or time.perf_counter()
                            tokens += choice["token_ids"]
        except httpx.HTTPError as err:
            return {"error": repr(err), "tokens": []}
        end = time.perf_counter()
        return {
            "adapter": adapter,
            "question": question,
            "tokens": tokens,
            "ttft": (first or end) - start,
            "latency": end - start,
            "error": None,
        }

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def drive(ask, plan: list[list[tuple[str, str]]], max_tokens: int) -> tuple[list[dict], float]:
    """Each client sends its requests back to back; all clients at once."""

    def client(mine):
        with httpx.Client() as http:
            return [ask(http, a, q, max_tokens) for a, q in mine]

    start = time.perf_counter()
    with ThreadPoolExecutor(len(plan)) as pool:
        results = list(pool.map(client, plan))
    return [r for mine in results for r in mine], time.perf_counter() - start


# ---- the baseline: peft + transformers generate, one request at a time -------------------------------
class PeftLoop:
    """One worker thread serving a queue: ``set_adapter`` then ``generate`` per request. peft models
    (one base copy per adapter type) use ``transformers`` generate; the bottleneck adapters, which peft
    lacks, run peftkit's layers inside the same ``transformers`` generate; a type peft fails to load
    falls back to peftkit's engine and is named in ``fallbacks``."""

    def __init__(self, model_dir: str, adapters: dict[str, Path]):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.base = lambda: AutoModelForCausalLM.from_pretrained(model_dir)
        self.models: dict[str, tuple[object, str]] = {}  # adapter -> (model, how it generates)
        self.fallbacks: dict[str, str] = {}
        for family, prefix in PEFT_FAMILIES.items():
            names = [n for n in adapters if n.startswith(prefix)]
            try:
                self._add(names, self._peft(names, adapters), "transformers")
            except Exception as err:  # recorded in the report
                self.fallbacks[family] = repr(err)
                self._add(names, self._peftkit(names, adapters), "peftkit-engine")
        rest = [n for n in adapters if n not in self.models]
        if rest:
            self._add(rest, self._peftkit(rest, adapters), "transformers-base")
        self.jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, daemon=True).start()

    def _add(self, names: list[str], model, how: str) -> None:
        self.models.update({n: (model.eval(), how) for n in names})

    def _peft(self, names: list[str], adapters: dict[str, Path]):
        import peft

        model = peft.PeftModel.from_pretrained(self.base(), adapters[names[0]], adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(adapters[name], adapter_name=name)
        return model

    def _peftkit(self, names: list[str], adapters: dict[str, Path]):
        from peftkit import PeftModel

        model = PeftModel.from_pretrained(self.base(), adapters[names[0]], names[0])
        for name in names[1:]:
            model.load_adapter(adapters[name], name)
        return model

    def _generate(self, adapter: str, question: str, max_tokens: int, on_first) -> list[int]:
        from transformers.generation.streamers import BaseStreamer

        class First(BaseStreamer):
            calls = 0

            def put(self, value):
                self.calls += 1
                if self.calls == 2:  # the first call carries the prompt
                    on_first()

            def end(self):
                pass

        model, how = self.models[adapter]
        model.set_adapter(adapter)
        chat = [{"role": "user", "content": question}]
        text = self.tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        enc = self.tok(text, return_tensors="pt", add_special_tokens=False)
        kw = {
            "max_new_tokens": max_tokens,
            "min_new_tokens": max_tokens,
            "pad_token_id": self.tok.pad_token_id,
        }
        with torch.no_grad():
            if how == "peftkit-engine":
                out = model.generate(
                    enc["input_ids"],
                    enc["attention_mask"],
                    eos_token_id=self.tok.eos_token_id,
                    streamer=lambda tokens, finished: on_first(),
                    **kw,
                )
            else:
                generate = model.base_model.generate if how == "transformers-base" else model.generate
                out = generate(**enc, do_sample=False, streamer=First(), **kw)
        return out[0, enc["input_ids"].shape[1] :].tolist()

    def _work(self) -> None:
        while True:
            adapter, question, max_tokens, record, done = self.jobs.get()
            try:
                record["tokens"] = self._generate(
                    adapter, question, max_tokens, lambda r=record: r.setdefault("first", time.perf_counter())
                )
                record["error"] = None
            except Exception as err:  # reported as a failed request
                record["error"], record["tokens"] = repr(err), []
            done.set()

    def ask(self, http, adapter: str, question: str, max_tokens: int) -> dict:
        record, done = {"adapter": adapter, "question": question}, threading.Event()
        start = time.perf_counter()
        self.jobs.put((adapter, question, max_tokens, record, done))
        done.wait()
        end = time.perf_counter()
        record.update(ttft=record.pop("first", end) - start, latency=end - start)
        return record


# ---- the run ------------------------------------------------------------------------------------------
def soak(server: Server, clients: int, seconds: float, max_tokens: int) -> dict:
    stop, failures, done, rss = threading.Event(), [], [0], []
    names = list(ADAPTERS)

    def client(i):
        with httpx.Client() as http:
            k = i
            while not stop.is_set():
                r = server.ask(http, names[k % len(names)], QUESTIONS[k % len(QUESTIONS)], max_tokens)
                if r["error"]:
                    failures.append(r["error"])
                done[0] += 1
                k += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        rss.append((time.monotonic() - start, server.rss()))
        time.sleep(5)
    stop.set()
    for t in threads:
        t.join(timeout=600)
    warm = [m for t, m in rss if t >= min(60.0, seconds / 4)] or [m for _, m in rss]
    return {
        "seconds": seconds,
        "clients": clients,
        "requests": done[0],
        "failed": len(failures),
        "failures": failures[:5],
        "rss_after_warmup_mb": warm[0] / 2**20,
        "rss_end_mb": warm[-1] / 2**20,
        "rss_growth_pct": 100.0 * (warm[-1] - warm[0]) / warm[0],
        "rss_samples": rss,
    }


def table(results: dict) -> str:
    lines = [
        "| system | clients | tokens/s | TTFT p50 | TTFT p95 | latency p50 | latency p95 | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system, cells in results.items():
        for clients, s in cells.items():
            lines.append(
                f"| {system} | {clients} | {s['tokens_per_s']:.1f} | {s['ttft_p50_s']:.2f} s | "
                f"{s['ttft_p95_s']:.2f} s | {s['latency_p50_s']:.2f} s | {s['latency_p95_s']:.2f} s | "
                f"{s['failed']} |"
            )
    return "\n".join(lines)


def identical(outputs: dict[str, dict]) -> dict[str, dict[str, str]]:
    """Per system pair and adapter: how many of its (adapter, question) answers are token-identical."""
    systems, out = list(outputs), {}
    for i, a in enumerate(systems):
        for b in systems[i + 1 :]:
            keys = sorted(set(outputs[a]) & set(outputs[b]))
            pair = out[f"{a} vs {b}"] = {}
            for adapter in dict.fromkeys(k.split("|")[0] for k in keys):
                mine = [k for k in keys if k.startswith(adapter + "|")]
                pair[adapter] = f"{sum(outputs[a][k] == outputs[b][k] for k in mine)}/{len(mine)}"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--clients", default="1,4,16,32")
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--systems", default="batched,serial,peft")
    p.add_argument("--soak", type=float, default=0.0, help="seconds of soak at --soak-clients (0: none)")
    p.add_argument("--soak-clients", type=int, default=16)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=Path("bench/results/serve.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clients = [int(c) for c in args.clients.split(",")]
    model_dir = resolve_model_path(args.model)
    results, outputs, extra = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="peftkit-bench-serve-") as tmp:
        adapters = save_adapters(model_dir, Path(tmp) / "adapters")
        for system in args.systems.split(","):
            runner, server = None, None
            if system in ("batched", "serial"):
                server = Server(
                    model_dir,
                    adapters,
                    32 if system == "batched" else 1,
                    args.threads,
                    Path(tmp) / f"{system}.log",
                )
                runner = server.ask
            elif system == "peft":
                loop = PeftLoop(model_dir, adapters)
                runner, extra["peft_fallbacks"] = loop.ask, loop.fallbacks
            else:
                raise SystemExit(f"unknown system {system!r}: batched, serial or peft")
            try:
                drive(runner, requests_for(1, len(ADAPTERS)), args.max_tokens)  # warm-up: every adapter once
                results[system], outputs[system] = {}, {}
                for c in clients:
                    records, wall = drive(runner, requests_for(c, args.requests), args.max_tokens)
                    results[system][c] = summarise(records, wall)
                    for r in records:
                        if r.get("error") is None:
                            outputs[system][f"{r['adapter']}|{r['question']}"] = r["tokens"]
                    print(system, c, json.dumps(results[system][c]), flush=True)
                if system == "batched" and args.soak > 0:
                    extra["soak"] = soak(server, args.soak_clients, args.soak, args.max_tokens)
                    print("soak", json.dumps({k: v for k, v in extra["soak"].items() if k != "rss_samples"}))
            finally:
                if server is not None:
                    server.stop()
    report = {
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": results,
        "identical_greedy_answers": identical(outputs),
        **extra,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report)
    print(table(results))
    print("identical greedy answers:", report["identical_greedy_answers"])


if __name__ == "__main__":
    main()
