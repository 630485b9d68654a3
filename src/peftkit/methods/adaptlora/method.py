"""AdaPtLoRA's registration: gated LoRA layers where targeted, per-task prompts at the input, the gates
as a figure. Saved in peft's layout (keys ``lora_A.weight``, ``lora_B.weight``, ``lora_gate``, and
``prompt_embeddings`` of shape ``(tasks * l_p, d)``); peft has no such method, so the config names
``peftkit_method: adaptlora``."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ...figures import Heatmap
from ...layer import adapter_layers
from ...registry import LayerMethod, register_method
from ...virtual import check_sizes, model_dims
from .config import AdaPtLoraConfig
from .layer import GatedLoraLinear, TaskPrompts


@register_method("adaptlora", config=AdaPtLoraConfig)
class AdaPtLoraMethod(LayerMethod):
    layer_types = {nn.Linear: GatedLoraLinear, Conv1D: GatedLoraLinear}

    def virtual_tokens(
        self, model: nn.Module, config: AdaPtLoraConfig, others: dict[str, nn.Module]
    ) -> TaskPrompts:
        check_sizes(model, config)
        words = model.get_input_embeddings()
        prompts = TaskPrompts(config, model_dims(model).hidden, words.weight.device)
        if config.prompt_init == "vocab" and not config.inference_mode:
            prompts.init_from_vocabulary(words)
        return prompts

    def figures(self, model: nn.Module, config: AdaPtLoraConfig, adapter_name: str) -> list[Heatmap]:
        values = gate_values(model, adapter_name)
        modules = list(values)
        grid = [[values[m][t] for t in config.tasks] for m in modules]
        title = f"AdaPtLoRA gates s_t = sigmoid(g_t) ({adapter_name})"
        return [Heatmap(grid, modules, list(config.tasks), title, f"gates_{adapter_name}")]


def gate_values(model: nn.Module, adapter_name: str) -> dict[str, dict[str, float]]:
    """``{module path: {task: s_t}}``: how much each task uses the shared LoRA of each layer."""
    out: dict[str, dict[str, float]] = {}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path, layer in adapter_layers(base):
        if isinstance(layer, GatedLoraLinear) and adapter_name in layer.lora_gate:
            tasks = layer.configs[adapter_name].tasks
            with torch.no_grad():
                s = torch.sigmoid(layer.lora_gate[adapter_name]).tolist()
            out[path] = dict(zip(tasks, s))
    return out
