"""The model wrapper: named adapters of any registered method on one frozen base model."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import PeftConfig
from .errors import AdapterError, CheckpointError
from .figures import Heatmap
from .layer import AdapterLayer, adapter_layers, get_parent
from .modules_to_save import wrap_modules_to_save
from .quantization import dequantize_model, logical_numel, quantized_layers
from .registry import get_method, method_for_saved_config
from .rows import BASE_ROW, RowContext, Tasks, current_rows, routed
from .virtual import VirtualTokenStage
from .virtual.stage import batch_size


@dataclass(frozen=True)
class ParameterReport:
    trainable: int
    total: int
    adapter_bytes: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
            f"trainable%: {self.percent:.4f} || adapter size: {self.adapter_bytes / 1024:.1f} KiB"
        )


class PeftModel(nn.Module):
    """Wraps ``base_model`` (a ``transformers`` model or any ``nn.Module``) with named adapters.

    Calls and attributes the wrapper does not define pass through to the base model, so it can
    stand in for it (``generate``, ``config``, a ``transformers.Trainer``).
    """

    def __init__(self, model: nn.Module, config: PeftConfig, adapter_name: str = "default"):
        super().__init__()
        _check_unwrapped(model)
        self.base_model = model
        self.peft_config: dict[str, PeftConfig] = {}
        self.targets: dict[str, list[str]] = {}
        self.extra_params: dict[str, list[str]] = {}
        self.active_adapters: list[str] = []
        self.prompt_encoder = VirtualTokenStage()  # the virtual-token stage (peft's attribute name)
        trainable = _trainable_flags(model)
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            self.add_adapter(adapter_name, config)
            self.set_adapter(adapter_name)
        except BaseException:
            _restore_flags(trainable)  # add_adapter took its own changes back
            raise
        model._peftkit_wrapped = True  # a second wrapper would overwrite this one's adapters
        self._expose_forward_signature()

    def _expose_forward_signature(self) -> None:
        """Give ``forward`` the base model's signature (plus ``adapter_names``) so tools that read it,
        such as ``transformers.Trainer`` choosing dataset columns, see the real arguments."""
        try:
            base = inspect.signature(self.base_model.forward)
        except (TypeError, ValueError):
            return
        params = [p for p in base.parameters.values() if p.kind != p.VAR_KEYWORD]
        params.append(inspect.Parameter("adapter_names", inspect.Parameter.KEYWORD_ONLY, default=None))
        params.append(inspect.Parameter("tasks", inspect.Parameter.KEYWORD_ONLY, default=None))
        params += [p for p in base.parameters.values() if p.kind == p.VAR_KEYWORD]
        cls_forward = type(self).forward

        def forward(*args, **kwargs):
            return cls_forward(self, *args, **kwargs)

        forward.__signature__ = base.replace(parameters=params)
        forward.__doc__ = cls_forward.__doc__
        object.__setattr__(self, "forward", forward)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # ---- adapters --------------------------------------------------------------------------------
    @property
    def active_adapter(self) -> str | None:
        return self.active_adapters[0] if self.active_adapters else None

    def layers(self) -> Iterator[tuple[str, AdapterLayer]]:
        return adapter_layers(self.base_model)

    def add_adapter(self, adapter_name: str, config: PeftConfig) -> None:
        """Add an adapter (not made active: call :meth:`set_adapter`). All or nothing: when adding fails,
        the model is left as it was."""
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
        try:
            self._add(adapter_name, config)
        except BaseException:
            self._remove(adapter_name)
            self.set_adapter(self.active_adapters)
            raise

    def _add(self, adapter_name: str, config: PeftConfig) -> None:
        method = get_method(config)
        targets = method.inject(self.base_model, config, adapter_name)
        tokens = method.virtual_tokens(self.base_model, config, dict(self.prompt_encoder))
        self.prompt_encoder.add(adapter_name, tokens)
        if config.modules_to_save:
            wrap_modules_to_save(self.base_model, config.modules_to_save, adapter_name)
        self.peft_config[adapter_name] = config
        self.targets[adapter_name] = targets
        self.extra_params[adapter_name] = method.extra_trainable(self.base_model, config, targets)
        for _, layer in self.layers():
            layer.set_active(self.active_adapters)
        self._refresh_trainable()

    def _check_known(self, names: list[str]) -> None:
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise AdapterError(f"unknown adapter(s) {unknown}; this model has {sorted(self.peft_config)}")

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Make one adapter (or several, summed) active; only active adapters train."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        self._check_known(names)
        for _, layer in self.layers():
            layer.set_active(names)
        self.active_adapters = names
        self._refresh_trainable()

    def delete_adapter(self, adapter_name: str) -> None:
        self._check_known([adapter_name])
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
                parent, attr = get_parent(self.base_model, path)
                setattr(parent, attr, layer.base)
        for table in (self.peft_config, self.targets, self.extra_params):
            table.pop(adapter_name, None)
        self.prompt_encoder.delete(adapter_name)
        self.active_adapters = [a for a in self.active_adapters if a != adapter_name]

    def _refresh_trainable(self) -> None:
        for p in [*self.base_model.parameters(), *self.prompt_encoder.parameters()]:
            p.requires_grad_(False)
        for name in self.active_adapters:
            if self.peft_config[name].inference_mode:
                continue
            for p in self._adapter_parameters(name):
                p.requires_grad_(True)

    def _adapter_parameters(self, name: str) -> Iterator[nn.Parameter]:
        for _, layer in self.layers():
            yield from layer.adapter_parameters(name)
        yield from self.prompt_encoder.adapter_parameters(name)
        params = dict(self.base_model.named_parameters())
        yield from (params[n] for n in self.extra_params[name])

    @contextmanager
    def disable_adapter(self):
        """Run the bare base model inside the block (exactly its outputs)."""
        if any(layer.merged for _, layer in self.layers()):
            raise AdapterError("adapters are merged into the base weights; call unmerge_adapter() first")
        layers = [layer for _, layer in self.layers()]
        for layer in layers:
            layer.disabled = True
        self.prompt_encoder.disabled = True
        try:
            yield self
        finally:
            self.prompt_encoder.disabled = False
            for layer in layers:
                layer.disabled = False

    # ---- training hooks (the trainer calls these; each method decides what they do) ---------------
    def _training_adapters(self) -> Iterator[tuple[str, PeftConfig, Any]]:
        for name in self.active_adapters:
            config = self.peft_config[name]
            if not config.inference_mode:
                yield name, config, get_method(config)

    def before_training(self, total_steps: int) -> None:
        for name, config, method in self._training_adapters():
            method.before_training(self.base_model, config, name, total_steps)

    def regularization_loss(self) -> torch.Tensor | float:
        """The sum of the trainable adapters' extra loss terms (e.g. AdaLoRA's orthogonality penalty)."""
        total: torch.Tensor | float = 0.0
        for name, config, method in self._training_adapters():
            term = method.regularization_loss(self.base_model, config, name)
            if term is not None:
                total = total + term
        return total

    def after_optimizer_step(self, step: int) -> None:
        for name, config, method in self._training_adapters():
            method.after_optimizer_step(self.base_model, config, name, step)

    def figures(self) -> list[Heatmap]:
        """Each adapter's own figures (AdaLoRA's rank map, AdaPtLoRA's gates), as data: draw them with
        :func:`peftkit.plotting.write_figures`."""
        return [
            fig
            for name, config in self.peft_config.items()
            for fig in get_method(config).figures(self.base_model, config, name)
        ]

    # ---- merging ---------------------------------------------------------------------------------
    def merge_adapter(self, adapter_names: list[str] | None = None) -> None:
        """Fold adapters into the base weights (zero-latency inference). Merging twice is a no-op."""
        names = adapter_names or self.active_adapters
        self._check_known(names)
        virtual = [n for n in names if n in self.prompt_encoder]
        if virtual:
            raise AdapterError(f"adapters {virtual} add virtual tokens, which cannot be merged into weights")
        for _, layer in self.layers():
            layer.merge(names)

    def unmerge_adapter(self) -> None:
        for _, layer in self.layers():
            layer.unmerge()

    def _replace_layers(self, pick) -> nn.Module:
        for path, layer in list(self.layers()):
            parent, attr = get_parent(self.base_model, path)
            setattr(parent, attr, pick(layer))
        for table in (self.peft_config, self.targets, self.extra_params, self.prompt_encoder):
            table.clear()
        self.active_adapters = []
        self.base_model._peftkit_wrapped = False  # the bare base again: it may be wrapped anew
        return self.base_model

    def merge_and_unload(self) -> nn.Module:
        """Merge the active adapters and return the plain base model holding the merged weights.

        On a 4-bit base (QLoRA) the result is a dequantised full-precision model (with a warning):
        a 4-bit weight cannot hold the merged delta."""
        was_4bit = bool(quantized_layers(self.base_model))
        self.merge_adapter()
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

    def get_base_model(self) -> nn.Module:
        return self.base_model

    # ---- forward ---------------------------------------------------------------------------------
    @contextmanager
    def task(self, name: Tasks):
        """Inside the block, forwards run as task ``name`` (or ``name[i]`` per row) for task-conditioned
        adapters (AdaPtLoRA): forward, evaluation and decoding alike."""
        with routed(RowContext.of(tasks=name)):
            yield self

    def forward(self, *args, adapter_names: list[str] | None = None, tasks: Tasks = None, **kwargs):
        """Forward through the base; ``adapter_names`` gives each row its own adapter ('__base__': none),
        ``tasks`` each row its task (task-conditioned adapters such as AdaPtLoRA; or use :meth:`task`).
        The routing is made current for the call (:mod:`peftkit.rows`); layers and the virtual-token
        stage read it."""
        if adapter_names is not None:
            self._check_mixable(adapter_names)
        tasks = current_rows().tasks if tasks is None else tasks
        with routed(RowContext.of(adapter_names, tasks, batch_size(args, kwargs))):
            return self.prompt_encoder.run(self.base_model, args, kwargs, self.active_adapters)

    def _check_mixable(self, adapter_names: list[str]) -> None:
        """Unknown names are refused here; a merged layer refuses per-row adapters itself
        (:meth:`AdapterLayer.check_mixable`), so a forward never walks every module."""
        self._check_known([n for n in adapter_names if n != BASE_ROW])

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        adapter_names: list[str] | None = None,
        return_output: bool = False,
        **options: Any,
    ):
        """Decode with peftkit's engine (:func:`peftkit.decoding.generate`).

        Takes a :class:`~peftkit.decoding.DecodingConfig` as ``config=`` or its fields as keywords;
        ``transformers``-style keywords (``do_sample``, ``num_beams``, ``penalty_alpha``) pick the
        strategy. ``adapter_names`` gives each row its own adapter. Returns the sequences
        ``(N, L + n)`` like ``transformers`` (or the full output with ``return_output=True``).
        """
        from .decoding import generate

        out = generate(self, input_ids, attention_mask, adapter_names=adapter_names, **options)
        return out if return_output else out.sequences

    # ---- accounting ------------------------------------------------------------------------------
    def parameter_report(self) -> ParameterReport:
        params = {id(p): p for p in self.parameters()}.values()
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(logical_numel(p) for p in params)
        name = self.active_adapter
        size = (
            sum(t.numel() * t.element_size() for t in self.adapter_state_dict(name).values()) if name else 0
        )
        return ParameterReport(trainable, total, size)

    def print_trainable_parameters(self) -> None:
        print(self.parameter_report())

    # ---- checkpoints -----------------------------------------------------------------------------
    def adapter_state_dict(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """One adapter's tensors in peft's key scheme, valid on the original base model."""
        self._check_known([adapter_name])
        prefix = get_method(self.peft_config[adapter_name]).key_prefix
        out: dict[str, torch.Tensor] = {}
        out.update(self.prompt_encoder.adapter_state_dict(adapter_name))
        for path, layer in self.layers():
            export = getattr(layer, "export_state_dict", layer.adapter_state_dict)
            out.update({f"{prefix}{path}.{k}": v for k, v in export(adapter_name).items()})
        params = dict(self.base_model.named_parameters())
        out.update({f"{prefix}{n}": params[n].data for n in self.extra_params[adapter_name]})
        return out

    def load_adapter_state_dict(self, adapter_name: str, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`adapter_state_dict`: every key must land, every adapter tensor be given."""
        prefix = get_method(self.peft_config[adapter_name]).key_prefix
        state = self.prompt_encoder.load_adapter_state_dict(adapter_name, state)
        self._refresh_trainable()  # loading bakes a reparametrisation into new parameters
        bad = [k for k in state if not k.startswith(prefix)]
        if bad:
            raise CheckpointError(f"keys without the '{prefix}' prefix: {bad[:3]}")
        rest = {k[len(prefix) :]: v for k, v in state.items()}
        for path, layer in sorted(self.layers(), key=lambda item: -len(item[0])):
            mine = {k[len(path) + 1 :]: rest.pop(k) for k in list(rest) if k.startswith(path + ".")}
            base_keys = {k: mine.pop(k) for k in list(mine) if k.startswith(layer.base_attr + ".")}
            if adapter_name in layer.adapter_names():
                layer.load_adapter_state_dict(adapter_name, mine)
            elif mine:
                raise CheckpointError(
                    f"checkpoint has adapter tensors for {path}, which this adapter does not target"
                )
            rest.update({f"{path}.{k}": v for k, v in base_keys.items()})
        self._load_base_tensors(rest)

    def _load_base_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Base-model tensors saved with an adapter (trained biases; peft's saved embeddings)."""
        params = dict(self.base_model.named_parameters())
        unknown = sorted(k for k in tensors if k not in params)
        if unknown:
            raise CheckpointError(f"checkpoint keys match nothing in this model: {unknown[:5]}")
        for key, value in tensors.items():  # every tensor checked before any is written
            if params[key].shape != value.shape:
                raise CheckpointError(
                    f"{key}: shape {tuple(value.shape)} in checkpoint, {tuple(params[key].shape)} here"
                )
        with torch.no_grad():
            for key, value in tensors.items():
                params[key].copy_(value)

    def save_pretrained(
        self,
        save_directory: str | Path,
        adapter_names: list[str] | None = None,
        is_main_process: bool = True,
        **hf_kwargs: Any,
    ) -> None:
        """Save adapters in peft's format: 'default' in the folder itself, others in sub-folders by name.

        ``is_main_process`` (as in ``transformers`` and ``peft``): whether this process writes the files.
        A model sharded over processes calls this on every rank (exporting may run adapter modules,
        which gather their shards together); only the main one writes.
        ``hf_kwargs`` (``state_dict``, ``safe_serialization``, ... passed by ``transformers.Trainer``) are
        ignored: only adapter tensors are saved, always as safetensors.
        """
        names = adapter_names or list(self.peft_config)
        if not names:
            raise AdapterError(
                "nothing to save: this model holds no adapter (the last one was deleted, or unload() / "
                "merge_and_unload() took them out); add or load one first"
            )
        self._check_known(names)
        for name in names:
            folder = Path(save_directory) if name == "default" else Path(save_directory) / name
            config, method = self.peft_config[name], get_method(self.peft_config[name])
            data = method.to_peft_dict(config, self.base_model, self.targets[name])
            if method.peft_type is None:
                data["peftkit_method"] = method.name
            meta = {
                "peftkit_method": method.name,
                "peftkit_fingerprint": json.dumps(ckpt.fingerprint(self.base_model, self.targets[name])),
            }
            tensors = self.adapter_state_dict(name)
            if is_main_process:
                ckpt.write_adapter(folder, data, tensors, meta)

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        path: str | Path,
        adapter_name: str = "default",
        is_trainable: bool = False,
        allow_pickle: bool = False,
        ignore_mismatch: bool = False,
    ) -> PeftModel:
        """Load an adapter saved by peftkit or by ``peft`` onto ``model``.

        An adapter saved by peftkit for another base (other architecture, shapes or weights) is refused
        unless ``ignore_mismatch=True``. When loading fails, ``model`` is left unwrapped and unchanged.
        """
        config, state = _read_adapter(model, path, is_trainable, allow_pickle, ignore_mismatch)
        trainable = _trainable_flags(model)
        peft_model = cls(model, config, adapter_name)
        try:
            peft_model.load_adapter_state_dict(adapter_name, state)
        except BaseException:
            peft_model.unload()
            _restore_flags(trainable)
            raise
        return peft_model

    def load_adapter(
        self,
        path: str | Path,
        adapter_name: str,
        is_trainable: bool = False,
        allow_pickle: bool = False,
        ignore_mismatch: bool = False,
    ) -> None:
        """Load another saved adapter under ``adapter_name`` (not made active)."""
        config, state = _read_adapter(self.base_model, path, is_trainable, allow_pickle, ignore_mismatch)
        self.add_adapter(adapter_name, config)
        try:
            self.load_adapter_state_dict(adapter_name, state)
        except Exception:
            self.delete_adapter(adapter_name)
            raise


