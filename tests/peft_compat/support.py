"""Shared pieces of the peft compatibility suite: tiny models, the case table, library-neutral probes.

Every check receives ``lib``, the module under test (``peft`` or ``peftkit``), and uses only what a peft
user writes: ``lib.LoraConfig(...)``, ``lib.get_peft_model(...)`` and the wrapped model's public methods.
Where a check must look inside a model it goes by parameter names (``lora_A.<adapter>``) and by module
outputs, never by either library's classes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import transformers
import yaml
from conftest import tiny_bert, tiny_gpt2, tiny_llama, tiny_t5
from tiny_tokenizer import tiny_tokenizer
from torch import nn


class MLP(nn.Module):
    """peft's custom test model (its ``tests/test_custom_models.py``): Linear(10, 20), ReLU, Linear(20, 2)."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.lin0 = nn.Linear(10, 20, bias=bias)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.lin1 = nn.Linear(20, 2, bias=bias)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.sm(self.lin1(self.drop(self.relu(self.lin0(X.float())))))  # (N, 2)


def tiny_bert_for(task: str) -> nn.Module:
    cfg = tiny_bert().config
    return getattr(transformers, f"BertFor{task}")(cfg) if task else transformers.BertModel(cfg)


BUILDERS = {
    "llama": tiny_llama,
    "gpt2": tiny_gpt2,
    "t5": tiny_t5,
    "bert_cls": tiny_bert,
    "mlp": MLP,
}
DECODERS = ("llama", "gpt2")
GENERATORS = ("llama", "gpt2", "t5")


def base_model(kind: str, seed: int = 0, dtype: torch.dtype | None = None) -> nn.Module:
    """A fresh tiny model in eval mode, as ``from_pretrained`` hands it back (the same weights per seed)."""
    torch.manual_seed(seed)
    model = BUILDERS[kind]().eval()
    if hasattr(model, "config"):  # as if loaded by name (peft records it as base_model_name_or_path)
        model.config.name_or_path = model.name_or_path = f"peft-compat/tiny-{kind}"
    return model.to(dtype) if dtype is not None else model


def inputs_for(kind: str) -> dict[str, torch.Tensor]:
    """peft's ``prepare_inputs_for_testing``: two rows of three tokens, the second with a masked hole."""
    if kind == "mlp":
        return {"X": torch.arange(90).view(9, 10)}
    ids = torch.tensor([[1, 1, 1], [1, 2, 1]])
    inputs = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 1]])}
    if kind == "t5":
        inputs["decoder_input_ids"] = ids.clone()
    return inputs


