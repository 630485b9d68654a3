"""A training run as one YAML file (every field also settable by a ``--section.field`` flag).

model:   {name: minilm-l6}
task:    {type: classification, text_column: sentence, label_column: label, max_length: 64}
data:    {train: sst2/train.tsv, eval_fraction: 0.1, limit: 8000}
adapter: {method: lora, r: 8, target_modules: [query, value]}
train:   {lr: 5.0e-4, epochs: 1, batch_size: 32}
output_dir: runs/sst2-lora
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .config import check_choice, check_fields, check_range
from .data import TaskSpec
from .errors import ConfigError
from .io import parse_yaml
from .registry import config_from_dict, get_method
from .training import TrainConfig
from .training.config import default_warmup_ratio

DTYPES = ("float32", "bfloat16")
QUANTIZE = ("nf4",)


@dataclass
class ModelSection:
    """Args: name: packaged name, local directory or hub id. dtype: weights' dtype.
    quantize: ``nf4`` stores the base's linear layers in 4 bits (QLoRA; needs bitsandbytes), each
    matmul computed in ``compute_dtype`` (``auto``: bfloat16 where the hardware multiplies it fast,
    else float32; see :mod:`peftkit.precision`).
    adapters: saved adapters loaded (frozen) before the run's own adapter is added, as
    ``{name: folder}``: the adapters an AdapterFusion fuses, or the lower adapters of a stack.
    """

    name: str = "smollm2-135m"
    dtype: str = "float32"
    adapters: dict[str, str] | None = field(default_factory=dict)
    quantize: str | None = None
    compute_dtype: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self)
        check_choice("model.dtype", self.dtype, DTYPES)
        check_choice("model.compute_dtype", self.compute_dtype, ("auto", *DTYPES))
        if self.quantize is not None:
            check_choice("model.quantize", self.quantize, QUANTIZE)
        self.adapters = {} if self.adapters is None else self.adapters
        if not isinstance(self.adapters, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.adapters.items()
        ):
            raise ConfigError(
                "model.adapters", f"expected a mapping name -> adapter folder, got {self.adapters!r}"
            )
        if "default" in self.adapters:
            raise ConfigError("model.adapters", "'default' is the run's own adapter; choose another name")


HOLDOUTS = ("test", "validation")


@dataclass
class DataSection:
    """Args:
    train: training file (jsonl/csv/tsv). hub: a hub data set name instead (needs `datasets` + network).
    eval: held-out file; without it ``eval_fraction`` of train is held out.
    group_column: keep rows sharing this column's value on one side of the split (e.g. E2E's ``mr``).
    format / delimiter / columns: reader options (columns renames source -> task column).
    limit: use at most this many training rows (0: all). seed: seeds the split.
    holdout: what the run evaluates on: ``"test"``, the held-out rows; ``"validation"``, to choose
    settings without touching them: the held-out rows are set aside and a validation split of the same
    fraction (groups kept together) is cut from the training rows, which the run trains on the rest of.
    """

    train: str | None = None
    hub: str | None = None
    hub_split: str = "train"
    eval: str | None = None
    eval_fraction: float = 0.1
    group_column: str | None = None
    format: str | None = None
    delimiter: str | None = None
    columns: dict[str, str] | None = field(default_factory=dict)
    limit: int = 0
    eval_limit: int = 0
    seed: int = 0
    holdout: str = "test"

    def __post_init__(self) -> None:
        check_fields(self)
        check_range("data.eval_fraction", self.eval_fraction, 0.0, 1.0)
        check_choice("data.holdout", self.holdout, HOLDOUTS)
        if self.limit < 0 or self.eval_limit < 0:
            raise ConfigError("data.limit", "must be >= 0")
        self.columns = {} if self.columns is None else self.columns
        if not isinstance(self.columns, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.columns.items()
        ):
            raise ConfigError("data.columns", f"expected a mapping source -> column, got {self.columns!r}")


SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "task": TaskSpec,
    "data": DataSection,
    "train": TrainConfig,
}


@dataclass
class RunConfig:
    model: ModelSection
    task: TaskSpec
    data: DataSection
    adapter: Any  # a PeftConfig of the chosen method
    train: TrainConfig
    output_dir: str = "runs/run"

    def to_dict(self) -> dict[str, Any]:
        adapter = {"method": self.adapter.method, **self.adapter.to_dict()}
        out = {k: dataclasses.asdict(getattr(self, k)) for k in SECTIONS}
        return {**out, "adapter": adapter, "output_dir": self.output_dir}

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _section(name: str, cls: type, data: Any) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(name, f"must be a mapping of fields, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"unknown field; allowed: {sorted(known)}")
    try:  # every section checks its field types and ranges when built (peftkit.config.check_fields)
        return cls(**data)
    except TypeError as err:
        raise ConfigError(name, str(err)) from err
    except ConfigError as err:
        raise ConfigError(
            err.field if err.field.startswith(name) else f"{name}.{err.field}", str(err).split(": ", 1)[-1]
        ) from err


def build_run_config(data: dict[str, Any]) -> RunConfig:
    """Validate a parsed run config; errors name the section and field."""
    allowed = {*SECTIONS, "adapter", "output_dir"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(unknown[0], f"unknown section; allowed: {sorted(allowed)}")
    if "type" not in (data.get("task") or {}):
        raise ConfigError("task.type", "missing; one of ['classification', 'cloze', 'sft', 'seq2seq']")
    sections = {name: _section(name, cls, data.get(name)) for name, cls in SECTIONS.items()}
    adapter = data.get("adapter") or {"method": "lora", "target_modules": "all-linear"}
    if not isinstance(adapter, dict):
        raise ConfigError("adapter", f"must be a mapping of fields, got {adapter!r}")
    try:
        adapter_config = config_from_dict(adapter)
    except ConfigError as err:
        raise ConfigError(f"adapter.{err.field}", str(err).split(": ", 1)[-1]) from err
    except (TypeError, AttributeError) as err:  # a value of the wrong type reached the method's checks
        raise ConfigError("adapter", f"a field has a value of the wrong type ({err}); got {adapter}") from err
    # the method's default warm-up written into the run (run.yaml says what trained; resume compares it)
    sections["train"] = replace(
        sections["train"], warmup_ratio=default_warmup_ratio(sections["train"], adapter_config)
    )
    return RunConfig(adapter=adapter_config, output_dir=str(data.get("output_dir", "runs/run")), **sections)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--config", f"{path} does not exist")
    try:
        data = parse_yaml(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError("--config", f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping of sections")
    return data


def flag_fields(method: str | None = None) -> dict[str, list[tuple[str, str, bool]]]:
    """Every settable field per section as ``(name, help, shown)``, for ``--section.field`` flags. Every
    method's adapter fields are there (any can be set), but only the fields all methods share and, when
    ``method`` is given, that method's own are shown in ``--help``."""
    from .config import PeftConfig
    from .registry import list_methods

    out = {
        name: [(f.name, _help(cls, f.name), True) for f in dataclasses.fields(cls)]
        for name, cls in SECTIONS.items()
    }
    shared = {f.name for f in dataclasses.fields(PeftConfig)}
    adapter = {"method": (f"adapter method, one of {list_methods()}", True)}
    for name in [method, *list_methods()] if method in list_methods() else list_methods():
        for f in dataclasses.fields(get_method(name).config_class):
            shown = f.name in shared or name == method
            adapter.setdefault(f.name, (_help(get_method(name).config_class, f.name), shown))
    out["adapter"] = sorted((name, text, shown) for name, (text, shown) in adapter.items())
    return out