def _read_adapter(
    model: nn.Module, path: str | Path, is_trainable: bool, allow_pickle: bool, ignore_mismatch: bool = False
) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
    data = ckpt.read_config(path)
    config = method_for_saved_config(data).config_from_dict(data)
    config.inference_mode = not is_trainable
    state, meta = ckpt.read_weights(path, allow_pickle)
    if "peftkit_fingerprint" in meta:
        saved = _saved_fingerprint(meta["peftkit_fingerprint"], path)
        ckpt.check_fingerprint(saved, _unwrapped(model), str(path), ignore_mismatch)
    return config, state


def _saved_fingerprint(text: str, path: str | Path) -> dict[str, Any]:
    try:
        saved = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the base-model fingerprint in the metadata is not JSON") from err
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: the base-model fingerprint in the metadata is not an object")
    return saved


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.base_model if isinstance(model, PeftModel) else model


def _check_unwrapped(model: nn.Module) -> None:
    """A base already wrapped would have its adapters overwritten by a second wrapper: refused."""
    if (
        isinstance(model, PeftModel)
        or getattr(model, "_peftkit_wrapped", False)
        or any(adapter_layers(model))
    ):
        raise AdapterError(
            "this model is already wrapped by a PeftModel; a second get_peft_model/from_pretrained on it "
            "would overwrite that model's adapters. Add another adapter to the PeftModel with "
            "add_adapter(name, config) or load_adapter(path, name), or call its unload() first to get "
            "the bare base back"
        )


def _trainable_flags(model: nn.Module) -> list[tuple[nn.Parameter, bool]]:
    return [(p, p.requires_grad) for p in model.parameters()]


def _restore_flags(flags: list[tuple[nn.Parameter, bool]]) -> None:
    for p, flag in flags:
        p.requires_grad_(flag)


def get_peft_model(model: nn.Module, config: PeftConfig, adapter_name: str = "default") -> PeftModel:
    """Wrap ``model`` with a new adapter of the method ``config`` belongs to."""
    return PeftModel(model, config, adapter_name)
