"""Deep prompts: per-layer keys and values, the same maths and layout as prefix tuning."""

from __future__ import annotations

from ..prefix_tuning.layer import PrefixEncoder


class DeepPrompt(PrefixEncoder):
    """Per-layer prompts; ``share`` makes another adapter's prompt the one this adapter uses."""

    def share(self, other: PrefixEncoder) -> None:
        self.embedding, self.head = other.embedding, other.head
