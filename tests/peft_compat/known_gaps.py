"""The peftkit gaps of the compatibility suite: test id (without the ``lib`` part) -> why peftkit fails it.

Each row makes the peftkit run of that check a strict xfail. Delete a row when its feature lands: a row whose
check starts passing fails the suite (XPASS(strict)) until it is deleted. A reason names the first thing that
fails; a check can fail again further on, for a reason of its own.

Regenerate the list of failures with ``python bench/compat_report.py --failures``.
"""

# ---- reasons ------------------------------------------------------------------------------------------
IA3 = "IA3 (Liu et al. 2022) is not implemented: no IA3Config"
DORA = "DoRA (Liu et al. 2024) is not implemented: LoraConfig has no use_dora"
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
INIT_FALSE = "init_lora_weights=False is refused"
PISSA_NITER = "init_lora_weights='pissa_niter_<n>' (fast SVD) is refused"
OLORA = "init_lora_weights='olora' is refused"
LORAPLUS = "no optimizers module with create_loraplus_optimizer (LoRA+)"
LORA_BIAS = "LoraConfig has no lora_bias"
FAN_IN_FAN_OUT = "LoraConfig has no fan_in_fan_out (peft warns and corrects it per layer type)"
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
RANK_TOO_LARGE = (
    "a LoRA rank above a layer's width is refused (ConfigError: r too large for lin1, 20 -> 2); peft "
    "accepts it"
)
EVAL_LOSS = "Trainer.evaluate() reports no eval_loss (so load_best_model_at_end on eval_loss fails)"
POSITIONS = (
    "virtual-token methods number a padded row's positions over its real tokens (attention-mask count); "
    "peft and transformers' forward use 0..T-1, so padded rows' outputs differ (a deliberate difference? "
    "then a README row)"
)
VIRTUAL_LOGITS = (
    "a causal LM with virtual tokens returns logits for the real tokens only; peft returns the virtual "
    "tokens' too (deliberate; the issue asks for peft's behaviour to stay reachable)"
)

