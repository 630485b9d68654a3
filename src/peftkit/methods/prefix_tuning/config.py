"""Prefix tuning config (Li & Liang 2021, sec. 4): ``h_i = P_theta[i]`` for prefix positions, every layer."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import PeftConfig, check_choice, check_positive_int
from ...errors import ConfigError
from ...virtual import PromptLearningConfig

PREFIX_INITS = ("RANDOM", "SAMPLE_VOCAB")
MLP_PREFIX_LR = 5e-4  # see PrefixTuningConfig.default_lr


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Prefix tuning.

    Args:
        prefix_projection: reparametrise the prefix through an MLP while training
            (``P = MLP(P')``, sec. 4.3: more stable optimisation); :func:`eject` bakes it in.
        encoder_hidden_size: the MLP's hidden width.
        prefix_init: ``"RANDOM"`` (N(0, 1), peft's default) or ``"SAMPLE_VOCAB"``: the frozen model's
            own keys and values for random vocabulary tokens (sec. 7.2: initialising with the
            activations of real words helps markedly with little data). Flat prefixes only.
    """

    prefix_projection: bool = False
    encoder_hidden_size: int | None = None
    prefix_init: str = "RANDOM"

    @property
    def default_lr(self) -> float:  # type: ignore[override]
        """The rate of a run that leaves ``train.lr`` unset: with the MLP, 5e-4, chosen on SST-2
        validation rows over 3 seeds (bench/results/tuning/tuning.md: 80.2 +- 2.3 with no seed stuck;
        1e-3 left a seed on one class, 3e-3 all three, 1e-4 one; run before the prefix took peft's
        gradient order, after which the suite's held-out rows gave 79.7 +- 1.2 over 5 seeds, none
        stuck); flat prefixes (P-tuning v2 too) were not tuned and take the base default."""
        return MLP_PREFIX_LR if self.prefix_projection else PeftConfig.default_lr

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder_hidden_size is not None:
            check_positive_int("encoder_hidden_size", self.encoder_hidden_size)
        check_choice("prefix_init", self.prefix_init, PREFIX_INITS)
        if self.prefix_init != "RANDOM" and self.prefix_projection:
            raise ConfigError(
                "prefix_init",
                f"{self.prefix_init!r} sets flat prefixes; it does not apply with prefix_projection=True "
                "(set one of the two)",
            )
