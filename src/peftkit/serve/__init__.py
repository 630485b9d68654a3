"""``peftkit serve``: one frozen base and adapters of any method behind an OpenAI-compatible server.

An application layer over the library (the library never imports it): :mod:`.batch` merges and
trims a running batch's KV cache, :mod:`.scheduler` admits and retires rows between decoding steps
(continuous batching), :mod:`.adapters` loads and unloads adapters while serving, :mod:`.protocol`
checks OpenAI request bodies, :mod:`.streams` assembles responses and server-sent events,
:mod:`.metrics` speaks Prometheus' text format and :mod:`.app` holds the FastAPI routes (the optional
``serve`` extra: ``pip install 'peftkit[serve]'``).
"""

from .server import build_server, check_batchable, context_length

__all__ = ["build_server", "check_batchable", "context_length"]