# ---- rows ---------------------------------------------------------------------------------------------
KNOWN_GAPS: dict[str, str] = {
    "test_checkpoints.py::test_checkpoint_loads_in_peft[gpt2-ia3]": IA3,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[llama-dora]": DORA,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[llama-ia3]": IA3,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[llama-prefix]": POSITIONS,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[llama-prompt]": POSITIONS,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[llama-ptuning]": PROMPT_ENCODER,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[mlp-dora]": DORA,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[mlp-ia3]": IA3,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[t5-ia3]": IA3,
    "test_checkpoints.py::test_peft_checkpoint_loads[gpt2-ia3]": IA3,
    "test_checkpoints.py::test_peft_checkpoint_loads[llama-dora]": DORA,
    "test_checkpoints.py::test_peft_checkpoint_loads[llama-ia3]": IA3,
    "test_checkpoints.py::test_peft_checkpoint_loads[llama-prefix]": POSITIONS,
    "test_checkpoints.py::test_peft_checkpoint_loads[llama-prompt]": POSITIONS,
    "test_checkpoints.py::test_peft_checkpoint_loads[llama-ptuning]": POSITIONS,
    "test_checkpoints.py::test_peft_checkpoint_loads[mlp-dora]": DORA,
    "test_checkpoints.py::test_peft_checkpoint_loads[mlp-ia3]": IA3,
    "test_checkpoints.py::test_peft_checkpoint_loads[t5-ia3]": IA3,
    "test_common.py::test_adapter_name[gpt2-ia3]": IA3,
    "test_common.py::test_adapter_name[llama-dora]": DORA,
    "test_common.py::test_adapter_name[llama-ia3]": IA3,
    "test_common.py::test_adapter_name[mlp-dora]": DORA,
    "test_common.py::test_adapter_name[mlp-ia3]": IA3,
    "test_common.py::test_adapter_name[t5-ia3]": IA3,
    "test_common.py::test_adding_multiple_adapters_with_bias_raises[llama-adalora]": ADALORA_BIAS,
    "test_common.py::test_delete_adapter[gpt2-ia3-active]": IA3,
    "test_common.py::test_delete_adapter[gpt2-ia3-inactive]": IA3,
    "test_common.py::test_delete_adapter[llama-dora-active]": DORA,
    "test_common.py::test_delete_adapter[llama-dora-inactive]": DORA,
    "test_common.py::test_delete_adapter[llama-ia3-active]": IA3,
    "test_common.py::test_delete_adapter[llama-ia3-inactive]": IA3,
    "test_common.py::test_delete_adapter[mlp-dora-active]": DORA,
    "test_common.py::test_delete_adapter[mlp-dora-inactive]": DORA,
    "test_common.py::test_delete_adapter[mlp-ia3-active]": IA3,
    "test_common.py::test_delete_adapter[mlp-ia3-inactive]": IA3,
    "test_common.py::test_delete_adapter[t5-ia3-active]": IA3,
    "test_common.py::test_delete_adapter[t5-ia3-inactive]": IA3,
    "test_common.py::test_delete_unknown_adapter_raises[gpt2-ia3]": IA3,
    "test_common.py::test_delete_unknown_adapter_raises[llama-dora]": DORA,
    "test_common.py::test_delete_unknown_adapter_raises[llama-ia3]": IA3,
    "test_common.py::test_delete_unknown_adapter_raises[mlp-dora]": DORA,
    "test_common.py::test_delete_unknown_adapter_raises[mlp-ia3]": IA3,
    "test_common.py::test_delete_unknown_adapter_raises[t5-ia3]": IA3,
    "test_common.py::test_disable_adapter[gpt2-ia3]": IA3,
    "test_common.py::test_disable_adapter[llama-dora]": DORA,
    "test_common.py::test_disable_adapter[llama-ia3]": IA3,
    "test_common.py::test_disable_adapter[mlp-dora]": DORA,
    "test_common.py::test_disable_adapter[mlp-ia3]": IA3,
    "test_common.py::test_disable_adapter[t5-ia3]": IA3,
    "test_common.py::test_forward_shape[gpt2-ia3]": IA3,
    "test_common.py::test_forward_shape[llama-dora]": DORA,
    "test_common.py::test_forward_shape[llama-ia3]": IA3,
    "test_common.py::test_forward_shape[llama-prompt]": VIRTUAL_LOGITS,
    "test_common.py::test_forward_shape[llama-ptuning]": PROMPT_ENCODER,
    "test_common.py::test_forward_shape[mlp-dora]": DORA,
    "test_common.py::test_forward_shape[mlp-ia3]": IA3,
    "test_common.py::test_forward_shape[t5-ia3]": IA3,
    "test_common.py::test_from_pretrained_config_construction[gpt2-ia3]": IA3,
    "test_common.py::test_from_pretrained_config_construction[llama-dora]": DORA,
    "test_common.py::test_from_pretrained_config_construction[llama-ia3]": IA3,
    "test_common.py::test_from_pretrained_config_construction[mlp-dora]": DORA,
    "test_common.py::test_from_pretrained_config_construction[mlp-ia3]": IA3,
    "test_common.py::test_from_pretrained_config_construction[t5-ia3]": IA3,
    "test_common.py::test_generate[gpt2-ia3]": IA3,
    "test_common.py::test_generate[llama-dora]": DORA,
    "test_common.py::test_generate[llama-ia3]": IA3,
    "test_common.py::test_generate[t5-ia3]": IA3,
    "test_common.py::test_generate_half_prec[gpt2-ia3]": IA3,
    "test_common.py::test_generate_half_prec[llama-dora]": DORA,
    "test_common.py::test_generate_half_prec[llama-ia3]": IA3,
    "test_common.py::test_generate_half_prec[t5-ia3]": IA3,
    "test_common.py::test_generate_pos_args[gpt2-ia3]": IA3,
    "test_common.py::test_generate_pos_args[llama-dora]": DORA,
    "test_common.py::test_generate_pos_args[llama-ia3]": IA3,
    "test_common.py::test_generate_pos_args[t5-ia3]": IA3,
    "test_common.py::test_get_base_model_state_dict[gpt2-ia3]": IA3,
    "test_common.py::test_get_base_model_state_dict[llama-dora]": DORA,
    "test_common.py::test_get_base_model_state_dict[llama-ia3]": IA3,
    "test_common.py::test_get_base_model_state_dict[mlp-dora]": DORA,
    "test_common.py::test_get_base_model_state_dict[mlp-ia3]": IA3,
    "test_common.py::test_get_base_model_state_dict[t5-ia3]": IA3,
    "test_common.py::test_inference_safetensors[gpt2-ia3]": IA3,
    "test_common.py::test_inference_safetensors[llama-dora]": DORA,
    "test_common.py::test_inference_safetensors[llama-ia3]": IA3,
    "test_common.py::test_inference_safetensors[mlp-dora]": DORA,
    "test_common.py::test_inference_safetensors[mlp-ia3]": IA3,
    "test_common.py::test_inference_safetensors[t5-ia3]": IA3,
    "test_common.py::test_inject_adapter_in_model_low_cpu_mem_usage[llama-ia3]": LOW_CPU,
    "test_common.py::test_inject_adapter_in_model_low_cpu_mem_usage[llama-lora]": LOW_CPU,
    "test_common.py::test_inject_adapter_in_model_low_cpu_mem_usage[mlp-lora]": LOW_CPU,
    "test_common.py::test_inject_adapter_in_model_low_cpu_mem_usage[t5-lora]": LOW_CPU,
    "test_common.py::test_load_low_cpu_mem_usage[llama-ia3]": IA3,
    "test_common.py::test_load_low_cpu_mem_usage[llama-lora]": LOW_CPU,
    "test_common.py::test_load_low_cpu_mem_usage[llama-prompt]": LOW_CPU,
    "test_common.py::test_load_low_cpu_mem_usage[mlp-lora]": LOW_CPU,
    "test_common.py::test_load_low_cpu_mem_usage[t5-lora]": LOW_CPU,
    "test_common.py::test_load_multiple_adapters[gpt2-ia3]": IA3,
    "test_common.py::test_load_multiple_adapters[llama-dora]": DORA,
    "test_common.py::test_load_multiple_adapters[llama-ia3]": IA3,
    "test_common.py::test_load_multiple_adapters[mlp-dora]": DORA,
    "test_common.py::test_load_multiple_adapters[mlp-ia3]": IA3,
    "test_common.py::test_load_multiple_adapters[t5-ia3]": IA3,
    "test_common.py::test_merge_layers[gpt2-ia3]": IA3,
    "test_common.py::test_merge_layers[llama-dora]": DORA,
    "test_common.py::test_merge_layers[llama-ia3]": IA3,
    "test_common.py::test_merge_layers[mlp-dora]": DORA,
    "test_common.py::test_merge_layers[mlp-ia3]": IA3,
    "test_common.py::test_merge_layers[t5-ia3]": IA3,
    "test_common.py::test_merge_layers_is_idempotent[gpt2-ia3]": IA3,
    "test_common.py::test_merge_layers_is_idempotent[llama-dora]": DORA,
    "test_common.py::test_merge_layers_is_idempotent[llama-ia3]": IA3,
    "test_common.py::test_merge_layers_is_idempotent[mlp-dora]": DORA,
    "test_common.py::test_merge_layers_is_idempotent[mlp-ia3]": IA3,
    "test_common.py::test_merge_layers_is_idempotent[t5-ia3]": IA3,
    "test_common.py::test_merge_layers_multi[gpt2-ia3]": IA3,
    "test_common.py::test_merge_layers_multi[llama-dora]": DORA,
    "test_common.py::test_merge_layers_multi[llama-ia3]": IA3,
    "test_common.py::test_merge_layers_multi[mlp-dora]": DORA,
    "test_common.py::test_merge_layers_multi[mlp-ia3]": IA3,
    "test_common.py::test_merge_layers_multi[t5-ia3]": IA3,
    "test_common.py::test_merge_layers_nan[gpt2-ia3]": IA3,
    "test_common.py::test_merge_layers_nan[llama-dora]": DORA,
    "test_common.py::test_merge_layers_nan[llama-ia3]": IA3,
    "test_common.py::test_merge_layers_nan[mlp-dora]": DORA,
    "test_common.py::test_merge_layers_nan[mlp-ia3]": IA3,
    "test_common.py::test_merge_layers_nan[t5-ia3]": IA3,
    "test_common.py::test_model_attr[gpt2-ia3]": IA3,
    "test_common.py::test_model_attr[llama-dora]": DORA,
    "test_common.py::test_model_attr[llama-ia3]": IA3,
    "test_common.py::test_model_attr[mlp-dora]": DORA,
    "test_common.py::test_model_attr[mlp-ia3]": IA3,
    "test_common.py::test_model_attr[t5-ia3]": IA3,
    "test_common.py::test_passing_input_embeds_works[gpt2-ia3]": IA3,
    "test_common.py::test_passing_input_embeds_works[llama-dora]": DORA,
    "test_common.py::test_passing_input_embeds_works[llama-ia3]": IA3,
    "test_common.py::test_prepare_for_training[gpt2-ia3]": IA3,
    "test_common.py::test_prepare_for_training[llama-dora]": DORA,
    "test_common.py::test_prepare_for_training[llama-ia3]": IA3,
    "test_common.py::test_prepare_for_training[t5-ia3]": IA3,
    "test_common.py::test_safe_merge[gpt2-ia3]": IA3,
    "test_common.py::test_safe_merge[llama-dora]": DORA,
    "test_common.py::test_safe_merge[llama-ia3]": IA3,
    "test_common.py::test_safe_merge[mlp-dora]": DORA,
    "test_common.py::test_safe_merge[mlp-ia3]": IA3,
    "test_common.py::test_safe_merge[t5-ia3]": IA3,
    "test_common.py::test_save_pretrained[gpt2-ia3-pickle]": IA3,
    "test_common.py::test_save_pretrained[gpt2-ia3-safetensors]": IA3,
    "test_common.py::test_save_pretrained[gpt2-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[llama-adalora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[llama-dora-pickle]": DORA,
    "test_common.py::test_save_pretrained[llama-dora-safetensors]": DORA,
    "test_common.py::test_save_pretrained[llama-ia3-pickle]": IA3,
    "test_common.py::test_save_pretrained[llama-ia3-safetensors]": IA3,
    "test_common.py::test_save_pretrained[llama-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[llama-prefix-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[llama-prompt-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[llama-ptuning-pickle]": PROMPT_ENCODER,
    "test_common.py::test_save_pretrained[mlp-adalora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[mlp-dora-pickle]": DORA,
    "test_common.py::test_save_pretrained[mlp-dora-safetensors]": DORA,
    "test_common.py::test_save_pretrained[mlp-ia3-pickle]": IA3,
    "test_common.py::test_save_pretrained[mlp-ia3-safetensors]": IA3,
    "test_common.py::test_save_pretrained[mlp-lora-mts-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[mlp-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[t5-adalora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[t5-ia3-pickle]": IA3,
    "test_common.py::test_save_pretrained[t5-ia3-safetensors]": IA3,
    "test_common.py::test_save_pretrained[t5-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[t5-prefix-pickle]": PREFIX_SEQ2SEQ,
    "test_common.py::test_save_pretrained[t5-prompt-pickle]": PICKLE,
    "test_common.py::test_save_pretrained[t5-ptuning-pickle]": PROMPT_ENCODER,
    "test_common.py::test_save_pretrained_adapter_name_substring[mlp-ia3]": IA3,
    "test_common.py::test_save_pretrained_selected_adapters[gpt2-ia3-pickle]": IA3,
    "test_common.py::test_save_pretrained_selected_adapters[gpt2-ia3-safetensors]": IA3,
    "test_common.py::test_save_pretrained_selected_adapters[gpt2-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[llama-dora-pickle]": DORA,
    "test_common.py::test_save_pretrained_selected_adapters[llama-dora-safetensors]": DORA,
    "test_common.py::test_save_pretrained_selected_adapters[llama-ia3-pickle]": IA3,
    "test_common.py::test_save_pretrained_selected_adapters[llama-ia3-safetensors]": IA3,
    "test_common.py::test_save_pretrained_selected_adapters[llama-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[llama-prefix-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[llama-prompt-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[llama-ptuning-pickle]": PROMPT_ENCODER,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-dora-pickle]": DORA,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-dora-safetensors]": DORA,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-ia3-pickle]": IA3,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-ia3-safetensors]": IA3,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-lora-mts-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[mlp-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[t5-ia3-pickle]": IA3,
    "test_common.py::test_save_pretrained_selected_adapters[t5-ia3-safetensors]": IA3,
    "test_common.py::test_save_pretrained_selected_adapters[t5-lora-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[t5-prefix-pickle]": PREFIX_SEQ2SEQ,
    "test_common.py::test_save_pretrained_selected_adapters[t5-prompt-pickle]": PICKLE,
    "test_common.py::test_save_pretrained_selected_adapters[t5-ptuning-pickle]": PROMPT_ENCODER,
    "test_common.py::test_training[gpt2-ia3]": IA3,
    "test_common.py::test_training[llama-dora]": DORA,
    "test_common.py::test_training[llama-ia3]": IA3,
    "test_common.py::test_training[mlp-dora]": DORA,
    "test_common.py::test_training[mlp-ia3]": IA3,
    "test_common.py::test_training[t5-ia3]": IA3,
    "test_common.py::test_training_changes_only_adapter_params[gpt2-ia3]": IA3,
    "test_common.py::test_training_changes_only_adapter_params[llama-dora]": DORA,
    "test_common.py::test_training_changes_only_adapter_params[llama-ia3]": IA3,
    "test_common.py::test_training_changes_only_adapter_params[mlp-dora]": DORA,
    "test_common.py::test_training_changes_only_adapter_params[mlp-ia3]": IA3,
    "test_common.py::test_training_changes_only_adapter_params[t5-ia3]": IA3,
    "test_common.py::test_training_gradient_checkpointing[llama-ia3-non_reentrant]": IA3,
    "test_common.py::test_training_gradient_checkpointing[llama-ia3-reentrant]": IA3,
    "test_common.py::test_training_layer_indexing[llama-dora]": DORA,
    "test_common.py::test_unload_adapter[gpt2-ia3]": IA3,
    "test_common.py::test_unload_adapter[llama-dora]": DORA,
    "test_common.py::test_unload_adapter[llama-ia3]": IA3,
    "test_common.py::test_unload_adapter[mlp-dora]": DORA,
    "test_common.py::test_unload_adapter[mlp-ia3]": IA3,
    "test_common.py::test_unload_adapter[t5-ia3]": IA3,
    "test_common.py::test_weighted_adapter_ia3[llama-ia3-negative]": IA3,
    "test_common.py::test_weighted_adapter_ia3[llama-ia3-positive]": IA3,
    "test_common.py::test_weighted_adapter_ia3[mlp-ia3-negative]": IA3,
    "test_common.py::test_weighted_adapter_ia3[mlp-ia3-positive]": IA3,
    "test_custom_models.py::test_active_adapter[mlp-dora]": DORA,
    "test_custom_models.py::test_active_adapter[mlp-ia3]": IA3,
    "test_custom_models.py::test_default_target_modules_not_set_raises[IA3Config]": IA3,
    "test_custom_models.py::test_delete_merged_adapter_raises_without_mutation[mlp-dora]": DORA,
    "test_custom_models.py::test_delete_merged_adapter_raises_without_mutation[mlp-ia3]": IA3,
    "test_custom_models.py::test_disable_adapters[mlp-dora]": DORA,
    "test_custom_models.py::test_disable_adapters[mlp-ia3]": IA3,
    "test_custom_models.py::test_disable_adapters_exiting_context_restores_previous_state[mlp-ia3]": IA3,
    "test_custom_models.py::test_disable_adapters_with_merging[mlp-dora]": DORA,
    "test_custom_models.py::test_disable_adapters_with_merging[mlp-ia3]": IA3,
    "test_custom_models.py::test_loading_model_requires_grad_set_correctly[mlp-adalora-trainable]": (
        ADALORA_SECOND
    ),
    "test_custom_models.py::test_loading_model_requires_grad_set_correctly[mlp-ia3-frozen]": IA3,
    "test_custom_models.py::test_loading_model_requires_grad_set_correctly[mlp-ia3-trainable]": IA3,
    "test_custom_models.py::test_mixed_adapter_batches_lora_with_dora_raises": DORA,
    "test_custom_models.py::test_mixed_adapter_batches_raises[training_mode]": RANK_TOO_LARGE,
    "test_custom_models.py::test_multiple_active_adapters_forward[ia3-different]": IA3,
    "test_custom_models.py::test_multiple_active_adapters_merge_and_unmerge[ia3-different]": IA3,
    "test_custom_models.py::test_multiple_adapters_mixed_modules_to_save[ia3-first]": IA3,
    "test_custom_models.py::test_multiple_adapters_mixed_modules_to_save[ia3-second]": IA3,
    "test_custom_models.py::test_only_params_are_updated[mlp-dora]": DORA,
    "test_custom_models.py::test_only_params_are_updated[mlp-ia3]": IA3,
    "test_custom_models.py::test_parameters_after_loading_model[mlp-dora]": DORA,
    "test_custom_models.py::test_parameters_after_loading_model[mlp-ia3]": IA3,
    "test_custom_models.py::test_requires_grad_two_adapters[ia3-different]": IA3,
    "test_custom_models.py::test_requires_grad_two_adapters[ia3-same]": IA3,
    "test_custom_models.py::test_save_load_roundtrip[mlp-dora]": DORA,
    "test_custom_models.py::test_save_load_roundtrip[mlp-ia3]": IA3,
    "test_decoder_models.py::test_default_target_modules[gpt2-ia3]": IA3,
    "test_decoder_models.py::test_default_target_modules[llama-ia3]": IA3,
    "test_decoder_models.py::test_lora_layer_replication": LAYER_REPLICATION,
    "test_encoder_decoder_models.py::test_default_target_modules[ia3]": IA3,
    "test_lora_guide.py::test_init_false_is_not_an_identity": INIT_FALSE,
    "test_lora_guide.py::test_init_svd_and_qr_adapters_reload_exactly[olora]": OLORA,
    "test_lora_guide.py::test_init_svd_and_qr_are_identities_at_init[olora]": OLORA,
    "test_lora_guide.py::test_init_svd_and_qr_are_identities_at_init[pissa_niter_4]": PISSA_NITER,
    "test_lora_guide.py::test_loraplus_optimizer": LORAPLUS,
    "test_lora_guide.py::test_trainable_token_indices": TRAINABLE_TOKENS,
    "test_methods.py::test_adalora_refuses_a_second_trainable_adapter": ADALORA_SECOND,
    "test_methods.py::test_dora_identity_at_init": DORA,
    "test_methods.py::test_dora_magnitude_is_the_weight_norm_at_init": DORA,
    "test_methods.py::test_dora_output_is_magnitude_times_normalised_weight": DORA,
    "test_methods.py::test_dora_saved_keys": DORA,
    "test_methods.py::test_fan_in_fan_out_false_on_conv1d_warns_and_corrects": FAN_IN_FAN_OUT,
    "test_methods.py::test_fan_in_fan_out_true_on_gpt2_merges": FAN_IN_FAN_OUT,
    "test_methods.py::test_fan_in_fan_out_true_on_linear_warns_and_corrects": FAN_IN_FAN_OUT,
    "test_methods.py::test_gpt2_dora_merge_and_unload[False]": DORA,
    "test_methods.py::test_gpt2_dora_merge_and_unload[True]": DORA,
    "test_methods.py::test_ia3_merge_and_unload[attention]": IA3,
    "test_methods.py::test_ia3_merge_and_unload[feedforward]": IA3,
    "test_methods.py::test_ia3_parameter_names": IA3,
    "test_methods.py::test_ia3_rescales_activations[attention]": IA3,
    "test_methods.py::test_ia3_rescales_activations[feedforward]": IA3,
    "test_methods.py::test_ia3_vector_is_ones_at_init[attention]": IA3,
    "test_methods.py::test_ia3_vector_is_ones_at_init[feedforward]": IA3,
    "test_methods.py::test_lora_bias_saved": LORA_BIAS,
    "test_methods.py::test_lora_bias_trains_a_bias_on_lora_b": LORA_BIAS,
    "test_peft_model.py::test_config_peft_type[ia3]": IA3,
}
