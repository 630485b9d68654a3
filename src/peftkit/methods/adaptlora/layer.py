"""AdaPtLoRA's pieces: the gated shared LoRA layer and the per-task prompts.

Layer: ``y = base(x) + s_t * (alpha / r) * B(A(dropout(x)))`` with ``s_t = sigmoid(g[t])``, one
logit per task in every adapted layer (``lora_gate``, shape ``(tasks,)``); ``A`` and ``B`` are shared
by all tasks. Each row of a batch uses its own task's gate.

Prompts: ``(tasks, l_p, d)`` vectors; each row gets its task's ``l_p`` vectors in front of its input
embeddings through the virtual-token stage (:mod:`peftkit.virtual`), which asks :meth:`TaskPrompts.for_task`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...config import check_rank
from ...errors import AdapterError
from ...rows import current_rows
from ...virtual import PEFT_KEY, InputAdapter, check_shape
from ..lowrank import LowRankLayer
from .config import AdaPtLoraConfig


class GatedLoraLinear(LowRankLayer):
    """Shared LoRA on ``nn.Linear`` (4-bit ones included) or GPT-2's ``Conv1D``, gated per task."""

    adapter_containers = ("lora_A", "lora_B", "lora_gate")

    def __init__(self, base_layer: nn.Module):
        super().__init__(base_layer)
        self.lora_A, self.lora_B = nn.ModuleDict(), nn.ModuleDict()
        self.lora_gate = nn.ParameterDict()
        self.configs: dict[str, AdaPtLoraConfig] = {}

    def add(self, name: str, config: AdaPtLoraConfig, module_name: str) -> None:
        check_rank("r", config.r, self.in_features, self.out_features, module_name)
        kw = self.new_tensor_kwargs()
        self.lora_A[name] = nn.Linear(self.in_features, config.r, bias=False, **kw)  # (r, d_in)
        self.lora_B[name] = nn.Linear(config.r, self.out_features, bias=False, **kw)  # (d_out, r)
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[name].weight)
        self.lora_gate[name] = nn.Parameter(torch.full((len(config.tasks),), float(config.gate_init), **kw))
        self.add_path(name, config.lora_dropout, config.lora_alpha / config.r)
        self.configs[name] = config

    def gates(self, name: str, tasks: list[str | None]) -> torch.Tensor:
        """``(n,)``: ``s_t = sigmoid(g[t])`` of each row's task."""
        index = [self.configs[name].task_index(t) for t in tasks]
        gate = self.lora_gate[name]
        return torch.sigmoid(gate[torch.tensor(index, device=gate.device)])

    def adapter_delta(self, name: str, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Each row's update gated by its own task (the routing is narrowed to the rows of ``x``)."""
        tasks = current_rows().task_rows(x.shape[0])
        s = self.gates(name, tasks).view(-1, *[1] * (x.dim() - 1))  # (n, 1, ...)
        A, B = self.lora_A[name], self.lora_B[name]
        return s * B(A(self.dropped(name, x, A.weight.dtype))) * self.scaling[name]  # (n, ..., d_out)

    def delta_weight(self, name: str) -> None:
        return None  # the update depends on each row's task: nothing to merge

    def delete(self, name: str) -> None:
        super().delete(name)
        self.configs.pop(name, None)


class TaskPrompts(InputAdapter):
    """Every task's prompt, ``prompts``: ``(tasks, l_p, d)``. Rows get their task's prompt through
    :meth:`for_task` (a view sharing this module's parameter)."""

    def __init__(self, config: AdaPtLoraConfig, width: int, device: torch.device):
        super().__init__(config.num_virtual_tokens)
        self.config = config
        shape = (len(config.tasks), config.num_virtual_tokens, width)
        self.prompts = nn.Parameter(torch.randn(*shape, device=device))  # (tasks, l_p, d)
        self._views: dict[int, TaskPromptView] = {}

    @torch.no_grad()
    def init_from_vocabulary(self, words: nn.Embedding, generator: torch.Generator | None = None) -> None:
        """Each prompt vector becomes the embedding of a random vocabulary token."""
        count = self.prompts.shape[0] * self.prompts.shape[1]
        ids = torch.randint(0, words.weight.shape[0], (count,), generator=generator)
        vectors = words(ids.to(words.weight.device)).float()  # (tasks * l_p, d)
        self.prompts.copy_(vectors.view_as(self.prompts))

    def for_task(self, task: str | None) -> TaskPromptView:
        index = self.config.task_index(task)
        if index not in self._views:
            self._views[index] = TaskPromptView(self, index)
        return self._views[index]

    def virtual_embeddings(self) -> torch.Tensor:
        raise AdapterError(
            "AdaPtLoRA's prompts are per task: the virtual-token stage serves each row for_task()"
        )

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        return {PEFT_KEY: self.prompts.detach().reshape(-1, self.prompts.shape[-1])}  # (tasks * l_p, d)

    def load_peft_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        value = state.get(PEFT_KEY)
        if value is None:
            raise AdapterError(f"the checkpoint has no {PEFT_KEY!r} tensor")
        flat = self.prompts.shape[0] * self.prompts.shape[1], self.prompts.shape[2]
        check_shape(PEFT_KEY, value, flat)
        with torch.no_grad():
            self.prompts.copy_(value.view_as(self.prompts).to(self.prompts.dtype))


class TaskPromptView(InputAdapter):
    """One task's prompt, ``(l_p, d)``: what the input-adapter hook places in front of a row."""

    def __init__(self, owner: TaskPrompts, index: int):
        super().__init__(owner.num_virtual_tokens)
        self._owner = (owner,)  # a plain reference: the parameter belongs to the owner alone
        self.index = index

    def virtual_embeddings(self) -> torch.Tensor:
        return self._owner[0].prompts[self.index]  # (l_p, d)
