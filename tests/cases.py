"""The contract table: every method adds its rows here and passes the same checks."""

from __future__ import annotations

from conftest import Case

from peftkit import (
    AdaLoraConfig,
    AdaPtLoraConfig,
    BottleneckConfig,
    FusionConfig,
    IA3Config,
    LoraConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    PTuningConfig,
    PTuningV2Config,
)
from peftkit.methods.bitfit import BitFitConfig
from peftkit.methods.diff_pruning import DiffPruningConfig
from peftkit.methods.full import FullConfig
from peftkit.methods.selection import SelectionConfig

CASES: list[Case] = [
    Case(
        "lora-llama-qv", "llama", lambda: LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    ),
    Case(
        "lora-llama-cls-all-linear",
        "llama_cls",
        lambda: LoraConfig(r=4, target_modules="all-linear", modules_to_save=["score"]),
    ),
    Case(
        "lora-bert-cls-regex",
        "bert",
        lambda: LoraConfig(
            r=4, target_modules=r".*attention\.self\.(query|value)", modules_to_save=["classifier"]
        ),
    ),
    Case(
        "lora-gpt2-conv1d-bias",
        "gpt2",
        lambda: LoraConfig(r=4, target_modules=["c_attn", "mlp.c_proj"], bias="lora_only"),
    ),
    Case(
        "lora-t5-all-linear-rslora",
        "t5",
        lambda: LoraConfig(r=4, target_modules="all-linear", use_rslora=True),
    ),
    Case(
        "lora-llama-embed-patterns",
        "llama",
        lambda: LoraConfig(
            r=4,
            target_modules=["embed_tokens", "up_proj"],
            rank_pattern={"up_proj": 2},
            alpha_pattern={"up_proj": 4},
            layers_to_transform=[1],
        ),
    ),
    Case(
        "lora-mlp-gaussian-bias-all",
        "mlp",
        lambda: LoraConfig(r=2, target_modules=["fc1", "fc2"], init_lora_weights="gaussian", bias="all"),
    ),
    Case(
        "lora-llama-pissa",
        "llama",
        lambda: LoraConfig(
            r=4, target_modules=["q_proj", "o_proj"], init_lora_weights="pissa", lora_dropout=0.1
        ),
    ),
    Case(
        "lora-llama-olora",
        "llama",
        lambda: LoraConfig(r=4, target_modules=["q_proj", "o_proj"], init_lora_weights="olora"),
    ),
    Case(  # init False: B is random too, so the adapter acts from the start
        "lora-mlp-bias-on-b-random-init",
        "mlp",
        lambda: LoraConfig(r=2, target_modules=["fc1", "fc2"], lora_bias=True, init_lora_weights=False),
        identity_at_init=False,
    ),
    # DoRA: LoRA's direction, a trained magnitude per output unit
    Case(
        "dora-llama-qv-dropout",
        "llama",
        lambda: LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True, lora_dropout=0.1),
    ),
    Case(
        "dora-gpt2-conv1d", "gpt2", lambda: LoraConfig(r=2, target_modules=["c_attn", "c_fc"], use_dora=True)
    ),
    Case(
        "dora-llama-embed-mlp",
        "llama",
        lambda: LoraConfig(r=2, target_modules=["embed_tokens", "down_proj"], use_dora=True),
    ),
    Case("dora-bert-cls", "bert", lambda: LoraConfig(r=2, use_dora=True, modules_to_save=["classifier"])),
    # (IA)^3: vectors rescaling keys, values (outputs) and the FFN's second layer (its input)
    Case("ia3-llama-defaults", "llama", lambda: IA3Config()),
    Case(
        "ia3-gpt2-conv1d",
        "gpt2",
        lambda: IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"]),
    ),
    Case("ia3-t5-defaults", "t5", lambda: IA3Config()),
    Case("ia3-bert-cls", "bert", lambda: IA3Config(modules_to_save=["classifier"])),
    Case(
        "ia3-mlp-regex-feedforward",
        "mlp",
        lambda: IA3Config(target_modules=r"fc\d", feedforward_modules=r"fc2"),
    ),
    Case(
        "adalora-llama-qv",
        "llama",
        lambda: AdaLoraConfig(init_r=4, target_r=2, target_modules=["q_proj", "v_proj"], total_step=10),
    ),
    Case(
        "adalora-gpt2-conv1d-dropout",
        "gpt2",
        lambda: AdaLoraConfig(
            init_r=3, target_r=1, lora_alpha=4, lora_dropout=0.1, target_modules=["c_attn"]
        ),
    ),
    Case(
        "adalora-bert-cls-pruned",
        "bert",
        lambda: AdaLoraConfig(
            init_r=3,
            target_r=2,
            target_modules=["query", "value"],
            modules_to_save=["classifier"],
            rank_pattern={"bert.encoder.layer.0.attention.self.query.lora_E": [True, False, True]},
        ),
    ),
    # AdaPtLoRA: a prompt per task (outputs change at init), LoRA gated per task (nothing to merge)
    Case(
        "adaptlora-llama-two-tasks",
        "llama",
        lambda: AdaPtLoraConfig(
            tasks=["a", "b"], default_task="b", num_virtual_tokens=2, r=4, target_modules=["q_proj", "v_proj"]
        ),
        mergeable=False,
        identity_at_init=False,
    ),
    Case(
        "adaptlora-bert-cls",
        "bert",
        lambda: AdaPtLoraConfig(
            tasks=["x"],
            default_task="x",
            r=2,
            target_modules=["query", "value"],
            modules_to_save=["classifier"],
        ),
        mergeable=False,
        identity_at_init=False,
    ),
    Case(
        "adaptlora-gpt2-conv1d",
        "gpt2",
        lambda: AdaPtLoraConfig(
            tasks=["a", "b"],
            default_task="a",
            num_virtual_tokens=3,
            prompt_init="random",
            target_modules=["c_attn"],
        ),
        mergeable=False,
        identity_at_init=False,
    ),
    Case("full-llama", "llama", lambda: FullConfig()),
    Case("full-bert-cls", "bert", lambda: FullConfig(modules_to_save=["classifier"])),
    Case("full-gpt2-tied", "gpt2", lambda: FullConfig()),  # wte and lm_head share one delta
    # T5's relative position bias takes (q, k) buckets shared by all rows, so a mixed batch cannot
    # give rows different tables: left out here; shared/embed_tokens/lm_head share one delta
    Case("full-t5", "t5", lambda: FullConfig(exclude_modules=["relative_attention_bias"])),
    Case("full-mlp-explicit", "mlp", lambda: FullConfig(target_modules=["fc1", "head"])),
    Case(
        "full-llama-blocks",
        "llama",
        lambda: FullConfig(target_modules=["mlp", "input_layernorm"], layers_to_transform=[1]),
    ),
    Case(
        "bottleneck-bert-cls-houlsby",
        "bert",
        lambda: BottleneckConfig(placement="houlsby", reduction_factor=4, modules_to_save=["classifier"]),
        mergeable=False,
    ),
    Case(
        "bottleneck-llama-pfeiffer-gelu-ln",
        "llama",
        lambda: BottleneckConfig(bottleneck_size=6, non_linearity="gelu", adapter_layernorm=True),
        mergeable=False,
    ),
    Case(
        "bottleneck-gpt2-parallel-swish",
        "gpt2",
        lambda: BottleneckConfig(
            placement="parallel", non_linearity="swish", scaling=4.0, reduction_factor=8
        ),
        mergeable=False,
    ),
    Case(
        "bottleneck-t5-houlsby-layer1",
        "t5",
        lambda: BottleneckConfig(placement="houlsby", bottleneck_size=4, layers_to_transform=[1]),
        mergeable=False,
    ),
    Case(
        "bottleneck-llama-cls-near-identity",
        "llama_cls",
        lambda: BottleneckConfig(init_weights="near_identity", modules_to_save=["score"]),
        mergeable=False,
        identity_at_init=False,
    ),
    # virtual-token methods: outputs change at init by design (the virtual tokens are attended to)
    Case(
        "prompt-llama-vocab",
        "llama",
        lambda: PromptTuningConfig(num_virtual_tokens=3, prompt_tuning_init="SAMPLE_VOCAB"),
        mergeable=False,
        identity_at_init=False,
    ),
    Case(
        "prompt-bert-cls",
        "bert",
        lambda: PromptTuningConfig(num_virtual_tokens=2, modules_to_save=["classifier"]),
        mergeable=False,
        identity_at_init=False,
    ),
    Case(
        "prompt-t5",
        "t5",
        lambda: PromptTuningConfig(num_virtual_tokens=3),
        mergeable=False,
        identity_at_init=False,
    ),
    Case(
        "prefix-llama-gqa-projection",
        "llama",
        lambda: PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8),
        mergeable=False,
        identity_at_init=False,
    ),
    Case(
        "prefix-gpt2",
        "gpt2",
        lambda: PrefixTuningConfig(num_virtual_tokens=2),
        mergeable=False,
        identity_at_init=False,
    ),
    Case(
        "prefix-bert-cls",
        "bert",
        lambda: PrefixTuningConfig(num_virtual_tokens=2, modules_to_save=["classifier"]),
        mergeable=False,
        identity_at_init=False,
    ),
    Case(
        "p-tuning-llama-lstm",
        "llama",
        lambda: PTuningConfig(
            num_virtual_tokens=3, encoder_reparameterization_type="LSTM", encoder_hidden_size=8
        ),
        mergeable=False,
        identity_at_init=False,
    ),
    Case(
        "p-tuning-gpt2-mlp",
        "gpt2",
        lambda: PTuningConfig(num_virtual_tokens=2, encoder_hidden_size=8),
        mergeable=False,
        identity_at_init=False,
    ),
    Case(
        "p-tuning-v2-bert-cls",
        "bert",
        lambda: PTuningV2Config(num_virtual_tokens=3, modules_to_save=["classifier"]),
        mergeable=False,
        identity_at_init=False,
    ),
    Case(
        "p-tuning-v2-llama-cls",
        "llama_cls",
        lambda: PTuningV2Config(num_virtual_tokens=2, modules_to_save=["score"]),
        mergeable=False,
        identity_at_init=False,
    ),
    # sparse deltas on the base's own parameters (bias terms, rule-chosen or learned entries)
    Case("bitfit-bert-cls", "bert", lambda: BitFitConfig(modules_to_save=["classifier"])),
    Case("bitfit-gpt2", "gpt2", lambda: BitFitConfig()),
    Case("bitfit-mlp-fc", "mlp", lambda: BitFitConfig(target_modules=["fc1", "fc2"])),
    Case("selection-llama-last-layer", "llama", lambda: SelectionConfig(rule="last_k_layers", last_k=1)),
    Case(
        "selection-bert-cls-smallest",
        "bert",
        lambda: SelectionConfig(rule="smallest_magnitude", density=0.05, modules_to_save=["classifier"]),
    ),
    Case(
        "selection-gpt2-smallest",
        "gpt2",
        lambda: SelectionConfig(rule="smallest_magnitude", density=0.1, exclude_modules=["wte", "lm_head"]),
    ),
    Case("diff-pruning-llama", "llama", lambda: DiffPruningConfig(density=0.1)),
    Case(
        "diff-pruning-hard-concrete-llama",
        "llama",
        lambda: DiffPruningConfig(density=0.1, mask="hard_concrete"),
    ),
    Case(
        "diff-pruning-bert-cls-attention",
        "bert",
        lambda: DiffPruningConfig(
            density=0.05, target_modules=["query", "value"], modules_to_save=["classifier"]
        ),
    ),
    # AdapterFusion: attention over two frozen bottleneck adapters (stage 1), trained as the adapter
    Case(
        "fusion-bert-pfeiffer-dynamic",
        "bert",
        lambda: FusionConfig(adapter_names=["sst2", "e2e"]),
        mergeable=False,
        identity_at_init=False,
        stage1=(
            ("sst2", lambda: BottleneckConfig(placement="pfeiffer", bottleneck_size=4)),
            ("e2e", lambda: BottleneckConfig(placement="pfeiffer", bottleneck_size=6)),
        ),
    ),
    Case(
        "fusion-llama-houlsby-static",
        "llama",
        lambda: FusionConfig(adapter_names=["a", "b"], fusion_type="static"),
        mergeable=False,
        identity_at_init=False,
        stage1=(
            ("a", lambda: BottleneckConfig(placement="houlsby", bottleneck_size=4)),
            ("b", lambda: BottleneckConfig(placement="houlsby", bottleneck_size=4)),
        ),
    ),
]
