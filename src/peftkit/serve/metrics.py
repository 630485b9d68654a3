"""Server metrics in the Prometheus text exposition format (version 0.0.4), without a client library.

Counters and histograms carry labels as sorted ``(name, value)`` tuples; every update takes one lock,
so the scheduler thread and the web threads can record at once.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = [*labels, extra] if extra else list(labels)
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass
class Counter:
    name: str
    help: str
    kind: str = "counter"
    values: dict[Labels, float] = field(default_factory=dict)

    def add(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def lines(self) -> list[str]:
        values = self.values or ({(): 0.0} if self.kind == "gauge" else {})
        return [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(values.items())]


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    kind: str = "histogram"
    counts: dict[Labels, list[int]] = field(default_factory=dict)  # per bucket, then +Inf
    sums: dict[Labels, float] = field(default_factory=dict)

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1  # le is inclusive
        self.sums[key] = self.sums.get(key, 0.0) + value

    def lines(self) -> list[str]:
        out = []
        for key, counts in sorted(self.counts.items()):
            total = 0
            for bound, count in zip([*self.buckets, float("inf")], counts, strict=True):
                total += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                out.append(f"{self.name}_bucket{_labels(key, ('le', le))} {total}")
            out.append(f"{self.name}_sum{_labels(key)} {_number(self.sums[key])}")
            out.append(f"{self.name}_count{_labels(key)} {total}")
        return out


class Metrics:
    """What ``GET /metrics`` reports (names prefixed ``peftkit_``)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = Counter("peftkit_requests_total", "HTTP requests answered, by endpoint and status")
        self.prompt_tokens = Counter("peftkit_prompt_tokens_total", "prompt tokens prefilled, by model")
        self.generation_tokens = Counter("peftkit_generation_tokens_total", "tokens generated, by model")
        self.queue = Counter("peftkit_queue_depth", "requests waiting to join the batch", kind="gauge")
        self.running = Counter("peftkit_running_rows", "rows in the running batch", kind="gauge")
        self.batch = Histogram("peftkit_batch_size", "rows per decoding step", BATCH_BUCKETS)
        self.ttft = Histogram(
            "peftkit_time_to_first_token_seconds", "from arrival to the first new token", LATENCY_BUCKETS
        )
        self.per_token = Histogram(
            "peftkit_time_per_output_token_seconds", "between consecutive tokens of a choice", LATENCY_BUCKETS
        )
        self.latency = Histogram(
            "peftkit_request_latency_seconds", "from arrival to the last token", LATENCY_BUCKETS
        )
        self.all = [
            self.requests, self.prompt_tokens, self.generation_tokens, self.queue, self.running,
            self.batch, self.ttft, self.per_token, self.latency,
        ]  # fmt: skip

    def count(self, metric: Counter | Histogram, value: float = 1.0, **labels: str) -> None:
        with self.lock:
            if isinstance(metric, Histogram):
                metric.observe(value, **labels)
            else:
                metric.add(value, **labels)

    def gauge(self, metric: Counter, value: float) -> None:
        with self.lock:
            metric.set(value)

    def render(self) -> str:
        with self.lock:
            parts = []
            for metric in self.all:
                parts += [f"# HELP {metric.name} {metric.help}", f"# TYPE {metric.name} {metric.kind}"]
                parts += metric.lines()
            return "\n".join(parts) + "\n"
