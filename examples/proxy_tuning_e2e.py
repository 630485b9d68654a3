"""Proxy-tuning on E2E: steer the full SmolLM2-135M with a small tuned proxy built from it.

    python examples/proxy_tuning_e2e.py --layers 8 --out runs/proxy-e2e
    python examples/proxy_tuning_e2e.py --small nf4 --out runs/proxy-e2e-nf4

Only one pretrained decoder is packaged, so the small model is built from it: a layer-truncated
copy (``--small truncate``: its first ``--layers`` decoder layers, same embeddings and vocabulary)
or the whole model with its linear layers in 4-bit NF4 (``--small nf4``, QLoRA's storage). The
proxy expert is that model with a LoRA trained on E2E; the anti-expert is the same model untuned
(one model in memory, adapter on/off). Reports multi-reference BLEU on the held-out MRs of
examples/e2e_smollm2_lora.yaml for the base model, the anti-expert alone, the proxy expert alone,
the proxy-tuned model and a LoRA trained on the model itself (same steps and settings as the
proxy's LoRA), and each model's perplexity of those MRs' held-out references (response tokens
only), which tells whether the small model is a language model at all. Greedy decoding, 64 new tokens.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from peftkit import PeftModel, generate
from peftkit.composition import proxy_tuning_hook
from peftkit.data import Collator, batches, encode, sft_prompt
from peftkit.evaluation import bleu, group_references, perplexity
from peftkit.generation import decoding_config, padding_side
from peftkit.io import atomic_write_json
from peftkit.models import load_model
from peftkit.pipeline import read_split, train_run
from peftkit.run_config import build_run_config, load_yaml


def truncated_copy(name: str, layers: int, out: Path) -> Path:
    model, tok = load_model(name, task="causal-lm")
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def train(config: dict, model: str, out: Path, quantize: str | None = None) -> Path:
    data = json.loads(json.dumps(config))
    data["model"]["name"], data["output_dir"] = str(model), str(out)
    data["model"]["quantize"] = quantize
    summary = train_run(build_run_config(data), show_progress=False)
    print(json.dumps({k: summary[k] for k in ("report", "adapter") if k in summary}))
    return out / "adapter"


def texts(model, tok, prompts: list[str], hook=None, batch: int = 16, max_new: int = 64) -> list[str]:
    config = decoding_config(tok, max_new)
    out: list[str] = []
    with padding_side(tok, "left"), torch.no_grad():
        for i in range(0, len(prompts), batch):
            enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            res = generate(
                model, enc["input_ids"], enc["attention_mask"], config, tokenizer=tok, logits_hook=hook
            )
            out += [t.strip() for t in tok.batch_decode(res.new_tokens, skip_special_tokens=True)]
    return out


def reference_perplexity(model, tok, spec, rows: list[dict]) -> float:
    """Perplexity of the rows' references given their prompts (response tokens only)."""
    examples = encode(rows, tok, spec).examples
    collate = Collator(tok.pad_token_id)
    return perplexity(model, (collate(b) for b in batches(examples, 16)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="examples/e2e_smollm2_lora.yaml")
    p.add_argument("--data", help="E2E csv (default: the config's data.train)")
    p.add_argument("--model", help="the model M (default: the config's model.name)")
    p.add_argument(
        "--small", choices=["truncate", "nf4"], default="truncate", help="how the small model is built"
    )
    p.add_argument("--layers", type=int, default=8, help="decoder layers kept in the truncated proxy")
    p.add_argument("--alpha", type=float, nargs="+", default=[1.0])
    p.add_argument("--eval-limit", type=int, default=0, help="held-out MRs to decode (0: all)")
    p.add_argument("--direct-adapter", help="a LoRA already trained on M with the config (skips training it)")
    p.add_argument("--small-adapter", help="a LoRA already trained on the small model (skips training it)")
    p.add_argument("--steps", type=int, help="override the config's train.max_steps (both LoRAs)")
    p.add_argument("--out", default="runs/proxy-e2e")
    args = p.parse_args()
    out = Path(args.out)
    config = load_yaml(args.config)
    if args.data:
        config["data"]["train"] = args.data
    if args.model:
        config["model"]["name"] = args.model
    if args.steps:
        config["train"]["max_steps"] = args.steps
    run = build_run_config(config)
    dtype = getattr(torch, run.model.dtype)
    quantize = "nf4" if args.small == "nf4" else None
    small = run.model.name if quantize else truncated_copy(run.model.name, args.layers, out / "small-base")
    proxy_adapter = args.small_adapter or train(config, small, out / "small-lora", quantize)
    direct_adapter = args.direct_adapter or train(config, run.model.name, out / "direct-lora")

    _, eval_rows = read_split(run)
    spec = run.task
    inputs, refs = group_references(
        [r[spec.prompt_column] for r in eval_rows], [r[spec.response_column] for r in eval_rows]
    )
    if args.eval_limit:
        inputs, refs = inputs[: args.eval_limit], refs[: args.eval_limit]
    ref_rows = [r for r in eval_rows if r[spec.prompt_column] in set(inputs)]
    big, tok = load_model(run.model.name, task="causal-lm", dtype=dtype)
    prompts = [sft_prompt(tok, x, spec.system_prompt) for x in inputs]
    small_model, _ = load_model(str(small), task="causal-lm", dtype=dtype, quantize=quantize)
    expert = PeftModel.from_pretrained(small_model, proxy_adapter).eval()
    small_name = "small nf4" if quantize else f"small {args.layers} layers"
    results = {"inputs": len(inputs), "references": len(ref_rows), "small": small_name, "bleu": {}}
    results["perplexity"] = {"base": reference_perplexity(big.eval(), tok, spec, ref_rows)}
    with expert.disable_adapter():
        results["perplexity"]["small_untuned"] = reference_perplexity(expert, tok, spec, ref_rows)
    results["perplexity"]["small_tuned"] = reference_perplexity(expert, tok, spec, ref_rows)
    print("partial:", json.dumps(results), flush=True)
    scores = results["bleu"]
    scores["base"] = bleu(texts(big, tok, prompts), refs)
    print("partial:", json.dumps(results), flush=True)
    second, _ = load_model(run.model.name, task="causal-lm", dtype=dtype)
    direct = PeftModel.from_pretrained(second, direct_adapter).eval()
    results["perplexity"]["direct_lora"] = reference_perplexity(direct, tok, spec, ref_rows)
    scores["direct_lora"] = bleu(texts(direct, tok, prompts), refs)
    print("partial:", json.dumps(results), flush=True)
    with expert.disable_adapter():
        scores["small_untuned_alone"] = bleu(texts(expert, tok, prompts), refs)
    scores["small_tuned_alone"] = bleu(texts(expert, tok, prompts), refs)
    print("partial:", json.dumps(results), flush=True)
    for alpha in args.alpha:
        hook = proxy_tuning_hook(big, expert, alpha=alpha)
        outputs = texts(big, tok, prompts, hook)
        scores[f"proxy_tuned_alpha_{alpha}"] = bleu(outputs, refs)
        results.setdefault("proxy_samples", {})[str(alpha)] = outputs[:3]
        print("partial:", json.dumps(results), flush=True)
    print(json.dumps(results, indent=2))
    atomic_write_json(out / "results.json", results)


if __name__ == "__main__":
    main()
