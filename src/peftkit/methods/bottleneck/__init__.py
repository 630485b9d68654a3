"""Bottleneck adapters (Houlsby et al. 2019, Pfeiffer et al. 2021, He et al. 2022) placed by
architecture slots, with MAD-X style stacking.

On disk (``save_pretrained``), an adapter is peft's layout with peftkit's own keys:

- ``adapter_config.json``: the :class:`BottleneckConfig` fields, ``"peftkit_method": "bottleneck"``
  and ``"peft_type": null`` (peft has no bottleneck adapters, so peft cannot load it).
- ``adapter_model.safetensors``: per site ``base_model.model.<slot module path>.bottleneck.``
  ``{down,up}.{weight,bias}`` (and ``norm.{weight,bias}`` with ``adapter_layernorm``), fp32;
  e.g. ``base_model.model.bert.encoder.layer.0.output.dense.bottleneck.down.weight`` of shape
  ``(width, hidden)``. Modules in ``modules_to_save`` follow peft's keys. The metadata holds a
  fingerprint of the base model (model type, shapes of the slot modules).
"""

from .config import BottleneckConfig
from .layer import Bottleneck, BottleneckLayer, Stack
from .method import BottleneckMethod

__all__ = ["Bottleneck", "BottleneckConfig", "BottleneckLayer", "BottleneckMethod", "Stack"]
