"""P-tuning v2 config (Liu et al. 2022, sec. 3): prompts as prefix tokens in every layer, no
reparametrisation by default (sec. 3.3: it helps some tasks only), heads on the [CLS]/token outputs."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError
from ..prefix_tuning.config import PrefixTuningConfig


@dataclass
class PTuningV2Config(PrefixTuningConfig):
    """P-tuning v2: a prefix tuning config aimed at sequence and token classification.

    Args:
        share_prompts_with: the name of an adapter of this model whose deep prompts this adapter
            uses too (multi-task training, sec. 3.3: one prompt set, a head per task).
    """

    share_prompts_with: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.share_prompts_with is not None and not (
            isinstance(self.share_prompts_with, str) and self.share_prompts_with
        ):
            raise ConfigError(
                "share_prompts_with", f"must be an adapter name, got {self.share_prompts_with!r}"
            )
