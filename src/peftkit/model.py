"""The model wrapper: named adapters of any registered method on one frozen base model, in peft's layout.

``PeftModel.base_model`` is the tuner model (:class:`~peftkit.tuner.TunerModel`, peft's ``LoraModel`` and
kin) holding the wrapped model as ``.model``, so parameter names read ``base_model.model.<module path>``;
``prompt_encoder`` is the virtual-token stage. The wrapper adds what is the whole model's: the forward with
its per-row routing (:mod:`peftkit.rows`), decoding, saving and loading in peft's format, and peft's
accounting. Task classes (``PeftModelForCausalLM``, ...) are in :mod:`peftkit.task_models`.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from . import checkpoint as ckpt
from .config import PeftConfig
from .errors import AdapterError, CheckpointError, ConfigError
from .figures import Heatmap
from .layer import AdapterLayer, adapter_layers
from .quantization import logical_numel
from .registry import get_method, method_for_saved_config
from .replication import original_paths
from .rows import BASE_ROW, RowContext, Tasks, current_rows, routed
from .state_dicts import saved_tensors
from .targeting import iter_modules, name_matches
from .tuner import TunerModel
from .virtual import VirtualTokenStage
from .virtual.stage import batch_size

TASK_CLASSES: dict[str, type[PeftModel]] = {}  # task type -> wrapper class, filled by peftkit.task_models


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


class LoadResult(NamedTuple):
    """What ``load_adapter`` returns, as peft's (torch's ``_IncompatibleKeys``): peftkit loads strictly, so
    both lists are empty (a missing or unexpected key is an error)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class PeftModel(nn.Module):
    """Wraps ``model`` (a ``transformers`` model or any ``nn.Module``) with named adapters.

    Calls and attributes the wrapper does not define pass through to the tuner model and from there to the
    wrapped model, so it stands in for it (``generate``, ``config``, a ``transformers.Trainer``).
    ``autocast_adapter_dtype`` is peft's: adapters on a half-precision base are kept in float32 (peftkit
    always does; ``False`` is refused). ``low_cpu_mem_usage=True`` puts the new adapter's weights on the meta
    device (for weights loaded next, as peft).
    """

    head_names: ClassVar[tuple[str, ...]] = ()  # new task heads trained and saved with every adapter
    task_type: ClassVar[str | None] = None  # the task type a task class serves (peftkit.task_models)

    def __init__(
        self,
        model: nn.Module,
        peft_config: PeftConfig,
        adapter_name: str = "default",
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
    ):
        super().__init__()
        _check_unwrapped(model)
        _check_autocast(autocast_adapter_dtype)
        stage = VirtualTokenStage()  # the virtual-token stage (peft's attribute name: prompt_encoder)
        self.base_model = TunerModel(model, stage)
        self.prompt_encoder = stage
        trainable = _trainable_flags(model)
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            self.add_adapter(adapter_name, peft_config, low_cpu_mem_usage)
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
            base = inspect.signature(self.get_base_model().forward)
        except (TypeError, ValueError):
            return
        params = [p for p in base.parameters.values() if p.kind != p.VAR_KEYWORD]
        params.append(inspect.Parameter("adapter_names", inspect.Parameter.KEYWORD_ONLY, default=None))
        params.append(inspect.Parameter("tasks", inspect.Parameter.KEYWORD_ONLY, default=None))
        params += [p for p in base.parameters.values() if p.kind == p.VAR_KEYWORD]
        cls_forward = type(self).forward

        def forward(model, *args, **kwargs):
            return cls_forward(model, *args, **kwargs)

        me = inspect.Parameter("model", inspect.Parameter.POSITIONAL_ONLY)
        forward.__signature__ = base.replace(parameters=[me, *params])
        forward.__doc__ = cls_forward.__doc__
        # a bound method, not a closure over ``self``: copy.deepcopy rebinds it to the copy
        object.__setattr__(self, "forward", types.MethodType(forward, self))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    # ---- the tuner's bookkeeping, under peft's names ---------------------------------------------------
    @property
    def peft_config(self) -> dict[str, PeftConfig]:
        return self.base_model.peft_config

    @property
    def active_adapters(self) -> list[str]:
        return self.base_model.active_adapters

    @property
    def active_adapter(self) -> str | None:
        active = self.active_adapters
        return active[0] if active else None

    @property
    def active_peft_config(self) -> PeftConfig:
        return self.peft_config[self.active_adapter]

    @property
    def peft_type(self) -> Any:
        """The active adapter's ``peft_type`` (peft's ``PeftType``; None for a peftkit-only method)."""
        return self.active_peft_config.peft_type if self.active_adapter else None

    @property
    def modules_to_save(self) -> set[str] | None:
        names = {n for c in self.peft_config.values() for n in (c.modules_to_save or [])}
        return names or None

    def get_base_model(self) -> nn.Module:
        """The wrapped model (``base_model.model``)."""
        return self.base_model.model

    def layers(self) -> Iterator[tuple[str, AdapterLayer]]:
        return self.base_model.layers()

    # ---- adapters ----------------------------------------------------------------------------------
    def add_adapter(
        self,
        adapter_name: str,
        peft_config: PeftConfig,
        low_cpu_mem_usage: bool = False,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        """Add an adapter (not made active: call :meth:`set_adapter`). All or nothing: when adding fails,
        the model is left as it was. A task class adds its new head to ``modules_to_save`` (as peft).
        ``low_cpu_mem_usage``: the weights go on the meta device, to be loaded next."""
        _check_autocast(autocast_adapter_dtype)
        self._add_heads(peft_config)
        self.base_model.add_adapter(adapter_name, peft_config, low_cpu_mem_usage)

    def _add_heads(self, config: PeftConfig) -> None:
        """The task's new head (``classifier``, ``score``, ``qa_outputs``) trains and is saved with the
        adapter: peft adds it to ``modules_to_save`` for these task types, and so does peftkit."""
        present = {n for n, _ in iter_modules(self.get_base_model()) if n}
        heads = [h for h in self.head_names if any(name_matches(p, [h]) for p in present)]
        missing = [h for h in heads if h not in (config.modules_to_save or [])]
        if missing:
            config.modules_to_save = [*(config.modules_to_save or []), *missing]

    def set_adapter(self, adapter_name: str | list[str]) -> None:
        """Make one adapter (or several, summed) active; only active adapters train."""
        self.base_model.set_adapter(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        self.base_model.delete_adapter(adapter_name)

    def check_known(self, names: list[str]) -> None:
        self.base_model.check_known(names)

    @contextmanager
    def disable_adapter(self):
        """Run the bare base model inside the block (exactly its outputs); merged adapters are unmerged
        first (as peft does), and nothing is trainable inside."""
        with self.base_model.layers_disabled():
            yield self

    def disable_adapter_layers(self) -> None:
        self.base_model.disable_adapter_layers()

    def enable_adapter_layers(self) -> None:
        self.base_model.enable_adapter_layers()

    # ---- training hooks (peftkit's trainer calls these; each method decides what they do) -------------
    def before_training(self, total_steps: int) -> None:
        self.base_model.before_training(total_steps)

    def regularization_loss(self) -> torch.Tensor | float:
        """The sum of the trainable adapters' extra loss terms (e.g. AdaLoRA's orthogonality penalty)."""
        return self.base_model.regularization_loss()

    def after_optimizer_step(self, step: int) -> None:
        self.base_model.after_optimizer_step(step)

    def forward_loss_off(self):
        """A block in which the forward's loss is the task loss only (see ``TunerModel.forward_loss_off``)."""
        return self.base_model.forward_loss_off()

    def figures(self) -> list[Heatmap]:
        """Each adapter's own figures (AdaLoRA's rank map, AdaPtLoRA's gates), as data: draw them with
        :func:`peftkit.plotting.write_figures`."""
        return self.base_model.figures()

    def prepare_model_for_gradient_checkpointing(self, model: nn.Module) -> nn.Module:
        """peft's preparation: with gradient checkpointing the frozen embeddings' outputs must require grad,
        so that checkpointed blocks still pass gradients to the adapters (quantized models excepted)."""
        if any(getattr(model, f, False) for f in ("is_loaded_in_8bit", "is_loaded_in_4bit", "is_quantized")):
            return model
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
        elif hasattr(model, "get_input_embeddings"):
            model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
        return model

    # ---- merging -----------------------------------------------------------------------------------
    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Fold adapters into the base weights (zero-latency inference). Merging twice is a no-op (with
        peft's warning); ``safe_merge`` checks the merged weights for NaNs before writing them."""
        self.base_model.merge_adapter(adapter_names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        self.base_model.unmerge_adapter()

    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        """Merge the active adapters (or ``adapter_names``) and return the plain base model holding the merged
        weights. On a 4-bit base (QLoRA) the result is a dequantised full-precision model (with a warning)."""
        return self.base_model.merge_and_unload(progressbar, safe_merge, adapter_names)

    def unload(self) -> nn.Module:
        """Remove every adapter (unmerging first) and return the original base model."""
        return self.base_model.unload()

    def add_weighted_adapter(
        self,
        adapters: list[str],
        weights: list[float],
        adapter_name: str,
        combination_type: str = "svd",
        svd_rank: int | None = None,
        svd_clamp: float | None = None,
        svd_full_matrices: bool = True,
        svd_driver: str | None = None,
        density: float | None = None,
        majority_sign_method: str = "total",
    ) -> None:
        """peft's weighted merge of LoRA adapters into a new one (``linear``, ``cat``, ``svd``, TIES, DARE and
        magnitude pruning; see :mod:`peftkit.composition.weighted`). One adapter with weight ``w`` gives
        ``w dW``; a negative weight subtracts. Not made active."""
        from .composition.weighted import Options, add_weighted_adapter

        options = Options(
            combination_type,
            svd_rank,
            svd_clamp,
            svd_full_matrices,
            svd_driver,
            density,
            majority_sign_method,
        )
        add_weighted_adapter(self, adapters, weights, adapter_name, options)

    # ---- forward -----------------------------------------------------------------------------------
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
        stage read it. A loss in the output gets the terms peft's tuners add (AdaLoRA's orthogonality
        penalty)."""
        batch = batch_size(args, kwargs)
        if adapter_names is not None:
            self._check_mixable(adapter_names, batch)
        tasks = current_rows().tasks if tasks is None else tasks
        with routed(RowContext.of(adapter_names, tasks, batch)):
            out = self.prompt_encoder.run(self.get_base_model(), args, kwargs, self.active_adapters)
        return self.base_model.add_forward_loss(out)

    def _check_mixable(self, adapter_names: list[str], batch: int | None) -> None:
        """Unknown names and a wrong number of rows are refused here; a merged layer refuses per-row adapters
        itself (:meth:`AdapterLayer.check_mixable`), so a forward never walks every module."""
        unknown = sorted({n for n in adapter_names if n != BASE_ROW and n not in self.peft_config})
        if unknown:
            raise AdapterError(
                f"Trying to infer with non-existing adapter(s): {', '.join(unknown)} (unknown adapter(s) "
                f"{unknown}; this model has {sorted(self.peft_config)})"
            )
        if batch is not None and (not adapter_names or batch % len(adapter_names)):
            raise AdapterError(
                "Length of `adapter_names` should be the same as the number of inputs, but got "
                f"{len(adapter_names)} and {batch} respectively (adapter_names has {len(adapter_names)} "
                f"entries but the batch has {batch} rows)"
            )

    def generate(self, *args: Any, **kwargs: Any):
        """Decode with peftkit's engine, taking ``transformers``' ``generate`` arguments: ``input_ids``,
        ``attention_mask``, ``max_length`` / ``max_new_tokens`` (default: the model's ``generation_config``),
        the strategy keywords, ``return_dict_in_generate`` / ``output_scores``, ``generation_config``, and for
        encoder-decoders ``decoder_input_ids`` (see :mod:`peftkit.hf_generate`; an argument it cannot honour
        is refused by name). peftkit's own: ``adapter_names`` (a per-row adapter), ``config=`` (a
        :class:`~peftkit.decoding.DecodingConfig`), ``return_output=True`` (the engine's output)."""
        from .hf_generate import generate

        return generate(self, args, kwargs)

    # ---- accounting --------------------------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, all)`` parameters of the whole model (a 4-bit weight counts its logical size)."""
        params = {id(p): p for p in self.parameters()}.values()
        return sum(logical_numel(p) for p in params if p.requires_grad), sum(logical_numel(p) for p in params)

    def parameter_report(self) -> ParameterReport:
        trainable, total = self.get_nb_trainable_parameters()
        name = self.active_adapter
        size = (
            sum(t.numel() * t.element_size() for t in self.adapter_state_dict(name).values()) if name else 0
        )
        return ParameterReport(trainable, total, size)

    def print_trainable_parameters(self) -> None:
        """peft's line: ``trainable params: ... || all params: ... || trainable%: ...`` (peftkit's report
        with the adapter's size is :meth:`parameter_report`)."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / max(total, 1):.4f}"
        )

    def get_layer_status(self) -> list:
        from .status import get_layer_status

        return get_layer_status(self)

    def get_model_status(self):
        from .status import get_model_status

        return get_model_status(self)

    # ---- checkpoints -------------------------------------------------------------------------------
    def adapter_state_dict(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """One adapter's tensors in peft's key scheme, valid on the original base model."""
        self.check_known([adapter_name])
        prefix = get_method(self.peft_config[adapter_name]).key_prefix
        out: dict[str, torch.Tensor] = {}
        out.update(self.prompt_encoder.adapter_state_dict(adapter_name))
        for path, layer in self.layers():
            export = getattr(layer, "export_state_dict", layer.adapter_state_dict)
            out.update({f"{prefix}{path}.{k}": v for k, v in export(adapter_name).items()})
        params = dict(self.get_base_model().named_parameters())
        out.update({f"{prefix}{n}": params[n].data for n in self.base_model.extra_params[adapter_name]})
        return out

    def load_adapter_state_dict(self, adapter_name: str, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`adapter_state_dict`: every key must land, every adapter tensor be given."""
        prefix = get_method(self.peft_config[adapter_name]).key_prefix
        self.base_model.materialize(adapter_name)  # weights made on the meta device (low_cpu_mem_usage)
        state = self.prompt_encoder.load_adapter_state_dict(adapter_name, state)
        self.base_model.refresh_trainable()  # loading bakes a reparametrisation into new parameters
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
        params = dict(self.get_base_model().named_parameters())
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
        safe_serialization: bool = True,
        selected_adapters: list[str] | None = None,
        save_embedding_layers: bool | str = "auto",
        is_main_process: bool = True,
        path_initial_model_for_weight_conversion: str | None = None,
        *,
        adapter_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Save adapters in peft's format: 'default' in the folder itself, others in sub-folders by name,
        with a README.md model card and ``base_model_name_or_path`` in ``adapter_config.json``.

        ``selected_adapters`` (peftkit's older name: ``adapter_names``) picks the adapters;
        ``safe_serialization=False`` writes ``adapter_model.bin`` (a pickle) instead of safetensors;
        ``save_embedding_layers`` also saves the base's embedding weights (``"auto"``: when the adapter
        targets them, as peft); ``state_dict=None`` (what ``transformers.Trainer`` passes) is taken; any
        other argument peft takes is refused by name. ``is_main_process`` (as in ``transformers`` and
        ``peft``): whether this process writes the files. A model sharded over processes calls this on
        every rank (exporting may run adapter modules, which gather their shards together); only the
        main one writes.
        """
        names = _selected(self, selected_adapters, adapter_names)
        _check_save_options(path_initial_model_for_weight_conversion, kwargs)
        from .model_card import write_model_card

        if is_main_process:
            write_model_card(Path(save_directory), self)
        for name in names:
            folder = Path(save_directory) if name == "default" else Path(save_directory) / name
            config, method = self.peft_config[name], get_method(self.peft_config[name])
            targets = self.base_model.targets[name]
            data = method.to_peft_dict(config, self.get_base_model(), targets)
            data["base_model_name_or_path"] = data.get("base_model_name_or_path") or _name_or_path(self)
            data["inference_mode"] = True
            if data.get("task_type") is None:  # peft records the base's class for AutoPeftModel
                data["auto_mapping"] = _auto_mapping(self.get_base_model())
            located = original_paths(self.get_base_model(), targets)  # replicated layers: the originals
            meta = {
                "peftkit_method": method.name,
                "peftkit_fingerprint": json.dumps(
                    ckpt.fingerprint(self.get_base_model(), [*located], located)
                ),
            }
            tensors = saved_tensors(self, name, save_embedding_layers)
            if is_main_process:
                ckpt.write_adapter(folder, data, tensors, meta, safe_serialization)

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | Path,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        allow_pickle: bool | None = None,
        ignore_mismatch: bool = False,
        **kwargs: Any,
    ) -> PeftModel:
        """Load an adapter saved by peftkit or by ``peft`` onto ``model``, as the task class its config's
        ``task_type`` names (as peft).

        ``config`` replaces the saved config. An adapter saved by peftkit for another base (other
        architecture, shapes or weights) is refused unless ``ignore_mismatch=True``; a pickled
        ``adapter_model.bin`` is read by torch's weights-only unpickler (no code from the file runs;
        ``allow_pickle=True``: a full unpickle, trusted files only; ``False``: pickles refused).
        ``torch_device`` / ``device_map={"": device}`` put the adapter there.
        When loading fails, ``model`` is left unwrapped and unchanged.
        """
        device = _load_device(kwargs)
        config, state = _read_adapter(model, model_id, is_trainable, allow_pickle, ignore_mismatch, config)
        trainable = _trainable_flags(model)
        wrapper = TASK_CLASSES.get(str(_plain(config.task_type)), cls)
        peft_model = wrapper(model, config, adapter_name, autocast_adapter_dtype, low_cpu_mem_usage)
        try:
            peft_model.load_adapter_state_dict(adapter_name, _to(state, device))
        except BaseException:
            peft_model.unload()
            _restore_flags(trainable)
            raise
        if not is_trainable:
            peft_model.eval()
        return peft_model

    def load_adapter(
        self,
        model_id: str | Path,
        adapter_name: str,
        is_trainable: bool = False,
        torch_device: str | None = None,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        allow_pickle: bool | None = None,
        ignore_mismatch: bool = False,
        **kwargs: Any,
    ) -> LoadResult:
        """Load a saved adapter under ``adapter_name`` (not made active). A name the model already holds gets
        the saved weights (as peft: ``transformers.Trainer`` reloads its best checkpoint this way)."""
        _check_autocast(autocast_adapter_dtype)
        device = _load_device({**kwargs, "torch_device": torch_device})
        if adapter_name in self.peft_config:
            _, state = _read_adapter(self.get_base_model(), model_id, True, allow_pickle, ignore_mismatch)
            self.load_adapter_state_dict(adapter_name, _to(state, device))
        else:
            config, state = _read_adapter(
                self.get_base_model(), model_id, is_trainable, allow_pickle, ignore_mismatch
            )
            self.add_adapter(adapter_name, config, low_cpu_mem_usage)
            try:
                self.load_adapter_state_dict(adapter_name, _to(state, device))
            except Exception:
                self.delete_adapter(adapter_name)
                raise
        if not is_trainable:
            self.eval()
        return LoadResult([], [])

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Save the adapters (:meth:`save_pretrained`) and upload them to a model repository, as peft does
        (``huggingface_hub``; ``private``, ``token``, ``commit_message``, ``revision`` are passed on)."""
        from .model_card import push_folder

        return push_folder(self, repo_id, **kwargs)


def _check_autocast(autocast_adapter_dtype: bool) -> None:
    if autocast_adapter_dtype is not True:
        raise ConfigError(
            "autocast_adapter_dtype",
            "peftkit keeps adapters on half-precision bases in float32; False is not taken",
        )


def _selected(model: PeftModel, selected: list[str] | None, legacy: list[str] | None) -> list[str]:
    if selected is not None and legacy is not None:
        raise ConfigError(
            "adapter_names", "give selected_adapters or adapter_names (the older name), not both"
        )
    names = selected if selected is not None else legacy
    names = list(model.peft_config) if names is None else list(names)
    if not model.peft_config:
        raise AdapterError(
            "nothing to save: this model holds no adapter (the last one was deleted, or unload() / "
            "merge_and_unload() took them out); add or load one first"
        )
    model.check_known(names)
    return names


def _check_save_options(conversion: str | None, kwargs: dict[str, Any]) -> None:
    if conversion is not None:
        raise ConfigError(
            "path_initial_model_for_weight_conversion",
            "peftkit always saves PiSSA/OLoRA adapters converted for the original base; leave it unset",
        )
    if kwargs.get("state_dict") is not None:
        raise ConfigError("state_dict", "peftkit saves the adapters' own tensors; pass state_dict=None")
    unknown = sorted(k for k in kwargs if k != "state_dict")
    if unknown:
        raise ConfigError(
            unknown[0], "not an option of save_pretrained in peftkit (hub uploads: push_to_hub)"
        )


def _name_or_path(model: PeftModel) -> str | None:
    """The base model's ``name_or_path`` (peft's ``base_model_name_or_path``), when it has one."""
    return model.get_base_model().__dict__.get("name_or_path") or None


def _auto_mapping(base: nn.Module) -> dict[str, str]:
    return {"base_model_class": type(base).__name__, "parent_library": type(base).__module__}


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def _load_device(kwargs: dict[str, Any]) -> str | torch.device | None:
    """``torch_device`` or a ``device_map`` that puts everything on one device; other keys are refused."""
    kwargs = dict(kwargs)
    device, device_map = kwargs.pop("torch_device", None), kwargs.pop("device_map", None)
    if kwargs:
        raise ConfigError(sorted(kwargs)[0], "not an option of peftkit's adapter loading")
    if device_map is None:
        return device
    if isinstance(device_map, (str, torch.device)):
        return device_map
    if isinstance(device_map, dict) and set(device_map) == {""}:
        return device_map[""]
    raise ConfigError("device_map", "peftkit loads an adapter onto one device: give {'': device} or a device")


def _to(state: dict[str, torch.Tensor], device: str | torch.device | None) -> dict[str, torch.Tensor]:
    return state if device is None else {k: v.to(device) for k, v in state.items()}


def _read_adapter(
    model: nn.Module,
    path: str | Path,
    is_trainable: bool,
    allow_pickle: bool | None,
    ignore_mismatch: bool = False,
    config: PeftConfig | None = None,
) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
    if config is None:
        data = ckpt.read_config(path)
        config = method_for_saved_config(data).config_from_dict(data)
    elif not isinstance(config, PeftConfig):
        raise ConfigError("config", f"expected a PeftConfig, got {type(config).__name__}")
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
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _check_unwrapped(model: nn.Module) -> None:
    """A base already wrapped would have its adapters overwritten by a second wrapper: refused."""
    if (
        isinstance(model, (PeftModel, TunerModel))
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


def get_peft_model(
    model: nn.Module,
    peft_config: PeftConfig,
    adapter_name: str = "default",
    mixed: bool = False,
    autocast_adapter_dtype: bool = True,
    revision: str | None = None,
    low_cpu_mem_usage: bool = False,
) -> PeftModel:
    """Wrap ``model`` with a new adapter of the method ``peft_config`` belongs to, as the task class its
    ``task_type`` names (``PeftModelForCausalLM``, ...; a plain :class:`PeftModel` without one). ``mixed``
    (peft's ``PeftMixedModel``) and ``revision`` (a hub revision) are refused: every peftkit model takes
    adapters of several methods, and bases come from local folders."""
    if mixed:
        raise ConfigError("mixed", "peftkit's PeftModel mixes methods already; leave mixed=False")
    if revision is not None:
        raise ConfigError("revision", "peftkit loads base models from local folders; leave revision unset")
    wrapper = TASK_CLASSES.get(str(_plain(peft_config.task_type)), PeftModel)
    return wrapper(model, peft_config, adapter_name, autocast_adapter_dtype, low_cpu_mem_usage)
