"""(IA)^3 config (Liu et al. 2022, sec. 3.3): which layers' outputs, and which inputs, are rescaled."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ...config import PeftConfig, Targets, check_targets
from ...errors import ConfigError


@dataclass
class IA3Config(PeftConfig):
    """Infused Adapter by Inhibiting and Amplifying Inner Activations: one learned vector per adapted layer.

    A targeted layer's output is multiplied by its vector ``l`` (attention keys and values: ``l_k``,
    ``l_v``); a targeted *feed-forward* layer's input is (``l_ff``, the activation between the two FFN
    layers). Without ``target_modules`` / ``feedforward_modules`` the model's architecture picks them (peft's
    tables: keys, values and the FFN's second layer).

    Args:
        feedforward_modules: the targeted modules whose *input* is rescaled: a list (a module whose name ends
            with an entry, peft's rule) or a regex matched against the full name; must be among
            ``target_modules`` when both are lists.
        fan_in_fan_out: whether the adapted layers store their weight ``(d_in, d_out)`` (GPT-2's Conv1D).
            Read from each layer's type: a value that contradicts it is corrected with a warning (as peft).
        init_ia3_weights: start every vector at ones (the identity); ``False`` draws them from N(0, 1)
            (peft's option, for tests: the adapter then changes outputs from the start).
    """

    feedforward_modules: Targets = None
    fan_in_fan_out: bool = False
    init_ia3_weights: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.feedforward_modules = check_targets("feedforward_modules", self.feedforward_modules)
        targets, feedforward = self.target_modules, self.feedforward_modules
        if (
            isinstance(targets, list)
            and isinstance(feedforward, list)
            and not set(feedforward) <= set(targets)
        ):
            raise ConfigError(
                "feedforward_modules",
                f"`feedforward_modules` should be a subset of `target_modules`: "
                f"{sorted(set(feedforward) - set(targets))} are not targeted",
            )

    def is_feedforward(self, module_name: str) -> bool:
        """peft's rule: a regex matches the full name; a list entry matches a name ending with it."""
        feedforward = self.feedforward_modules
        if isinstance(feedforward, str):
            return re.fullmatch(feedforward, module_name) is not None
        return any(module_name.endswith(entry) for entry in feedforward or [])
