"""The served models: one frozen base and named adapters of any method, loaded and unloaded live.

Model-changing operations (load, delete) run on the scheduler thread between decoding steps, never
during a forward. Requests count against their adapter while they wait or run: an unload hides the
adapter at once (new requests get 404) and deletes it when the last such request has finished.
"""

from __future__ import annotations

import copy
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_config
from ..layer import adapter_layers, get_parent
from ..model import PeftModel
from ..registry import method_for_saved_config
from ..rows import BASE_ROW
from .protocol import ApiError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")


@dataclass
class Entry:
    name: str
    method: str
    path: str
    created: int
    requests: int = 0  # waiting or running
    unloading: bool = False


class AdapterTable:
    """The base model (``base_name``) and its adapters; ``model`` is what the scheduler runs."""

    def __init__(self, model: nn.Module, tokenizer, base_name: str, adapter_dir: Path | None = None):
        self.base, self.model, self.tokenizer = model, model, tokenizer
        # the scheduler thread decodes with its own copy: a fast tokenizer is not safe to share
        # between threads (encoding may change its padding/truncation state while another decodes)
        self.decoder = copy.deepcopy(tokenizer)
        self.base_name = base_name
        self.adapter_dir = adapter_dir.resolve() if adapter_dir is not None else None
        self.created = int(time.time())
        self.entries: dict[str, Entry] = {}
        self.lock = threading.Lock()

    # ---- reading (any thread) -----------------------------------------------------------------
    def listing(self) -> list[Entry]:
        with self.lock:
            return [e for e in self.entries.values() if not e.unloading]

    def acquire(self, model_name: str) -> str:
        """Count a request against ``model_name``; returns its row label (an adapter or ``BASE_ROW``)."""
        if model_name == self.base_name:
            return BASE_ROW
        with self.lock:
            entry = self.entries.get(model_name)
            if entry is None or entry.unloading:
                raise ApiError(
                    404,
                    f"the model {model_name!r} does not exist; GET /v1/models lists the base and the loaded "
                    "adapters",
                    param="model",
                    code="model_not_found",
                )
            entry.requests += 1
            return model_name

    def release(self, adapter: str) -> None:
        """A request for ``adapter`` has ended; an unloaded adapter goes once none is left (scheduler)."""
        if adapter == BASE_ROW:
            return
        with self.lock:
            entry = self.entries[adapter]
            entry.requests -= 1
            gone = entry.unloading and entry.requests == 0
        if gone:
            self._delete(adapter)

    def virtual_placeholders(self, adapter: str) -> tuple[int, int] | None:
        """``(token id, count)`` a P-tuning template adapter needs in the prompt, else None."""
        units = dict(getattr(self.model, "prompt_encoder", {}))
        unit = units.get(adapter)
        token = unit.replaces_tokens() if unit is not None else None
        return None if token is None else (token, unit.num_virtual_tokens)

    # ---- changing (scheduler thread) ----------------------------------------------------------
    def check_name(self, name: str) -> None:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ApiError(
                400,
                "lora_name must be 1-64 letters, digits, '_' or '-', starting with a letter or digit",
                param="lora_name",
            )
        with self.lock:
            entry = self.entries.get(name)
        if name == self.base_name or (entry is not None and not entry.unloading):
            raise ApiError(400, f"the model {name!r} is already loaded; unload it first", param="lora_name")
        if entry is not None:
            raise ApiError(
                409,
                f"the adapter {name!r} is still unloading ({entry.requests} requests are finishing); "
                "retry when they are done",
                param="lora_name",
            )

    def inside_adapter_dir(self, path: str) -> Path:
        """``path`` (relative to ``--adapter-dir`` or absolute), refused unless it lies inside it."""
        if self.adapter_dir is None:
            raise ApiError(
                403, "loading adapters is off: start the server with --adapter-dir DIR", code="forbidden"
            )
        if not isinstance(path, str) or not path or "\x00" in path:
            raise ApiError(400, "lora_path must be a non-empty folder path", param="lora_path")
        folder = (self.adapter_dir / path).resolve()  # symlinks followed: no way out through a link
        if not folder.is_relative_to(self.adapter_dir):
            raise ApiError(
                403, "lora_path must lie inside --adapter-dir", param="lora_path", code="forbidden"
            )
        if not folder.is_dir():
            raise ApiError(400, f"{path!r} under --adapter-dir is not an adapter folder", param="lora_path")
        return folder

    def load(self, name: str, folder: Path) -> Entry:
        """Load the adapter in ``folder`` as ``name``; any failure leaves the served models as they were."""
        if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
            raise ApiError(
                400,
                f"{folder.name} is not an adapter folder holding {CONFIG_NAME} and {WEIGHTS_NAME} "
                "(only safetensors weights are loaded: pickled files can run code)",
                param="lora_path",
            )
        try:
            method = method_for_saved_config(read_config(folder)).name
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(folder, name)  # safetensors only, fingerprint checked
            else:
                self.model = PeftModel.from_pretrained(self.base, folder, name)
            self.model.eval()  # new modules start in training mode (dropout)
        except Exception as err:  # a failing load must leave the server serving, whatever went wrong
            self._purge(name)
            message = f"cannot load adapter {name!r} from {folder.name}: {err}"
            raise ApiError(400, message, param="lora_path") from err
        entry = Entry(name, method, str(folder), int(time.time()))
        with self.lock:
            self.entries[name] = entry
        return entry

    def unload(self, name: str) -> int:
        """Hide ``name`` now, delete it when its requests have finished; returns how many still run."""
        with self.lock:
            entry = self.entries.get(name)
            if entry is None or entry.unloading:
                raise ApiError(
                    404, f"no adapter {name!r} is loaded", param="lora_name", code="model_not_found"
                )
            entry.unloading = True
            running = entry.requests
        if running == 0:
            self._delete(name)
        return running

    def _delete(self, name: str) -> None:
        self.model.delete_adapter(name)
        with self.lock:
            del self.entries[name]

    def _purge(self, name: str) -> None:
        """Remove whatever a failed load of ``name`` left behind (wrapped layers, config entries)."""
        if isinstance(self.model, PeftModel) and name in self.model.peft_config:
            self.model.delete_adapter(name)
            return
        for path, layer in list(adapter_layers(self.base)):
            if name in layer.adapter_names():
                layer.delete(name)
            if not layer.adapter_names():
                parent, attr = get_parent(self.base, path)
                setattr(parent, attr, layer.base)
