"""``modules_to_save``: whole modules (e.g. a new classification head) trained in full per adapter.

The wrapper keeps ``original_module`` untouched and one trainable copy per adapter in
``modules_to_save[name]``, the layout and key scheme of ``peft`` (saved keys drop
``modules_to_save.<name>.``). It follows the adapter-layer protocol, so activation, disabling,
saving and mixed batches work through the same code as every method.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import AdapterError, TargetError
from .layer import AdapterLayer, attach
from .rows import current_rows, mix_rows
from .targeting import iter_modules, name_matches


class ModulesToSaveWrapper(AdapterLayer):
    adapter_containers = ("modules_to_save",)
    base_attr = "original_module"

    def __init__(self, module: nn.Module):
        super().__init__(module)
        self.modules_to_save = nn.ModuleDict()

    def add(self, name: str, config=None, module_name: str = "") -> None:
        clone = copy.deepcopy(self.original_module)
        for p in clone.parameters():
            p.requires_grad_(True)
        self.modules_to_save[name] = clone

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return (
            {k: v for k, v in self.modules_to_save[name].state_dict().items()}
            if name in self.modules_to_save
            else {}
        )

    def load_adapter_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> None:
        try:
            self.modules_to_save[name].load_state_dict(state)
        except RuntimeError as err:
            raise AdapterError(
                f"modules_to_save for adapter {name!r} does not fit this model: {err}"
            ) from err

    def merge(self, names: list[str] | None = None) -> None:
        """Nothing to fold in: the active copy simply replaces the original on unload."""

    def unmerge(self) -> None:
        """Nothing was folded in."""

    def _chosen(self) -> nn.Module:
        if self.disabled:
            return self.original_module
        for name in reversed(self.active):
            return self.modules_to_save[name]
        return self.original_module

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.disabled or not current_rows().mixed:
            return self._chosen()(x, *args, **kwargs)

        def copy_of(name: str, rows: torch.Tensor) -> torch.Tensor:
            return self.modules_to_save[name](x[rows], *args, **kwargs)

        return mix_rows(self.original_module(x, *args, **kwargs), self.modules_to_save, copy_of, add=False)

    def unwrapped(self) -> nn.Module:
        """What replaces the wrapper on ``merge_and_unload``: the active copy, else the original."""
        return self._chosen()


def wrap_modules_to_save(model: nn.Module, names: list[str], adapter_name: str) -> list[str]:
    """Wrap (or extend) every module matching ``names``; return their paths."""
    paths = [n for n, _ in iter_modules(model) if n and name_matches(n, names)]
    if not paths:
        raise TargetError(f"modules_to_save={names} matched no module of {type(model).__name__}")
    for path in paths:
        attach(model, path, ModulesToSaveWrapper, "modules_to_save").join(adapter_name, None, path)
    return paths
