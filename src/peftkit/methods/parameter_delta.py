"""What full fine-tuning and the selection methods share: adapters that change a module's own
parameters, ``W0 + delta``, rather than adding a side path.

* *where*: :func:`parameter_targets` picks the outermost modules that hold parameters (outside
  ``modules_to_save``), and :func:`wrap` puts one layer class around each;
* *how*: :class:`ParameterDeltaLayer` runs the wrapped module with its parameters replaced by
  ``W0 + delta`` (through :func:`torch.func.functional_call`, so any module can be wrapped), and
  merges, unmerges, disables and mixes rows the same way for every kind of delta. A subclass says
  what the deltas are (:meth:`~ParameterDeltaLayer.deltas`) and which of them merging folds in.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..errors import AdapterError, TargetError
from ..layer import AdapterLayer, attach
from ..rows import current_rows, mix_rows
from ..targeting import filter_targets, find_targets, iter_modules, name_matches


class ParameterDeltaLayer(AdapterLayer):
    """Wraps any module; adapter ``name`` runs it with ``W0 + delta`` for each of its deltas."""

    def deltas(self, name: str) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """Every delta adapter ``name`` applies here, keyed by the base parameter's path."""
        raise NotImplementedError

    def folded_deltas(self, name: str) -> dict[str, torch.Tensor]:
        """The deltas merging adds into the base parameters (all of them unless a subclass shares some)."""
        return self.deltas(name)

    # ---- merging ---------------------------------------------------------------------------------
    def merge(self, names: list[str] | None = None) -> None:
        """Add the deltas into the base parameters; merging an already merged adapter does nothing."""
        held = self.adapter_names()
        for name in names if names is not None else self.active:
            if name in self.merged or name not in held:
                continue
            self._fold(name, 1.0)
            self.merged.append(name)

    def unmerge(self) -> None:
        while self.merged:
            self._fold(self.merged.pop(), -1.0)

    def _fold(self, name: str, sign: float) -> None:
        params = dict(self.base.named_parameters())
        with torch.no_grad():
            for path, delta in self.folded_deltas(name).items():
                params[path].add_(delta.to(params[path].dtype), alpha=sign)

    # ---- forward ---------------------------------------------------------------------------------
    def run(self, names: list[str], *args, **kwargs):
        """The base module's forward with the deltas of ``names`` added to its parameters."""
        if not names:
            return self.base(*args, **kwargs)
        params = dict(self.base.named_parameters())
        changed: dict[str, torch.Tensor] = {}
        for name in names:
            for path, delta in self.deltas(name).items():
                changed[path] = changed.get(path, params[path]) + delta  # same shape as the parameter
        changed = {p: t.to(params[p].dtype) for p, t in changed.items()}
        return functional_call(self.base, changed, args, kwargs, strict=False)

    def forward(self, *args, **kwargs):
        if self.disabled:
            if self.merged:
                raise AdapterError("adapters are merged into the base; unmerge_adapter() before disabling")
            return self.base(*args, **kwargs)
        if current_rows().mixed:
            self.check_mixable()
            return self._mixed_forward(*args, **kwargs)
        return self.run([n for n in self.active if n not in self.merged], *args, **kwargs)

    def rows_of(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with one entry per row of the forward: an input with a leading 1 (positions shared by
        every row) is broadcast over the batch; another leading size than the batch's (a table shared
        by all rows, such as T5's relative position bias) cannot give rows different adapters."""
        batch = current_rows().batch or x.shape[0]
        if x.shape[0] == 1 and batch > 1:
            return x.expand(batch, *x.shape[1:])  # (B, ...)
        if x.shape[0] != batch:
            raise AdapterError(
                f"{type(self.base).__name__} got an input with leading size {x.shape[0]} in a batch of "
                f"{batch} rows: a module fed a table shared by all rows (e.g. T5's relative position "
                "bias) cannot give rows different adapters; leave it out with exclude_modules"
            )
        return x

    def _mixed_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Row ``i`` runs with its own adapter's deltas; rows are split along ``x``'s first axis."""
        x = self.rows_of(x)
        out = self.base(x, *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise AdapterError(f"a mixed batch needs {type(self.base).__name__} to return one tensor")

        def with_deltas(name: str, rows: torch.Tensor) -> torch.Tensor:
            return self.run([name], x[rows], *args, **kwargs)

        return mix_rows(out, self.adapter_names(), with_deltas, add=False)


# ---- targeting -----------------------------------------------------------------------------------
def parameter_targets(model: nn.Module, config, method: str) -> list[str]:
    """Outermost modules with parameters, outside ``modules_to_save``, matching the targeting
    (``target_modules=None``: every module that holds parameters of its own)."""
    if config.target_modules is None:
        found = [(n, m) for n, m in iter_modules(model) if n and has_own_parameters(m)]
        found = filter_targets(config, found)
    else:
        found = find_targets(model, config, (nn.Module,), method)
    saved = config.modules_to_save
    found = [(n, m) for n, m in found if not in_modules_to_save(n, saved) and has_parameters(m)]
    paths = outermost([n for n, _ in found])
    if not paths:
        raise TargetError(
            f"{method}: no module with parameters left to adapt (target_modules={config.target_modules!r}, "
            f"exclude_modules={config.exclude_modules!r}, modules_to_save={saved!r})"
        )
    return paths


def wrap(
    model: nn.Module, path: str, layer_cls: type[AdapterLayer], config, adapter_name: str, method: str
) -> AdapterLayer:
    """Add adapter ``adapter_name`` at ``path``: to the ``layer_cls`` already there, or a new one."""
    layer = attach(model, path, layer_cls, method)
    layer.join(adapter_name, config, path)
    return layer


def tie_outside(
    model: nn.Module, paths: list[str], chosen: dict[int, str], modules_to_save: list[str] | None = None
) -> tuple[str, str] | None:
    """A chosen parameter (``chosen``: its id -> its name) that a module outside ``paths`` (and
    outside ``modules_to_save``) also holds, as ``(chosen name, the other's name)``; else None."""
    targeted = set(paths)
    for path, module in iter_modules(model):
        if path in targeted or any(a in targeted for a in ancestors(path)):
            continue
        if in_modules_to_save(path, modules_to_save):
            continue
        for name, p in module.named_parameters(recurse=False):
            if id(p) in chosen:
                return chosen[id(p)], f"{path}.{name}"
    return None


def has_own_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def in_modules_to_save(path: str, modules_to_save: list[str] | None) -> bool:
    """Is ``path`` (or a module containing it) in ``modules_to_save``? Those train as whole copies."""
    parts = path.split(".")
    return any(name_matches(".".join(parts[:i]), modules_to_save) for i in range(1, len(parts) + 1))


def outermost(paths: list[str]) -> list[str]:
    """Drop paths inside another path of the list: the outer module's deltas already cover them."""
    chosen = set(paths)
    return [p for p in paths if not any(q in chosen for q in ancestors(p))]


def ancestors(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
