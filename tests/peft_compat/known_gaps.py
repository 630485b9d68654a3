"""The peftkit gaps of the compatibility suite: test id (without the ``lib`` part) -> why peftkit fails it.

Each row makes the peftkit run of that check a strict xfail. Delete a row when its feature lands: a row whose
check starts passing fails the suite (XPASS(strict)) until it is deleted. A reason names the first thing that
fails; a check can fail again further on, for a reason of its own.

Regenerate the list of failures with ``python bench/compat_report.py --failures``.
"""

# ---- reasons ------------------------------------------------------------------------------------------
PROMPT_ENCODER = "no PromptEncoderConfig (peft's name for the P-tuning config; peftkit has PTuningConfig)"
PREFIX_SEQ2SEQ = "prefix tuning on encoder-decoder models is refused (TargetError: 'use prompt_tuning')"
WEIGHTED = "add_weighted_adapter is not a method of the wrapped model"
MODEL_CARD = (
    "save_pretrained writes no README.md model card (and adapter_config.json has no base_model_name_or_path)"
)
SELECTED = (
    "save_pretrained writes no README.md model card; selected_adapters= is ignored (every adapter is written)"
)
PICKLE = "save_pretrained(safe_serialization=False) is ignored: safetensors are written, no adapter_model.bin"
SAFE_MERGE = "merge_and_unload has no safe_merge (peft checks the merged weights for NaNs first)"
MERGE_NAMES = "merge_and_unload has no adapter_names"
MERGE_WARN = "a second merge_adapter() gives no 'All adapters are already merged, nothing to do' warning"
FROM_PRETRAINED_CONFIG = "PeftModel.from_pretrained has no config= argument"
LOW_CPU = "PeftModel.from_pretrained / load_adapter have no low_cpu_mem_usage"
DEVICE_MAP = "PeftModel.from_pretrained has no device_map"
BASE_STATE = "no get_base_model_state_dict / set_base_model_state_dict"
PEFT_STATE = "no get_peft_model_state_dict / set_peft_model_state_dict / load_peft_weights"
LOAD_RESULT = "load_adapter returns None; peft returns the load result (missing_keys, unexpected_keys)"
TASK_TYPE = "no TaskType enum (the quicktour's first line)"
KBIT = "no prepare_model_for_kbit_training"
GC = "no prepare_model_for_gradient_checkpointing on the wrapped model"
GEN_SCORES = "generate refuses return_dict_in_generate / output_scores"
GEN_DECODER_IDS = "generate on encoder-decoder models refuses decoder_input_ids"
GEN_MAX_LENGTH = "generate refuses max_length"
GEN_LENGTH = (
    "generate(**inputs) without a length makes 64 new tokens instead of following generation_config "
    "(GPT-2 runs past its 64 positions)"
)
GEN_POSITIONAL = "generate on encoder-decoder models accepts positional input_ids; peft's takes keywords only"
T5_PROMPT_MASK = (
    "generate with prompt tuning on T5 fails when attention_mask is given (the mask is not extended over "
    "the virtual tokens)"
)
DELETE_MSG = (
    "delete_adapter of an unknown name raises AdapterError with another message (peft: 'Adapter <name> "
    "does not exist')"
)
BIAS_MULTI = "a second adapter is not refused when bias != 'none' (peft raises ValueError)"
ADALORA_BIAS = "AdaLoraConfig has no bias option"
PUSH_TO_HUB = "on a plain nn.Module the wrapper has no push_to_hub (peft's PeftModel always has it)"
BASE_MODEL = (
    "model.base_model is the raw model, not a tuner model holding it (no base_model.model / .set_adapter "
    "/ .peft_config)"
)
DISABLE_MERGED = "disable_adapter() raises after merge_adapter() (peft unmerges for the block)"
DISABLE_LAYERS = "no disable_adapter_layers / enable_adapter_layers"
DISABLE_BIAS_WARN = "disable_adapter() with trained biases gives no warning"
DISABLE_GRAD = (
    "inside disable_adapter() the adapter still requires grad (peft: nothing trainable in the block)"
)
DELETE_MERGED_MSG = (
    'deleting a merged adapter raises AdapterError with another message (peft: "Cannot delete adapter(s)'
    " ['default'] while they are merged...\")"
)
DEFAULT_TARGETS = "no per-architecture default target_modules (a config without them fails)"
DEFAULT_TARGETS_MSG = (
    "without target_modules on an unknown model: TargetError with another message (peft: 'Please specify "
    "`target_modules`')"
)
ADALORA_SECOND = (
    "a second trainable AdaLoRA adapter is not refused (peft: 'supports only 1 trainable adapter')"
)
MTS_SEQ_CLS = (
    "task_type='SEQ_CLS' does not make the classification head a module to save: it is neither trained "
    "nor saved"
)
PARAM_NAMES = "parameter names differ from peft's (no 'base_model.model.' prefix, no 'base_layer')"
PRINT_FORMAT = "print_trainable_parameters prints an extra adapter size: not peft's line"
NB_TRAINABLE = "no get_nb_trainable_parameters"
STATUS = "no get_layer_status / get_model_status"
PEFT_TYPE = "configs have no peft_type (and models no active_peft_config / peft_type)"
CONFIG_IO = "no PeftConfig.from_pretrained / config.save_pretrained / get_peft_config"
TASK_CLASSES = "no task classes (PeftModelForCausalLM, ...): every task type gives a plain PeftModel"
AUTO = "no AutoPeftModel classes"
PROMPT_INIT_ENUM = "no PromptTuningInit enum"
LAYER_REPLICATION = "LoraConfig has no layer_replication"
TRAINABLE_TOKENS = "LoraConfig has no trainable_token_indices"
ORTH = "AdaLoRA's forward loss has no orthogonality term (peft adds orth_reg_weight * penalty)"
UPDATE_ALLOCATE = "no update_and_allocate on the model (AdaLoRA's rank budget)"
SAVE_EMBED = (
    "save_pretrained has no save_embedding_layers (a LoRA-on-embedding adapter is saved without its base "
    "embedding, no warning)"
)
PREFIX_GC = (
    "prefix tuning with gradient checkpointing is not refused and then fails with a shape error (peft: "
    "ValueError)"
)
TRAINER_CKPT = "Trainer checkpoints hold the whole model (model.safetensors), not the adapter"
MIXED_BATCH = (
    "mixed-adapter batches: peftkit's own error messages (peft: 'Length of `adapter_names` should be "
    "the same as the number of inputs', ...), and peftkit runs them in training mode too (peft refuses)"
)
EVAL_LOSS = "Trainer.evaluate() reports no eval_loss (so load_best_model_at_end on eval_loss fails)"
POSITIONS = (
    "virtual-token methods number a padded row's positions over its real tokens (attention-mask count); "
    "peft and transformers' forward use 0..T-1, so padded rows' outputs differ (a deliberate difference? "
    "then a README row)"
)
DORA_MIXED = (
    "a DoRA adapter in a mixed-adapter batch is refused by peft (ValueError); peftkit runs it (deliberate: "
    "a README difference row)"
)
VIRTUAL_LOGITS = (
    "a causal LM with virtual tokens returns logits for the real tokens only; peft returns the virtual "
    "tokens' too (deliberate; the issue asks for peft's behaviour to stay reachable)"
)

