"""Generate text from a prompt (an argument, or standard input), streamed token by token as it is made.
The prompt goes through the tokenizer's chat template unless --raw is given."""

from __future__ import annotations

import argparse
import sys

from .common import add_model_args, load_with_adapter

HELP = "generate text with a base model and an optional adapter (streamed)"


def add_parser(p: argparse.ArgumentParser) -> None:
    add_model_args(p, task_choices=False)
    p.add_argument("prompt", nargs="?", help="the prompt; read from standard input when omitted")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--system", help="system message for the chat template")
    p.add_argument(
        "--max-new-tokens", type=int, default=128, help="stop after this many new tokens (default 128)"
    )
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0 for greedy decoding (default), > 0 samples"
    )
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (1: off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    from ..data import sft_prompt

    prompt = args.prompt if args.prompt is not None else sys.stdin.read().rstrip("\n")  # echo's newline
    if not prompt.strip():
        raise ValueError("empty prompt: pass one as an argument or on standard input")
    model, tok = load_with_adapter(args, task="causal-lm")
    text = prompt if args.raw else sft_prompt(tok, prompt, args.system)
    enc = tok(text, return_tensors="pt", add_special_tokens=args.raw or not tok.chat_template)
    torch.manual_seed(args.seed)
    sampling = args.temperature > 0
    kwargs = {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": sampling,
        "num_beams": args.num_beams,
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    if sampling:
        kwargs.update(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p)
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True) if args.num_beams == 1 else None
    with torch.no_grad():
        out = model.generate(**enc, streamer=streamer, **kwargs)
    if streamer is None:
        print(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return 0
