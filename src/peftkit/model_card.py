"""The README.md model card ``save_pretrained`` writes beside an adapter, as peft writes it (``library_name:
peft``, the base model, the method's tags; the Hub loads such an adapter with peft or peftkit alike), and the
upload ``push_to_hub`` does. An existing card is updated, never replaced: its metadata and text are kept."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .io import atomic_write_text
from .peft_types import plain

CARD = "README.md"


def card_tags(model: Any) -> list[str]:
    """peft's tags: ``transformers`` for a transformers base, ``lora`` for LoRA, the base model's name."""
    import transformers

    base = model.get_base_model()
    tags = set(getattr(base, "model_tags", None) or [])
    if isinstance(base, transformers.PreTrainedModel):
        tags.add("transformers")
    peft_type = getattr(model.peft_type, "value", model.peft_type)
    if peft_type == "LORA":
        tags.add("lora")
    name = getattr(base, "name_or_path", None)
    if name:
        tags.add(f"base_model:adapter:{name}")
    return sorted(tags)


def write_model_card(folder: Path, model: Any) -> None:
    """Create or update ``folder/README.md`` with peft's metadata (on ``huggingface_hub``'s card template)."""
    from huggingface_hub import ModelCard, ModelCardData

    path = folder / CARD
    card = ModelCard.load(path) if path.is_file() else ModelCard.from_template(ModelCardData())
    card.data["library_name"] = "peft"
    tags = card_tags(model)
    if tags:
        card.data["tags"] = tags
    config = model.peft_config.get(model.active_adapter)
    if not card.data.pipeline_tag and plain(getattr(config, "task_type", None)) == "CAUSAL_LM":
        card.data.pipeline_tag = "text-generation"
    config = getattr(model.get_base_model(), "config", None)
    name = config.to_dict().get("_name_or_path") if hasattr(config, "to_dict") else None
    if name is not None:
        card.data["base_model"] = name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, str(card))


def push_folder(model: Any, repo_id: str, **kwargs: Any) -> Any:
    """Save ``model``'s adapters into a temporary folder and upload it to model repository ``repo_id``."""
    from huggingface_hub import HfApi

    private, token = kwargs.pop("private", None), kwargs.pop("token", None)
    message = kwargs.pop("commit_message", "Upload adapter")
    revision = kwargs.pop("revision", None)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, **kwargs)
        return api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=message, revision=revision
        )