# ---- rows ---------------------------------------------------------------------------------------------
KNOWN_GAPS: dict[str, str] = {
    "test_checkpoints.py::test_checkpoint_loads_in_peft[llama-prefix]": POSITIONS,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[llama-prompt]": POSITIONS,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[llama-ptuning]": PROMPT_ENCODER,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[t5-ptuning]": PROMPT_ENCODER,
    "test_checkpoints.py::test_peft_checkpoint_loads[llama-prefix]": POSITIONS,
    "test_checkpoints.py::test_peft_checkpoint_loads[llama-prompt]": POSITIONS,
    "test_checkpoints.py::test_peft_checkpoint_loads[llama-ptuning]": POSITIONS,
    "test_checkpoints.py::test_peft_checkpoint_loads[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_adapter_name[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_adapter_name[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_adapter_name[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_adding_multiple_adapters_with_bias_raises[llama-adalora]": ADALORA_BIAS,
    "test_common.py::test_adding_multiple_adapters_with_bias_raises[llama-lora]": BIAS_MULTI,
    "test_common.py::test_adding_multiple_adapters_with_bias_raises[mlp-lora]": BIAS_MULTI,
    "test_common.py::test_adding_multiple_adapters_with_bias_raises[t5-lora]": BIAS_MULTI,
    "test_common.py::test_delete_unknown_adapter_raises[gpt2-ia3]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[gpt2-lora]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[llama-adalora]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[llama-dora]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[llama-ia3]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[llama-lora]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[llama-prefix]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[llama-prompt]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_delete_unknown_adapter_raises[mlp-adalora]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[mlp-ia3]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[mlp-lora-mts]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[mlp-lora]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[t5-adalora]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[t5-ia3]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[t5-lora]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_delete_unknown_adapter_raises[t5-prompt]": DELETE_MSG,
    "test_common.py::test_delete_unknown_adapter_raises[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_disable_adapter[gpt2-ia3]": GEN_SCORES,
    "test_common.py::test_disable_adapter[gpt2-lora]": GEN_SCORES,
    "test_common.py::test_disable_adapter[llama-adalora]": GEN_SCORES,
    "test_common.py::test_disable_adapter[llama-dora]": GEN_SCORES,
    "test_common.py::test_disable_adapter[llama-ia3]": GEN_SCORES,
    "test_common.py::test_disable_adapter[llama-lora]": GEN_SCORES,
    "test_common.py::test_disable_adapter[llama-prefix]": GEN_SCORES,
    "test_common.py::test_disable_adapter[llama-prompt]": GEN_SCORES,
    "test_common.py::test_disable_adapter[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_disable_adapter[t5-adalora]": GEN_DECODER_IDS,
    "test_common.py::test_disable_adapter[t5-ia3]": GEN_DECODER_IDS,
    "test_common.py::test_disable_adapter[t5-lora]": GEN_DECODER_IDS,
    "test_common.py::test_disable_adapter[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_forward_shape[llama-prompt]": VIRTUAL_LOGITS,
    "test_common.py::test_forward_shape[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_forward_shape[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_forward_shape[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_from_pretrained_config_construction[gpt2-ia3]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[gpt2-lora]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[llama-adalora]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[llama-dora]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[llama-ia3]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[llama-lora]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[llama-prefix]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[llama-prompt]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_from_pretrained_config_construction[mlp-adalora]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[mlp-ia3]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[mlp-lora-mts]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[mlp-lora]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[t5-adalora]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[t5-ia3]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[t5-lora]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_from_pretrained_config_construction[t5-prompt]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_from_pretrained_config_construction[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_generate[gpt2-ia3]": GEN_LENGTH,
    "test_common.py::test_generate[gpt2-lora]": GEN_LENGTH,
    "test_common.py::test_generate[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_generate[t5-adalora]": GEN_DECODER_IDS,
    "test_common.py::test_generate[t5-ia3]": GEN_DECODER_IDS,
    "test_common.py::test_generate[t5-lora]": GEN_DECODER_IDS,
    "test_common.py::test_generate[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_generate[t5-prompt]": GEN_DECODER_IDS,
    "test_common.py::test_generate[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_generate_half_prec[gpt2-ia3]": GEN_LENGTH,
    "test_common.py::test_generate_half_prec[gpt2-lora]": GEN_LENGTH,
    "test_common.py::test_generate_half_prec[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_generate_half_prec[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_generate_half_prec[t5-prompt]": T5_PROMPT_MASK,
    "test_common.py::test_generate_half_prec[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_generate_pos_args[gpt2-ia3]": GEN_LENGTH,
    "test_common.py::test_generate_pos_args[gpt2-lora]": GEN_LENGTH,
    "test_common.py::test_generate_pos_args[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_generate_pos_args[t5-adalora]": GEN_POSITIONAL,
    "test_common.py::test_generate_pos_args[t5-ia3]": GEN_POSITIONAL,
    "test_common.py::test_generate_pos_args[t5-lora]": GEN_POSITIONAL,
    "test_common.py::test_generate_pos_args[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_generate_pos_args[t5-prompt]": GEN_POSITIONAL,
    "test_common.py::test_generate_pos_args[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_generate_with_mixed_adapter_batches_and_beam_search[llama-lora]": GEN_MAX_LENGTH,
    "test_common.py::test_get_base_model_state_dict[gpt2-ia3]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[gpt2-lora]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[llama-adalora]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[llama-dora]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[llama-ia3]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[llama-lora]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[llama-prefix]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[llama-prompt]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_get_base_model_state_dict[mlp-adalora]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[mlp-ia3]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[mlp-lora-mts]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[mlp-lora]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[t5-adalora]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[t5-ia3]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[t5-lora]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_get_base_model_state_dict[t5-prompt]": BASE_STATE,
    "test_common.py::test_get_base_model_state_dict[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_inference_safetensors[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_inference_safetensors[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_inference_safetensors[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_inject_adapter_in_model_low_cpu_mem_usage[llama-ia3]": LOW_CPU,
    "test_common.py::test_inject_adapter_in_model_low_cpu_mem_usage[llama-lora]": LOW_CPU,
    "test_common.py::test_inject_adapter_in_model_low_cpu_mem_usage[mlp-lora]": LOW_CPU,
    "test_common.py::test_inject_adapter_in_model_low_cpu_mem_usage[t5-lora]": LOW_CPU,
    "test_common.py::test_load_low_cpu_mem_usage[llama-ia3]": LOW_CPU,
    "test_common.py::test_load_low_cpu_mem_usage[llama-lora]": LOW_CPU,
    "test_common.py::test_load_low_cpu_mem_usage[llama-prompt]": LOW_CPU,
    "test_common.py::test_load_low_cpu_mem_usage[mlp-lora]": LOW_CPU,
    "test_common.py::test_load_low_cpu_mem_usage[t5-lora]": LOW_CPU,
    "test_common.py::test_load_multiple_adapters[gpt2-ia3]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[gpt2-lora]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[llama-dora]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[llama-ia3]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[llama-lora]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[llama-prefix]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[llama-prompt]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_load_multiple_adapters[mlp-ia3]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[mlp-lora-mts]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[mlp-lora]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[t5-ia3]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[t5-lora]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_load_multiple_adapters[t5-prompt]": LOAD_RESULT,
    "test_common.py::test_load_multiple_adapters[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_merge_layers_is_idempotent[gpt2-ia3]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[gpt2-lora]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[llama-adalora]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[llama-dora]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[llama-ia3]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[llama-lora]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[mlp-adalora]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[mlp-ia3]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[mlp-lora-mts]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[mlp-lora]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[t5-adalora]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[t5-ia3]": MERGE_WARN,
    "test_common.py::test_merge_layers_is_idempotent[t5-lora]": MERGE_WARN,
    "test_common.py::test_merge_layers_multi[gpt2-ia3]": MERGE_NAMES,
    "test_common.py::test_merge_layers_multi[gpt2-lora]": MERGE_NAMES,
    "test_common.py::test_merge_layers_multi[llama-dora]": MERGE_NAMES,
    "test_common.py::test_merge_layers_multi[llama-ia3]": MERGE_NAMES,
    "test_common.py::test_merge_layers_multi[llama-lora]": MERGE_NAMES,
    "test_common.py::test_merge_layers_multi[mlp-ia3]": MERGE_NAMES,
    "test_common.py::test_merge_layers_multi[mlp-lora-mts]": MERGE_NAMES,
    "test_common.py::test_merge_layers_multi[mlp-lora]": MERGE_NAMES,
    "test_common.py::test_merge_layers_multi[t5-ia3]": MERGE_NAMES,
    "test_common.py::test_merge_layers_multi[t5-lora]": MERGE_NAMES,
    "test_common.py::test_merge_layers_nan[gpt2-ia3]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[gpt2-lora]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[llama-adalora]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[llama-dora]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[llama-ia3]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[llama-lora]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[mlp-adalora]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[mlp-ia3]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[mlp-lora-mts]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[mlp-lora]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[t5-adalora]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[t5-ia3]": SAFE_MERGE,
    "test_common.py::test_merge_layers_nan[t5-lora]": SAFE_MERGE,
    "test_common.py::test_mixed_adapter_batches[gpt2-lora]": GEN_SCORES,
    "test_common.py::test_mixed_adapter_batches[llama-lora]": GEN_SCORES,
    "test_common.py::test_mixed_adapter_batches[t5-lora]": GEN_DECODER_IDS,
    "test_common.py::test_model_attr[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_model_attr[mlp-adalora]": PUSH_TO_HUB,
    "test_common.py::test_model_attr[mlp-ia3]": PUSH_TO_HUB,
    "test_common.py::test_model_attr[mlp-lora-mts]": PUSH_TO_HUB,
    "test_common.py::test_model_attr[mlp-lora]": PUSH_TO_HUB,
    "test_common.py::test_model_attr[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_model_attr[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_passing_input_embeds_works[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_peft_model_device_map[llama-lora]": DEVICE_MAP,
    "test_common.py::test_peft_model_device_map[llama-prompt]": DEVICE_MAP,
    "test_common.py::test_peft_model_device_map[mlp-lora]": DEVICE_MAP,
    "test_common.py::test_peft_model_device_map[t5-lora]": DEVICE_MAP,
    "test_common.py::test_prepare_for_training[gpt2-ia3]": KBIT,
    "test_common.py::test_prepare_for_training[gpt2-lora]": KBIT,
    "test_common.py::test_prepare_for_training[llama-adalora]": KBIT,
    "test_common.py::test_prepare_for_training[llama-dora]": KBIT,
    "test_common.py::test_prepare_for_training[llama-ia3]": KBIT,
    "test_common.py::test_prepare_for_training[llama-lora]": KBIT,
    "test_common.py::test_prepare_for_training[llama-prefix]": KBIT,
    "test_common.py::test_prepare_for_training[llama-prompt]": KBIT,
    "test_common.py::test_prepare_for_training[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_prepare_for_training[t5-adalora]": KBIT,
    "test_common.py::test_prepare_for_training[t5-ia3]": KBIT,
    "test_common.py::test_prepare_for_training[t5-lora]": KBIT,
    "test_common.py::test_prepare_for_training[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_prepare_for_training[t5-prompt]": KBIT,
    "test_common.py::test_prepare_for_training[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_safe_merge[gpt2-ia3]": SAFE_MERGE,
    "test_common.py::test_safe_merge[gpt2-lora]": SAFE_MERGE,
    "test_common.py::test_safe_merge[llama-adalora]": SAFE_MERGE,
    "test_common.py::test_safe_merge[llama-dora]": SAFE_MERGE,
    "test_common.py::test_safe_merge[llama-ia3]": SAFE_MERGE,
    "test_common.py::test_safe_merge[llama-lora]": SAFE_MERGE,
    "test_common.py::test_safe_merge[mlp-adalora]": SAFE_MERGE,
    "test_common.py::test_safe_merge[mlp-ia3]": SAFE_MERGE,
    "test_common.py::test_safe_merge[mlp-lora-mts]": SAFE_MERGE,
    "test_common.py::test_safe_merge[mlp-lora]": SAFE_MERGE,
    "test_common.py::test_safe_merge[t5-adalora]": SAFE_MERGE,
    "test_common.py::test_safe_merge[t5-ia3]": SAFE_MERGE,
    "test_common.py::test_safe_merge[t5-lora]": SAFE_MERGE,
    "test_common.py::test_save_pretrained[gpt2-ia3-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[gpt2-ia3-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[gpt2-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[gpt2-lora-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[llama-adalora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[llama-adalora-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[llama-dora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[llama-dora-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[llama-ia3-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[llama-ia3-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[llama-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[llama-lora-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[llama-prefix-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[llama-prefix-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[llama-prompt-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[llama-prompt-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[llama-ptuning-pickle]": PROMPT_ENCODER,
    "test_common.py::test_save_pretrained[llama-ptuning-safetensors]": PROMPT_ENCODER,
    "test_common.py::test_save_pretrained[mlp-adalora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[mlp-adalora-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[mlp-ia3-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[mlp-ia3-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[mlp-lora-mts-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[mlp-lora-mts-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[mlp-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[mlp-lora-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[t5-adalora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[t5-adalora-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[t5-ia3-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[t5-ia3-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[t5-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[t5-lora-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[t5-prefix-pickle]": PREFIX_SEQ2SEQ,
    "test_common.py::test_save_pretrained[t5-prefix-safetensors]": PREFIX_SEQ2SEQ,
    "test_common.py::test_save_pretrained[t5-prompt-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[t5-prompt-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[t5-ptuning-pickle]": PROMPT_ENCODER,
    "test_common.py::test_save_pretrained[t5-ptuning-safetensors]": PROMPT_ENCODER,
    "test_common.py::test_save_pretrained_adapter_name_substring[llama-lora]": PEFT_STATE,
    "test_common.py::test_save_pretrained_adapter_name_substring[llama-prompt]": PEFT_STATE,
    "test_common.py::test_save_pretrained_adapter_name_substring[mlp-ia3]": PEFT_STATE,
    "test_common.py::test_save_pretrained_adapter_name_substring[mlp-lora]": PEFT_STATE,
    "test_common.py::test_save_pretrained_selected_adapters[gpt2-ia3-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[gpt2-ia3-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[gpt2-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[gpt2-lora-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[llama-dora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[llama-dora-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[llama-ia3-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[llama-ia3-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[llama-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[llama-lora-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[llama-prefix-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[llama-prefix-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[llama-prompt-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[llama-prompt-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[llama-ptuning-pickle]": PROMPT_ENCODER,
    "test_common.py::test_save_pretrained_selected_adapters[llama-ptuning-safetensors]": PROMPT_ENCODER,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-ia3-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-ia3-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-lora-mts-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-lora-mts-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-lora-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[t5-ia3-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[t5-ia3-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[t5-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[t5-lora-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[t5-prefix-pickle]": PREFIX_SEQ2SEQ,
    "test_common.py::test_save_pretrained_selected_adapters[t5-prefix-safetensors]": PREFIX_SEQ2SEQ,
    "test_common.py::test_save_pretrained_selected_adapters[t5-prompt-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[t5-prompt-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[t5-ptuning-pickle]": PROMPT_ENCODER,
    "test_common.py::test_save_pretrained_selected_adapters[t5-ptuning-safetensors]": PROMPT_ENCODER,
    "test_common.py::test_training[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_training[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_training[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_training_changes_only_adapter_params[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_training_changes_only_adapter_params[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_training_changes_only_adapter_params[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_training_gradient_checkpointing[llama-ia3-non_reentrant]": GC,
    "test_common.py::test_training_gradient_checkpointing[llama-ia3-reentrant]": GC,
    "test_common.py::test_training_gradient_checkpointing[llama-lora-non_reentrant]": GC,
    "test_common.py::test_training_gradient_checkpointing[llama-lora-reentrant]": GC,
    "test_common.py::test_training_gradient_checkpointing[llama-prompt-non_reentrant]": GC,
    "test_common.py::test_training_gradient_checkpointing[llama-prompt-reentrant]": GC,
    "test_common.py::test_training_gradient_checkpointing[llama-ptuning-non_reentrant]": PROMPT_ENCODER,
    "test_common.py::test_training_gradient_checkpointing[llama-ptuning-reentrant]": PROMPT_ENCODER,
    "test_common.py::test_training_gradient_checkpointing[t5-lora-non_reentrant]": GC,
    "test_common.py::test_training_gradient_checkpointing[t5-lora-reentrant]": GC,
    "test_common.py::test_training_prompt_learning_tasks[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_training_prompt_learning_tasks[t5-prefix]": PREFIX_SEQ2SEQ,
    "test_common.py::test_training_prompt_learning_tasks[t5-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_weighted_adapter_combination[gpt2-lora-cat]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[gpt2-lora-linear]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[gpt2-lora-svd]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[llama-lora-cat]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[llama-lora-dare_linear]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[llama-lora-dare_linear_svd]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[llama-lora-dare_ties]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[llama-lora-dare_ties_svd]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[llama-lora-linear]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[llama-lora-magnitude_prune]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[llama-lora-magnitude_prune_svd]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[llama-lora-svd]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[llama-lora-ties]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[llama-lora-ties_svd]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[t5-lora-cat]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[t5-lora-linear]": WEIGHTED,
    "test_common.py::test_weighted_adapter_combination[t5-lora-svd]": WEIGHTED,
    "test_common.py::test_weighted_adapter_ia3[llama-ia3-negative]": WEIGHTED,
    "test_common.py::test_weighted_adapter_ia3[llama-ia3-positive]": WEIGHTED,
    "test_common.py::test_weighted_adapter_ia3[mlp-ia3-negative]": WEIGHTED,
    "test_common.py::test_weighted_adapter_ia3[mlp-ia3-positive]": WEIGHTED,
    "test_common.py::test_weighted_adapter_linear_single_enabled[llama-lora]": WEIGHTED,
    "test_common.py::test_weighted_adapter_linear_single_enabled[mlp-lora]": WEIGHTED,
    "test_common.py::test_weighted_adapter_single_reweighting[gpt2-lora-negative]": WEIGHTED,
    "test_common.py::test_weighted_adapter_single_reweighting[gpt2-lora-positive]": WEIGHTED,
    "test_common.py::test_weighted_adapter_single_reweighting[llama-lora-negative]": WEIGHTED,
    "test_common.py::test_weighted_adapter_single_reweighting[llama-lora-positive]": WEIGHTED,
    "test_common.py::test_weighted_adapter_single_reweighting[mlp-lora-negative]": WEIGHTED,
    "test_common.py::test_weighted_adapter_single_reweighting[mlp-lora-positive]": WEIGHTED,
    "test_common.py::test_weighted_adapter_single_reweighting[t5-lora-negative]": WEIGHTED,
    "test_common.py::test_weighted_adapter_single_reweighting[t5-lora-positive]": WEIGHTED,
    "test_common.py::test_weighted_adapter_uneven_rank_raises[llama-lora-dare_linear]": WEIGHTED,
    "test_common.py::test_weighted_adapter_uneven_rank_raises[llama-lora-dare_ties]": WEIGHTED,
    "test_common.py::test_weighted_adapter_uneven_rank_raises[llama-lora-linear]": WEIGHTED,
    "test_common.py::test_weighted_adapter_uneven_rank_raises[llama-lora-magnitude_prune]": WEIGHTED,
    "test_common.py::test_weighted_adapter_uneven_rank_raises[llama-lora-ties]": WEIGHTED,
    "test_custom_models.py::test_active_adapter[mlp-ia3]": BASE_MODEL,
    "test_custom_models.py::test_active_adapter[mlp-lora]": BASE_MODEL,
    "test_custom_models.py::test_add_weighted_adapter_negative_weight_negates_adapter": WEIGHTED,
    "test_custom_models.py::test_add_weighted_adapter_negative_weight_with_different_scaling": WEIGHTED,
    "test_custom_models.py::test_add_weighted_adapter_subtraction_with_negative_weights": WEIGHTED,
    "test_custom_models.py::test_delete_merged_adapter_raises_without_mutation[mlp-ia3]": DELETE_MERGED_MSG,
    "test_custom_models.py::test_delete_merged_adapter_raises_without_mutation[mlp-lora]": DELETE_MERGED_MSG,
    "test_custom_models.py::test_disable_adapter_with_bias_warns[mlp-lora]": DISABLE_BIAS_WARN,
    "test_custom_models.py::test_disable_adapters_exiting_context_restores_previous_state[mlp-ia3]": (
        DISABLE_LAYERS
    ),
    "test_custom_models.py::test_disable_adapters_exiting_context_restores_previous_state[mlp-lora]": (
        DISABLE_LAYERS
    ),
    "test_custom_models.py::test_disable_adapters_with_merging[mlp-adalora]": DISABLE_MERGED,
    "test_custom_models.py::test_disable_adapters_with_merging[mlp-ia3]": DISABLE_MERGED,
    "test_custom_models.py::test_disable_adapters_with_merging[mlp-lora-mts]": DISABLE_MERGED,
    "test_custom_models.py::test_disable_adapters_with_merging[mlp-lora]": DISABLE_MERGED,
    "test_custom_models.py::test_existing_model_card": MODEL_CARD,
    "test_custom_models.py::test_loading_model_requires_grad_set_correctly[mlp-adalora-trainable]": (
        ADALORA_SECOND
    ),
    "test_custom_models.py::test_mixed_adapter_batches_lora_with_dora_raises": DORA_MIXED,
    "test_custom_models.py::test_multiple_active_adapters_forward[ia3-different]": BASE_MODEL,
    "test_custom_models.py::test_multiple_active_adapters_forward[lora-same]": BASE_MODEL,
    "test_custom_models.py::test_multiple_active_adapters_merge_and_unmerge[ia3-different]": BASE_MODEL,
    "test_custom_models.py::test_multiple_active_adapters_merge_and_unmerge[lora-same]": BASE_MODEL,
    "test_custom_models.py::test_multiple_adapters_mixed_modules_to_save_merging_adapters": WEIGHTED,
    "test_custom_models.py::test_multiple_adapters_same_modules_to_save_merging_adapters_raises": WEIGHTED,
    "test_custom_models.py::test_non_existing_model_card": MODEL_CARD,
    "test_custom_models.py::test_requires_grad_two_adapters[ia3-different]": DISABLE_GRAD,
    "test_custom_models.py::test_requires_grad_two_adapters[ia3-same]": DISABLE_GRAD,
    "test_custom_models.py::test_requires_grad_two_adapters[lora-same]": DISABLE_GRAD,
    "test_custom_models.py::test_weight_bias_attributes": BASE_MODEL,
    "test_decoder_models.py::test_generate_follows_generation_config": GEN_LENGTH,
    "test_decoder_models.py::test_generate_input_ids_keyword_and_max_length": GEN_MAX_LENGTH,
    "test_decoder_models.py::test_generate_return_dict_and_scores": GEN_SCORES,
    "test_decoder_models.py::test_generate_with_adapter_uses_it": GEN_SCORES,
    "test_decoder_models.py::test_lora_layer_replication": LAYER_REPLICATION,
    "test_decoder_models.py::test_prompt_learning_with_gradient_checkpointing[llama-prefix]": PREFIX_GC,
    "test_decoder_models.py::test_prompt_learning_with_gradient_checkpointing[llama-ptuning]": PROMPT_ENCODER,
    "test_decoder_models.py::test_prompt_tuning_config_invalid_args": PROMPT_INIT_ENUM,
    "test_decoder_models.py::test_prompt_tuning_sample_vocab_init": PROMPT_INIT_ENUM,
    "test_decoder_models.py::test_prompt_tuning_text_init": PROMPT_INIT_ENUM,
    "test_decoder_models.py::test_save_pretrained_targeting_lora_to_embedding_layer[True]": SAVE_EMBED,
    "test_decoder_models.py::test_save_pretrained_targeting_lora_to_embedding_layer[auto]": SAVE_EMBED,
    "test_encoder_decoder_models.py::test_active_adapters_prompt_learning": PROMPT_ENCODER,
    "test_encoder_decoder_models.py::test_generate_input_ids_keyword_and_max_length": GEN_MAX_LENGTH,
    "test_encoder_decoder_models.py::test_prompt_learning_forward_with_inputs_embeds[prefix]": PREFIX_SEQ2SEQ,
    "test_encoder_decoder_models.py::test_prompt_learning_forward_with_inputs_embeds[ptuning]": (
        PROMPT_ENCODER
    ),
    "test_encoder_decoder_models.py::test_save_shared_tensors": TASK_TYPE,
    "test_lora_guide.py::test_add_weighted_adapter_end_to_end": WEIGHTED,
    "test_lora_guide.py::test_trainable_token_indices": TRAINABLE_TOKENS,
    "test_methods.py::test_adalora_forward_adds_orthogonality_penalty": ORTH,
    "test_methods.py::test_adalora_refuses_a_second_trainable_adapter": ADALORA_SECOND,
    "test_methods.py::test_adalora_update_and_allocate_reaches_target_rank": UPDATE_ALLOCATE,
    "test_methods.py::test_gpt2_dora_merge_and_unload[False]": SAFE_MERGE,
    "test_methods.py::test_gpt2_dora_merge_and_unload[True]": SAFE_MERGE,
    "test_methods.py::test_ia3_parameter_names": PARAM_NAMES,
    "test_peft_model.py::test_auto_peft_model_from_pretrained[auto]": AUTO,
    "test_peft_model.py::test_auto_peft_model_from_pretrained[causal_lm]": TASK_CLASSES,
    "test_peft_model.py::test_auto_peft_model_from_pretrained[seq2seq_lm]": TASK_CLASSES,
    "test_peft_model.py::test_auto_peft_model_from_pretrained[seq_cls]": TASK_CLASSES,
    "test_peft_model.py::test_auto_peft_model_from_pretrained[token_cls]": TASK_CLASSES,
    "test_peft_model.py::test_base_model_holds_the_transformers_model": BASE_MODEL,
    "test_peft_model.py::test_config_peft_type[adalora]": PEFT_TYPE,
    "test_peft_model.py::test_config_peft_type[ia3]": PEFT_TYPE,
    "test_peft_model.py::test_config_peft_type[lora]": PEFT_TYPE,
    "test_peft_model.py::test_config_peft_type[prefix]": PEFT_TYPE,
    "test_peft_model.py::test_config_peft_type[prompt]": PEFT_TYPE,
    "test_peft_model.py::test_config_peft_type[ptuning]": PROMPT_ENCODER,
    "test_peft_model.py::test_config_save_pretrained": CONFIG_IO,
    "test_peft_model.py::test_get_layer_status[function]": STATUS,
    "test_peft_model.py::test_get_layer_status[method]": STATUS,
    "test_peft_model.py::test_get_model_status[function]": STATUS,
    "test_peft_model.py::test_get_model_status[method]": STATUS,
    "test_peft_model.py::test_get_nb_trainable_parameters": NB_TRAINABLE,
    "test_peft_model.py::test_get_peft_config": CONFIG_IO,
    "test_peft_model.py::test_get_peft_model_state_dict_keys": PEFT_STATE,
    "test_peft_model.py::test_load_peft_weights": PEFT_STATE,
    "test_peft_model.py::test_parameter_names": PARAM_NAMES,
    "test_peft_model.py::test_peft_config_from_pretrained": CONFIG_IO,
    "test_peft_model.py::test_prepare_model_for_kbit_training": KBIT,
    "test_peft_model.py::test_print_trainable_parameters": PRINT_FORMAT,
    "test_peft_model.py::test_seq_cls_head_is_trained_and_saved[bert]": MTS_SEQ_CLS,
    "test_peft_model.py::test_seq_cls_head_is_trained_and_saved[llama]": MTS_SEQ_CLS,
    "test_peft_model.py::test_set_peft_model_state_dict": PEFT_STATE,
    "test_peft_model.py::test_task_type_enum": TASK_TYPE,
    "test_peft_model.py::test_task_type_picks_task_class[causal_lm]": TASK_CLASSES,
    "test_peft_model.py::test_task_type_picks_task_class[feature_extraction]": TASK_CLASSES,
    "test_peft_model.py::test_task_type_picks_task_class[question_ans]": TASK_CLASSES,
    "test_peft_model.py::test_task_type_picks_task_class[seq2seq_lm]": TASK_CLASSES,
    "test_peft_model.py::test_task_type_picks_task_class[seq_cls]": TASK_CLASSES,
    "test_peft_model.py::test_task_type_picks_task_class[token_cls]": TASK_CLASSES,
    "test_quicktour.py::test_step1_config": TASK_TYPE,
    "test_quicktour.py::test_step2_get_peft_model_and_print_trainable_parameters": TASK_TYPE,
    "test_quicktour.py::test_step3_train_with_trainer": TASK_TYPE,
    "test_quicktour.py::test_step4_save_pretrained_writes_only_the_adapter": TASK_TYPE,
    "test_quicktour.py::test_step5_auto_peft_model_for_causal_lm_and_generate": TASK_TYPE,
    "test_quicktour.py::test_step6_auto_peft_model": AUTO,
    "test_quicktour.py::test_step7_peft_model_from_pretrained": TASK_TYPE,
    "test_quicktour.py::test_step8_add_adapter": TASK_TYPE,
    "test_quicktour.py::test_step9_set_adapter": TASK_TYPE,
    "test_trainer.py::test_checkpoint_loads_in_peft": TRAINER_CKPT,
    "test_trainer.py::test_checkpoints_hold_only_the_adapter": TRAINER_CKPT,
    "test_trainer.py::test_evaluate_reports_eval_loss": EVAL_LOSS,
    "test_trainer.py::test_load_best_model_at_end": EVAL_LOSS,
    "test_trainer.py::test_seq_cls_checkpoint_holds_the_head": TRAINER_CKPT,
    "test_common.py::test_model_attr[mlp-dora]": PUSH_TO_HUB,
    "test_common.py::test_save_pretrained[mlp-dora-safetensors]": MODEL_CARD,
    "test_common.py::test_save_pretrained[mlp-dora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-dora-safetensors]": SELECTED,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-dora-pickle]": PICKLE,
    "test_common.py::test_from_pretrained_config_construction[mlp-dora]": FROM_PRETRAINED_CONFIG,
    "test_common.py::test_load_multiple_adapters[mlp-dora]": LOAD_RESULT,
    "test_common.py::test_merge_layers_multi[mlp-dora]": MERGE_NAMES,
    "test_common.py::test_merge_layers_nan[mlp-dora]": SAFE_MERGE,
    "test_common.py::test_merge_layers_is_idempotent[mlp-dora]": MERGE_WARN,
    "test_common.py::test_safe_merge[mlp-dora]": SAFE_MERGE,
    "test_common.py::test_delete_unknown_adapter_raises[mlp-dora]": DELETE_MSG,
    "test_common.py::test_get_base_model_state_dict[mlp-dora]": BASE_STATE,
    "test_custom_models.py::test_disable_adapters_with_merging[mlp-dora]": DISABLE_MERGED,
    "test_custom_models.py::test_active_adapter[mlp-dora]": BASE_MODEL,
    "test_custom_models.py::test_delete_merged_adapter_raises_without_mutation[mlp-dora]": DELETE_MERGED_MSG,
    "test_custom_models.py::test_add_weighted_adapter_cat_with_rank_pattern": WEIGHTED,
    "test_custom_models.py::test_multiple_active_adapters_forward[lora-different]": BASE_MODEL,
    "test_custom_models.py::test_multiple_active_adapters_merge_and_unmerge[lora-different]": BASE_MODEL,
    "test_custom_models.py::test_requires_grad_two_adapters[lora-different]": DISABLE_GRAD,
    "test_custom_models.py::test_mixed_adapter_batches_raises[length_mismatch]": MIXED_BATCH,
    "test_custom_models.py::test_mixed_adapter_batches_raises[training_mode]": MIXED_BATCH,
    "test_custom_models.py::test_mixed_adapter_batches_raises[merged]": MIXED_BATCH,
    "test_custom_models.py::test_mixed_adapter_batches_raises[wrong_adapter_name]": MIXED_BATCH,
}
