"""A small offline word-level tokenizer for tests (no downloads)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<eos>", "<unk>", "[MASK]", "<bos>", "<|system|>", "<|user|>", "<|assistant|>"]
_WORD_LINES = """
the a an movie film story plot actor acting was is it this that and but not very so too quite
great terrible good bad awful fine boring fun funny dull wonderful love hate loved hated
hello world what who where capital of france paris germany berlin answer question say
name area city centre family friendly no yes restaurant food pub near there in venue
you are helpful assistant translate to english german cat dog sat on mat house red blue
"""
WORDS = _WORD_LINES.split()
PUNCT = list(".,!?:;'\"()-")

# role tag, content, then <eos> after every turn; the generation prompt opens an assistant turn
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_tokenizer(chat_template: bool = False, bos: bool = False) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over :data:`WORDS` (lower-cased), whitespace/punctuation pre-tokenizer.

    Args:
        chat_template: set :data:`CHAT_TEMPLATE` as the tokenizer's Jinja chat template.
        bos: prepend ``<bos>`` when special tokens are added (like Llama).
    """
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS + PUNCT)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(SPECIALS)
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", mask_token="[MASK]"
    )
    if bos:
        tok.bos_token = "<bos>"
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok
