"""Generate text from a prompt (an argument, or standard input) with peftkit's decoding engine,
streamed token by token (except beam search). The prompt goes through the tokenizer's chat
template unless --raw is given."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .common import add_model_args, load_with_adapter

HELP = "generate text with a base model and an optional adapter (streamed)"


def add_parser(p: argparse.ArgumentParser) -> None:
    add_model_args(p, task_choices=False)
    p.add_argument("prompt", nargs="?", help="the prompt; read from standard input when omitted")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    p.add_argument("--system", help="system message for the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128, help="new-token budget (default 128)")
    p.add_argument(
        "--strategy",
        choices=["greedy", "sample", "beam", "contrastive"],
        help="decoding strategy (default: beam if --num-beams > 1, contrastive if --penalty-alpha "
        "is given, sample if --temperature > 0, else greedy)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        help="> 0 samples at this temperature; 0 means greedy decoding (default: greedy, or 1.0 with "
        "--strategy sample)",
    )
    p.add_argument(
        "--top-k", type=int, default=0, help="keep the k most likely tokens (0: off; contrastive: 4)"
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (1: off)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam score = sum log p / len^this")
    p.add_argument("--penalty-alpha", type=float, help="contrastive search degeneration penalty (e.g. 0.6)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (1.0: off)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, help="forbid repeating n-grams (0: off)")
    p.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument(
        "--proxy-expert",
        help="proxy-tuning: the tuned small model, an adapter folder (applied to --proxy-antiexpert, one "
        "model in memory) or a full model",
    )
    p.add_argument("--proxy-antiexpert", help="proxy-tuning: the untuned small model (name or folder)")
    p.add_argument(
        "--proxy-alpha", type=float, default=1.0, help="proxy-tuning: s_M + alpha (s_M+ - s_M-) (default 1)"
    )


def check_temperature(args: argparse.Namespace) -> None:
    """``--temperature`` is 0 (greedy) or a positive finite number (sampling); any other value, or one the
    chosen strategy would ignore, is refused rather than silently replaced."""
    t = args.temperature
    if t is None:
        return
    if not math.isfinite(t) or t < 0:
        raise ConfigError("--temperature", f"must be 0 (greedy) or a positive number (sampling), got {t}")
    if t == 0 and args.strategy == "sample":
        raise ConfigError("--temperature", "0 means greedy decoding; --strategy sample needs one > 0")
    if t > 0 and args.strategy not in (None, "sample"):
        raise ConfigError(
            "--temperature", f"applies to sampling only; --strategy {args.strategy} would ignore it (drop it)"
        )


def strategy(args: argparse.Namespace) -> str:
    if args.strategy:
        return args.strategy
    if args.num_beams > 1:
        return "beam"
    if args.penalty_alpha is not None:
        return "contrastive"
    return "sample" if args.temperature else "greedy"


def decoding_options(args: argparse.Namespace) -> dict:
    check_temperature(args)
    chosen = strategy(args)
    options = {
        "strategy": chosen,
        "num_beams": args.num_beams,
        "length_penalty": args.length_penalty,
        "repetition_penalty": args.repetition_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "stop_strings": args.stop,
        "seed": args.seed,
        "top_p": args.top_p,
        "top_k": args.top_k or (4 if chosen == "contrastive" else 0),
    }
    if chosen == "sample":
        options["temperature"] = args.temperature or 1.0  # not given: the model's own distribution
    if args.penalty_alpha is not None:
        options["penalty_alpha"] = args.penalty_alpha
    return options


def proxy_hook(args: argparse.Namespace, model):
    """Proxy-tuning's logits hook from --proxy-expert/--proxy-antiexpert, or None without them."""
    if not (args.proxy_expert or args.proxy_antiexpert):
        return None
    if not args.proxy_expert:
        raise ValueError("--proxy-antiexpert needs --proxy-expert (the tuned small model or adapter folder)")
    return load_proxy(model, args.proxy_expert, args.proxy_antiexpert, args.proxy_alpha, args.allow_pickle)


def read_stdin_prompt() -> str:
    """The prompt from standard input; at a terminal, first a hint on stderr instead of a silent wait."""
    if sys.stdin.isatty():
        print(
            "peftkit generate: type the prompt, then press Ctrl-D on an empty line (or pass the prompt as "
            'an argument: peftkit generate "...")',
            file=sys.stderr,
            flush=True,
        )
    return sys.stdin.read().rstrip("\n")  # echo's newline


def run(args: argparse.Namespace) -> int:
    from ..data import sft_prompt
    from ..decoding import TextStreamer, cut_at_stop_string, generate
    from ..generation import decoding_config

    prompt = args.prompt if args.prompt is not None else read_stdin_prompt()
    if not prompt.strip():
        raise ValueError("empty prompt: pass one as an argument or on standard input")
    model, tok = load_with_adapter(args, task="causal-lm")
    hook = proxy_hook(args, model)
    config = decoding_config(tok, args.max_new_tokens, **decoding_options(args))
    text = prompt if args.raw else sft_prompt(tok, prompt, args.system)
    enc = tok(text, return_tensors="pt", add_special_tokens=args.raw or not tok.chat_template)
    streaming = config.strategy != "beam" and not config.stop_strings
    streamer = TextStreamer(tok) if streaming else None
    ids, mask = enc["input_ids"], enc["attention_mask"]
    out = generate(model, ids, mask, config, tokenizer=tok, streamer=streamer, logits_hook=hook)
    if streamer is not None:
        streamer.end()
    else:
        print(
            cut_at_stop_string(tok.decode(out.new_tokens[0], skip_special_tokens=True), config.stop_strings)
        )
    return 0


def load_proxy(
    model: Any, expert: str, antiexpert: str, alpha: float = 1.0, allow_pickle: bool | None = None
):
    """Build the hook from paths (the CLI's ``--proxy-*``): ``expert`` is an adapter folder (applied
    to ``antiexpert``, one model in memory) or a full model (name or folder) beside ``antiexpert``."""
    from ..composition.proxy import proxy_tuning_hook
    from ..model import PeftModel
    from ..models import load_model

    if not antiexpert:
        raise ConfigError("proxy-antiexpert", "missing: name the untuned small model (e.g. smollm2-135m)")
    small, _ = load_model(antiexpert, task="causal-lm")
    small.eval()
    if (Path(expert) / "adapter_config.json").is_file():
        tuned = PeftModel.from_pretrained(small, expert, allow_pickle=allow_pickle).eval()
        return proxy_tuning_hook(model, tuned, alpha=alpha)
    tuned, _ = load_model(expert, task="causal-lm")
    return proxy_tuning_hook(model, tuned.eval(), small, alpha=alpha)