def _help(cls: type, name: str) -> str:
    """The field's description from its config's docstring, with its type and default."""
    from .config import field_docs

    default = {f.name: f for f in dataclasses.fields(cls)}[name]
    value = default.default if default.default is not dataclasses.MISSING else "(empty)"
    text = field_docs(cls).get(name, f"{cls.__name__}.{name}")
    return f"{text} (default: {value})".replace("%", "%%")  # argparse formats help with %


def _flag_value(key: str, raw: Any) -> Any:
    """A flag's value parsed as YAML; text YAML cannot read is an error naming the flag."""
    if not isinstance(raw, str):
        return raw
    try:
        return parse_yaml(raw)
    except yaml.YAMLError as err:
        where = f" ({err.problem})" if getattr(err, "problem", None) else ""
        raise ConfigError(
            f"--{key}",
            f"{raw!r} is not a YAML value{where}; quote a text holding YAML syntax: --{key} \"'{raw}'\"",
        ) from err


def apply_overrides(data: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """Set ``section.field`` values (YAML-parsed: ``8`` is an int, ``[a, b]`` a list) on top of a config."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, raw in overrides.items():
        value = _flag_value(key, raw)
        if key == "output_dir":
            data["output_dir"] = value
            continue
        section, _, name = key.partition(".")
        data.setdefault(section, {})
        data[section] = {**(data[section] or {}), name: value}
    return data