def output(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(**inputs)[0]``: the logits of a transformers model, the tensor of a plain module."""
    out = model(**inputs)
    return out if isinstance(out, torch.Tensor) else out[0]


PROMPT_CONFIGS = ("PromptTuningConfig", "PrefixTuningConfig", "PromptEncoderConfig")


@dataclass(frozen=True)
class Case:
    """One row of the case table: a config (by its peft class name) on a tiny model kind."""

    id: str
    kind: str
    config_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.id

    @property
    def prompt(self) -> bool:
        return self.config_name in PROMPT_CONFIGS

    @property
    def mergeable(self) -> bool:
        return not self.prompt

    @property
    def multi(self) -> bool:
        """peft allows only one AdaLoRA adapter per model."""
        return self.config_name != "AdaLoraConfig"

    @property
    def lora(self) -> bool:
        return self.config_name == "LoraConfig"

    def config(self, lib: ModuleType, **changes: Any) -> Any:
        return getattr(lib, self.config_name)(**{**self.kwargs, **changes})

    def base(self, **kw: Any) -> nn.Module:
        return base_model(self.kind, **kw)

    def inputs(self) -> dict[str, torch.Tensor]:
        return inputs_for(self.kind)

    def peft_model(self, lib: ModuleType, adapter_name: str = "default", **changes: Any) -> nn.Module:
        return lib.get_peft_model(self.base(), self.config(lib, **changes), adapter_name=adapter_name)


def _lora(targets: list[str], task: str | None, **kw: Any) -> dict[str, Any]:
    return {"task_type": task, "target_modules": targets, "r": 8, "lora_alpha": 32, **kw}


def _prompt(task: str, **kw: Any) -> dict[str, Any]:
    return {"task_type": task, "num_virtual_tokens": 4, **kw}


LLAMA_ATTN = ["q_proj", "v_proj"]
CASES = [
    Case("llama-lora", "llama", "LoraConfig", _lora(LLAMA_ATTN, "CAUSAL_LM", lora_dropout=0.05)),
    Case("llama-dora", "llama", "LoraConfig", _lora(LLAMA_ATTN, "CAUSAL_LM", use_dora=True)),
    Case(
        "llama-adalora",
        "llama",
        "AdaLoraConfig",
        {"task_type": "CAUSAL_LM", "target_modules": LLAMA_ATTN, "init_r": 6, "target_r": 4, "total_step": 1},
    ),
    Case(
        "llama-ia3",
        "llama",
        "IA3Config",
        {
            "task_type": "CAUSAL_LM",
            "target_modules": ["k_proj", "v_proj", "down_proj"],
            "feedforward_modules": ["down_proj"],
        },
    ),
    Case("llama-prompt", "llama", "PromptTuningConfig", _prompt("CAUSAL_LM")),
    Case("llama-prefix", "llama", "PrefixTuningConfig", _prompt("CAUSAL_LM")),
    Case("llama-ptuning", "llama", "PromptEncoderConfig", _prompt("CAUSAL_LM", encoder_hidden_size=16)),
    Case("gpt2-lora", "gpt2", "LoraConfig", _lora(["c_attn"], "CAUSAL_LM")),
    Case(
        "gpt2-ia3",
        "gpt2",
        "IA3Config",
        {
            "task_type": "CAUSAL_LM",
            "target_modules": ["c_attn", "mlp.c_proj"],
            "feedforward_modules": ["mlp.c_proj"],
        },
    ),
    Case("t5-lora", "t5", "LoraConfig", _lora(["q", "v"], "SEQ_2_SEQ_LM")),
    Case(
        "t5-adalora",
        "t5",
        "AdaLoraConfig",
        {
            "task_type": "SEQ_2_SEQ_LM",
            "target_modules": ["q", "v"],
            "init_r": 6,
            "target_r": 4,
            "total_step": 1,
        },
    ),
    Case(
        "t5-ia3",
        "t5",
        "IA3Config",
        {"task_type": "SEQ_2_SEQ_LM", "target_modules": ["k", "v", "wo"], "feedforward_modules": ["wo"]},
    ),
    Case("t5-prompt", "t5", "PromptTuningConfig", _prompt("SEQ_2_SEQ_LM")),
    Case("t5-prefix", "t5", "PrefixTuningConfig", _prompt("SEQ_2_SEQ_LM")),
    Case("t5-ptuning", "t5", "PromptEncoderConfig", _prompt("SEQ_2_SEQ_LM", encoder_hidden_size=16)),
    Case("mlp-lora", "mlp", "LoraConfig", {"target_modules": ["lin0"]}),
    Case("mlp-lora-mts", "mlp", "LoraConfig", {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    Case("mlp-dora", "mlp", "LoraConfig", {"target_modules": ["lin0", "lin1"], "use_dora": True}),
    Case("mlp-ia3", "mlp", "IA3Config", {"target_modules": ["lin0"], "feedforward_modules": ["lin0"]}),
    Case("mlp-adalora", "mlp", "AdaLoraConfig", {"target_modules": ["lin0"], "total_step": 1}),
]
BY_ID = {c.id: c for c in CASES}


def cases(*ids: str, where=None) -> list:
    """Case parameters, by id or by a predicate over :class:`Case` (all cases when neither is given)."""
    chosen = [BY_ID[i] for i in ids] if ids else [c for c in CASES if where is None or where(c)]
    return [pytest.param(c, id=c.id) for c in chosen]


# ---- probes that work on either library's models -----------------------------------------------------------
def adapter_params(model: nn.Module, adapter: str = "default") -> dict[str, nn.Parameter]:
    """The parameters that belong to ``adapter``: both libraries put the adapter name in the path."""
    return {n: p for n, p in model.named_parameters() if f".{adapter}." in n or n.endswith(f".{adapter}")}


# left alone: trained copies of whole modules (peft's init options never touch them) and AdaLoRA's rank count
UNPERTURBED = ("modules_to_save", "ranknum")


@torch.no_grad()
def perturb(model: nn.Module, adapter: str = "default", scale: float = 0.1, seed: int = 0) -> None:
    """Move ``adapter`` away from its identity init, like peft's tests do with ``init_*_weights=False``."""
    gen = torch.Generator().manual_seed(seed)
    params = {n: p for n, p in adapter_params(model, adapter).items() if not any(s in n for s in UNPERTURBED)}
    assert params, f"no parameters of adapter {adapter!r} found"
    for p in params.values():
        if p.is_floating_point():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def wrapped_layers(model: nn.Module, adapter: str = "default") -> dict[str, nn.Module]:
    """The modules that hold ``adapter``'s LoRA factors, by path (a ``lora_A.<adapter>`` parameter)."""
    paths = {n.split(".lora_A.")[0] for n in adapter_params(model, adapter) if ".lora_A." in n}
    modules = dict(model.named_modules())
    return {p: modules[p] for p in sorted(paths)}


def lora_rank(model: nn.Module, adapter: str) -> set[int]:
    """The ranks of ``adapter``'s ``lora_A`` factors (one per wrapped layer)."""
    return {p.shape[0] for n, p in adapter_params(model, adapter).items() if ".lora_A." in n}


@torch.no_grad()
def layer_deltas(model: nn.Module, adapter: str, probe: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each wrapped layer's change of output under ``adapter`` for fixed inputs: ``layer(x) - base(x)``."""
    model.set_adapter(adapter)
    model.eval()  # layers made after the last eval() (a new adapter's dropout) are in training mode
    layers = {path: m for path, m in wrapped_layers(model, adapter).items() if path in probe}
    with_adapter = {path: layer(probe[path]) for path, layer in layers.items()}
    with model.disable_adapter():
        return {path: with_adapter[path] - layer(probe[path]) for path, layer in layers.items()}


def probe_inputs(model: nn.Module, adapter: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed random input per wrapped Linear layer, sized by its ``lora_A`` factor: ``(3, in_features)``."""
    gen = torch.Generator().manual_seed(seed)
    widths = {
        n.split(".lora_A.")[0]: p.shape[1]
        for n, p in adapter_params(model, adapter).items()
        if ".lora_A." in n
    }
    return {path: torch.randn(3, width, generator=gen) for path, width in sorted(widths.items())}


def require(lib: ModuleType, condition: bool, what: str) -> None:
    """A check's precondition (peft's "sanity check" lines, e.g. the adapter changes the output).

    Where peft itself does not meet it on this transformers version the case is skipped, with ``what`` as
    the reason; for peftkit it is an ordinary assertion.
    """
    if condition:
        return
    if lib.__name__ == "peft":
        pytest.skip(f"peft itself fails here: {what}")
    raise AssertionError(what)


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` (peft's tests derive a second config this way)."""
    return dataclasses.replace(config, **changes)


def save_base(model: nn.Module, folder: Path) -> nn.Module:
    """Write a tiny base model and load it back by path, so that ``base_model_name_or_path`` points at it
    (what ``AutoPeftModel*`` loads)."""
    model.save_pretrained(folder)
    return type(model).from_pretrained(folder).eval()


def read_model_card(folder: Path) -> dict[str, Any]:
    """The YAML front matter of the README.md model card that peft writes next to an adapter."""
    text = (folder / "README.md").read_text(encoding="utf-8")
    return yaml.safe_load(re.search(r"---\n(.*?)\n---", text, re.DOTALL).group(1))


def adapted_paths(model: nn.Module, adapter: str = "default") -> set[str]:
    """Paths of the layers ``adapter`` adapts (modules_to_save left out), with either library's prefix.

    ``...q_proj.lora_A.default.weight`` -> ``...q_proj``: the part before the adapter's own sub-module.
    """
    paths = set()
    for name in adapter_params(model, adapter):
        parts = name.split(".")
        idx = parts.index(adapter)
        if "modules_to_save" not in parts:
            paths.add(".".join(parts[: idx - 1]))
    return paths


def matches_suffixes(paths: set[str], suffixes: set[str]) -> bool:
    """Every path ends with one of ``suffixes`` and every suffix names at least one path."""
    hit = {s for s in suffixes for p in paths if p == s or p.endswith("." + s)}
    return bool(paths) and hit == suffixes and all(any(p.endswith("." + s) for s in suffixes) for p in paths)


def lm_rows(n: int = 8, seq: int = 6, seed: int = 0, vocab: int = 96) -> list[dict[str, torch.Tensor]]:
    """Random causal-LM training rows (labels = inputs) for ``transformers.Trainer``."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (seq,), generator=gen)
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return rows


def trainer_args(output_dir: Path, **kw: Any) -> transformers.TrainingArguments:
    """TrainingArguments for these tests: CPU, no reporting, no checkpoints unless asked."""
    defaults = {"output_dir": str(output_dir), "report_to": [], "use_cpu": True, "save_strategy": "no"}
    return transformers.TrainingArguments(**{**defaults, **kw})


def word_llama(seed: int = 0) -> nn.Module:
    """A tiny Llama whose vocabulary is the test tokenizer's (``tests/tiny_tokenizer.py``)."""
    torch.manual_seed(seed)
    return tiny_llama(vocab_size=len(tiny_tokenizer())).eval()
