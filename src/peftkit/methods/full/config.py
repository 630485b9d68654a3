"""Full fine-tuning as a method: every parameter of the targeted modules trains, ``W = W0 + D``."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import PeftConfig


@dataclass
class FullConfig(PeftConfig):
    """Full fine-tuning under the adapter API, so every method can be compared with it.

    Each targeted module keeps its frozen weights ``W0`` and gains, per adapter, a trainable
    delta ``D`` (zero at init) for every one of its parameters; the module runs with
    ``W0 + D``. Gradients reach ``D`` exactly as they would reach ``W`` in plain fine-tuning,
    so SGD on ``D`` follows the same path as SGD on ``W``; merging writes ``W0 + D`` back.

    Targeting: with ``target_modules=None`` (the default) every module holding parameters of
    its own is adapted (Linear, Conv1D, Embedding, LayerNorm, RMSNorm, ...), except modules in
    ``modules_to_save`` (trained by their own copy). Otherwise the shared targeting forms apply
    and a targeted module adapts all its parameters, its sub-modules' included.
    ``exclude_modules`` and ``layers_to_transform`` narrow either form.

    Cost: one delta per base parameter, so training memory is that of full fine-tuning plus a
    frozen copy of the base.
    """
