"""The tuner model: ``PeftModel.base_model``, peft's ``LoraModel`` / ``AdaLoraModel`` / ... for every method.

It holds the wrapped model as ``.model`` (so parameter names read ``base_model.model.<module path>``, as in
peft) and every adapter's bookkeeping: its config, the module paths it targets, the base parameters it also
trains, and which adapters are active. Adding, activating, disabling, merging, deleting and unloading
adapters happen here, for layer methods and virtual-token methods alike: the virtual-token stage (owned by
the :class:`~peftkit.PeftModel` as ``prompt_encoder``) is handed in, not registered a second time.

Attributes the tuner does not define pass through to ``.model`` (``config``, ``generate``, ...), as peft's do.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .config import PeftConfig
from .errors import AdapterError
from .figures import Heatmap
from .layer import AdapterLayer, adapter_layers, get_parent
from .modules_to_save import wrap_modules_to_save
from .nn_types import module_device
from .quantization import dequantize_model, quantized_layers
from .registry import get_method
from .replication import check_mergeable
from .rows import BASE_ROW
from .virtual import VirtualTokenStage

ALREADY_MERGED = "All adapters are already merged, nothing to do."


class TunerModel(nn.Module):
    """Named adapters of any registered method on one model (``self.model``); see the module docstring."""

    def __init__(self, model: nn.Module, stage: VirtualTokenStage):
        super().__init__()
        self.model = model
        self.peft_config: dict[str, PeftConfig] = {}
        self.targets: dict[str, list[str]] = {}
        self.extra_params: dict[str, list[str]] = {}
        self.active_adapter: str | list[str] = []  # as last set: a name or a list (peft's attribute)
        self.layers_enabled = True  # False between disable_adapter_layers() and enable_adapter_layers()
        self.forward_loss_enabled = True  # False inside forward_loss_off()
        object.__setattr__(self, "stage", stage)  # the PeftModel's prompt_encoder: not registered twice

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward (its adapter layers read the current routing), with the loss terms
        peft's tuners add (AdaLoRA's orthogonality penalty) when the output has a loss."""
        return self.add_forward_loss(self.model(*args, **kwargs))

    # ---- which adapters ----------------------------------------------------------------------------
    @property
    def active_adapters(self) -> list[str]:
        active = self.active_adapter
        return [active] if isinstance(active, str) else list(active)

    def layers(self) -> Iterator[tuple[str, AdapterLayer]]:
        return adapter_layers(self.model)

    def check_known(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise AdapterError(
                f"Adapter {', '.join(unknown)} does not exist (unknown adapter(s) {unknown}; this model has "
                f"{sorted(self.peft_config)})"
            )

    def merged_adapters(self) -> list[str]:
        return list(dict.fromkeys(n for _, layer in self.layers() for n in layer.merged))

    # ---- adding and removing -----------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, config: PeftConfig, low_cpu_mem_usage: bool = False) -> None:
        """Add an adapter (not made active: call :meth:`set_adapter`). All or nothing: when adding fails,
        the model is left as it was. ``low_cpu_mem_usage``: its weights go on the meta device (no memory, no
        values), for weights loaded next (loading gives them storage)."""
        if adapter_name in self.peft_config:
            raise AdapterError(
                f"adapter {adapter_name!r} exists; delete_adapter() it first or choose another name"
            )
        if not adapter_name or adapter_name == BASE_ROW or "." in adapter_name:
            raise AdapterError(f"invalid adapter name {adapter_name!r}: use a non-empty name without dots")
        merged = [path for path, layer in self.layers() if layer.merged]
        if merged:
            raise AdapterError(
                f"adapters are merged into the base weights ({merged[0]}, ...); call unmerge_adapter() "
                f"before adding adapter {adapter_name!r}"
            )
        get_method(config).check_new_adapter(config, self.peft_config)
        try:
            self._add(adapter_name, config)
            if low_cpu_mem_usage:
                self._to_meta(adapter_name)
        except BaseException:
            self._remove(adapter_name)
            self.set_adapter(self.active_adapters)
            raise

    def _add(self, adapter_name: str, config: PeftConfig) -> None:
        method = get_method(config)
        targets = method.inject(self.model, config, adapter_name)
        tokens = method.virtual_tokens(self.model, config, dict(self.stage))
        self.stage.add(adapter_name, tokens)
        if config.modules_to_save:
            wrap_modules_to_save(self.model, config.modules_to_save, adapter_name)
        self.peft_config[adapter_name] = config
        self.targets[adapter_name] = targets
        self.extra_params[adapter_name] = method.extra_trainable(self.model, config, targets)
        for _, layer in self.layers():
            layer.set_active(self.active_adapters)
        self.refresh_trainable()

    def _to_meta(self, adapter_name: str) -> None:
        for _, layer in self.layers():
            if adapter_name in layer.adapter_names():
                layer.to_meta(adapter_name)
        self.stage.to_meta(adapter_name)

    def materialize(self, adapter_name: str) -> None:
        """Storage for an adapter's meta tensors (``low_cpu_mem_usage``), before its weights are loaded."""
        for _, layer in self.layers():
            if adapter_name in layer.adapter_names():
                layer.materialize(adapter_name)
        self.stage.materialize(adapter_name, module_device(self.model))

    def delete_adapter(self, adapter_name: str) -> None:
        """Delete an adapter; the remaining active ones stay active (else the first remaining one)."""
        self.check_known([adapter_name])
        merged = [n for n in self.merged_adapters() if n == adapter_name]
        if merged:
            raise AdapterError(
                f"Cannot delete adapter(s) {merged} while they are merged. Please unmerge them first."
            )
        self._remove(adapter_name)
        remaining = [a for a in self.active_adapters if a != adapter_name]
        self.set_adapter(remaining or list(self.peft_config)[:1])

    def _remove(self, adapter_name: str) -> None:
        """Take every trace of an adapter out of the model (also of one half added); a layer left with no
        adapter gives its place back to the module it wrapped."""
        for path, layer in list(self.layers()):
            if adapter_name in layer.adapter_names():
                layer.delete(adapter_name)
            if not layer.adapter_names():
                parent, attr = get_parent(self.model, path)
                setattr(parent, attr, layer.base)
        for table in (self.peft_config, self.targets, self.extra_params):
            table.pop(adapter_name, None)
        self.stage.delete(adapter_name)
        self.active_adapter = [a for a in self.active_adapters if a != adapter_name]

    # ---- activating and training ----------------------------------------------------------------------
    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Make one adapter (or several, summed) active; only active adapters train."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        self.check_known(names)
        for _, layer in self.layers():
            layer.set_active(names)
        self.active_adapter = adapter_name if isinstance(adapter_name, str) else names
        self.refresh_trainable()

    def refresh_trainable(self) -> None:
        """Exactly the active, trainable adapters' parameters require grad (none while disabled)."""
        for p in [*self.model.parameters(), *self.stage.parameters()]:
            p.requires_grad_(False)
        if not self.layers_enabled:
            return
        for name in self.active_adapters:
            if self.peft_config[name].inference_mode:
                continue
            for p in self.adapter_parameters(name):
                p.requires_grad_(True)

    def adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        for _, layer in self.layers():
            yield from layer.adapter_parameters(name)
        yield from self.stage.adapter_parameters(name)
        params = dict(self.model.named_parameters())
        yield from (params[n] for n in self.extra_params[name])

    def training_adapters(self) -> Iterator[tuple[str, PeftConfig, Any]]:
        """The active adapters that train, with their configs and methods."""
        for name in self.active_adapters:
            config = self.peft_config[name]
            if not config.inference_mode:
                yield name, config, get_method(config)

    # ---- disabling ----------------------------------------------------------------------------------
    def disable_adapter_layers(self) -> None:
        """Run the bare base model until :meth:`enable_adapter_layers` (merged adapters are unmerged first,
        as peft does); nothing trains meanwhile."""
        self._warn_trained_biases()
        if self.merged_adapters():
            self.unmerge_adapter()
        self._set_layers_enabled(False)

    def enable_adapter_layers(self) -> None:
        self._set_layers_enabled(True)

    def _set_layers_enabled(self, enabled: bool) -> None:
        for _, layer in self.layers():
            layer.disabled = not enabled
        self.stage.disabled = not enabled
        self.layers_enabled = enabled
        self.refresh_trainable()

    def _warn_trained_biases(self) -> None:
        trained = sorted({c.bias for c in self.peft_config.values() if getattr(c, "bias", "none") != "none"})
        if trained:
            warnings.warn(
                f"Careful, disabling adapter layers with bias configured to be '{trained[0]}' does not "
                "produce the same output as the base model would without adaption (the trained biases stay).",
                UserWarning,
                stacklevel=3,
            )

    @contextmanager
    def layers_disabled(self) -> Iterator[None]:
        """Inside the block the model runs bare; afterwards the layers are as they were."""
        was_enabled = self.layers_enabled
        self.disable_adapter_layers()
        try:
            yield
        finally:
            if was_enabled:
                self.enable_adapter_layers()

    # ---- merging ------------------------------------------------------------------------------------
    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Fold adapters into the base weights (zero-latency inference). Merging a merged adapter again
        does nothing (with peft's warning); ``safe_merge`` checks the merged weights for NaNs first."""
        names = list(adapter_names or self.active_adapters)
        self.check_known(names)
        check_mergeable(self.model)
        virtual = [n for n in names if n in self.stage]
        if virtual:
            raise AdapterError(f"adapters {virtual} add virtual tokens, which cannot be merged into weights")
        new = [n for n in names if n not in self.merged_adapters()]
        if not new:
            warnings.warn(ALREADY_MERGED, UserWarning, stacklevel=2)
            return
        if safe_merge:
            self._check_merge_finite(new)
        for _, layer in self.layers():
            layer.merge(new)

    def _check_merge_finite(self, names: list[str]) -> None:
        """``safe_merge``: each adapter merged into a copy of each layer first (whatever the method's merge:
        additive, DoRA's rescaling, IA3's product); a weight or bias that is not finite refuses the merge
        before anything is written."""
        for path, layer in self.layers():
            for name in names:
                if name not in layer.adapter_names():
                    continue
                probe = copy.deepcopy(layer)
                probe.merge([name])
                merged = [t for t in (probe.base.weight, getattr(probe.base, "bias", None)) if t is not None]
                if not all(bool(torch.isfinite(t).all()) for t in merged):
                    raise ValueError(
                        f"NaNs detected in the merged weights. The adapter {name} seems to be broken ({path})"
                    )

    def unmerge_adapter(self) -> None:
        for _, layer in self.layers():
            layer.unmerge()

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        """Merge the active adapters (or ``adapter_names``) and return the plain model holding the merged
        weights. On a 4-bit base (QLoRA) the result is a dequantised full-precision model (with a warning):
        a 4-bit weight cannot hold the merged delta. ``progressbar`` is accepted for peft's signature (this
        takes no visible time)."""
        was_4bit = bool(quantized_layers(self.model))
        names = list(adapter_names or self.active_adapters)
        if not set(names) <= set(self.merged_adapters()):
            self.merge_adapter(names, safe_merge=safe_merge)
        model = self._replace_layers(lambda layer: getattr(layer, "unwrapped", lambda: layer.base)())
        return dequantize_model(model) if was_4bit else model

    def unload(self) -> nn.Module:
        """Remove every adapter (unmerging first) and return the original base model."""
        self.unmerge_adapter()
        for _, layer in self.layers():
            for name in reversed(
                layer.adapter_names()
            ):  # the last added first: fusions before their adapters
                layer.delete(name)
        return self._replace_layers(lambda layer: layer.base)

    def _replace_layers(self, pick) -> nn.Module:
        for path, layer in list(self.layers()):
            parent, attr = get_parent(self.model, path)
            setattr(parent, attr, pick(layer))
        for table in (self.peft_config, self.targets, self.extra_params, self.stage):
            table.clear()
        self.active_adapter = []
        self.model._peftkit_wrapped = False  # the bare base again: it may be wrapped anew
        return self.model

    # ---- training hooks (each method decides what they do) -----------------------------------------
    def before_training(self, total_steps: int) -> None:
        for name, config, method in self.training_adapters():
            method.before_training(self.model, config, name, total_steps)

    def regularization_loss(self) -> torch.Tensor | float:
        """The sum of the trainable adapters' extra loss terms (e.g. AdaLoRA's orthogonality penalty)."""
        total: torch.Tensor | float = 0.0
        for name, config, method in self.training_adapters():
            term = method.regularization_loss(self.model, config, name)
            if term is not None:
                total = total + term
        return total

    def after_optimizer_step(self, step: int) -> None:
        for name, config, method in self.training_adapters():
            method.after_optimizer_step(self.model, config, name, step)

    def update_and_allocate(self, global_step: int) -> None:
        """peft's AdaLoRA hook, called after ``optimizer.step()`` and before ``zero_grad()``: the trainable
        adapters' per-step work (AdaLoRA's importance scores and rank budget). The budget's schedule starts
        at the first call, over the config's ``total_step``."""
        for name, config, method in self.training_adapters():
            method.start_schedule(self.model, config, name)
            method.after_optimizer_step(self.model, config, name, global_step)

    def add_forward_loss(self, out: Any) -> Any:
        """Add the terms peft's tuners put into the forward's loss (AdaLoRA's orthogonality penalty, in
        peft's form) to ``out.loss``; nothing while :meth:`forward_loss_off` is in effect."""
        loss = getattr(out, "loss", None)
        if not isinstance(loss, torch.Tensor) or not self.forward_loss_enabled:
            return out
        for name, config, method in self.training_adapters():
            term = method.forward_loss(self.model, config, name)
            if term is not None:
                out["loss"] = out["loss"] + term
        return out

    @contextmanager
    def forward_loss_off(self) -> Iterator[None]:
        """Inside the block the forward's loss is the task loss only: for a trainer that adds the methods'
        own terms itself (:meth:`regularization_loss`, peftkit's trainer), so none is counted twice."""
        before, self.forward_loss_enabled = self.forward_loss_enabled, False
        try:
            yield
        finally:
            self.forward_loss_enabled = before

    def figures(self) -> list[Heatmap]:
        """Each adapter's own figures (AdaLoRA's rank map, AdaPtLoRA's gates), as data."""
        return [
            fig
            for name, config in self.peft_config.items()
            for fig in get_method(config).figures(self.model, config, name)
        ]


def inject_adapter_in_model(
    peft_config: PeftConfig,
    model: nn.Module,
    adapter_name: str = "default",
    low_cpu_mem_usage: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """peft's low-level function: add an adapter's layers to ``model`` in place (made active, the only
    trainable parameters) and return ``model``, with no wrapper around it. Virtual-token methods need the
    wrapper's stage and are refused; so is ``state_dict`` (targets come from the config)."""
    from .errors import ConfigError

    if peft_config.is_prompt_learning:
        raise ConfigError(
            "peft_config", f"{type(peft_config).__name__} adds virtual tokens: use get_peft_model"
        )
    if state_dict is not None:
        raise ConfigError(
            "state_dict", "peftkit finds targets from the config's target_modules; leave it None"
        )
    tuner = TunerModel(model, VirtualTokenStage())
    tuner.add_adapter(adapter_name, peft_config, low_cpu_mem_usage)
    tuner.set_adapter(adapter_name)
    return model
