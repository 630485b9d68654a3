"""Data in, tokenized training examples out.

records = read_records("train.tsv", columns={"sentence": "text"}, required=spec.required_columns())
encoded = encode(records, tokenizer, spec)          # examples (lists of ids) + stats
collate = Collator(tokenizer.pad_token_id)
for batch in batches(encoded.examples, 16, shuffle=True, generator=g):
    loss = model(**collate(batch)).loss
"""

from .cloze import cloze_logits, cloze_loss, verbalizer_token_ids
from .collate import Collator, batches
from .errors import DataError
from .readers import FORMATS, ReadResult, load_hub_dataset, read_records
from .sft import IGNORE_INDEX, fit_prompt_response, sft_prompt
from .spec import MODEL_KINDS, TASK_TYPES, TaskSpec
from .tasks import Encoded, EncodeStats, encode

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "MODEL_KINDS",
    "TASK_TYPES",
    "Collator",
    "DataError",
    "EncodeStats",
    "Encoded",
    "ReadResult",
    "TaskSpec",
    "batches",
    "cloze_logits",
    "cloze_loss",
    "encode",
    "fit_prompt_response",
    "load_hub_dataset",
    "read_records",
    "sft_prompt",
    "verbalizer_token_ids",
]
