"""The peftkit gaps of the compatibility suite: test id (without the ``lib`` part) -> why peftkit fails it.

Each row makes the peftkit run of that check a strict xfail. Delete a row when its feature lands: a row whose
check starts passing fails the suite (XPASS(strict)) until it is deleted. A reason names the first thing that
fails; a check can fail again further on, for a reason of its own.

Every reason is a deliberate difference, each a row of the README's "Differences from peft" table, with the
way to reach peft's behaviour. (A LoRA option peftkit lacks would be a reason of its own kind.)

Regenerate the list of failures with ``python bench/compat_report.py --failures``.
"""

# ---- reasons: deliberate differences (README, "Differences from peft") ---------------------------------
POSITIONS = (
    "deliberate: virtual-token rows number positions over their real tokens, so padding changes nothing; "
    "peft counts 0..T-1 whatever the mask (model.prompt_encoder.peft_forward = True gives peft's)"
)
VIRTUAL_LOGITS = (
    "deliberate: a causal LM with virtual tokens returns the real tokens' logits, aligned with the labels; "
    "peft returns the virtual tokens' too (model.prompt_encoder.peft_forward = True gives peft's)"
)
ADALORA_TRAINABLE = (
    "deliberate: several AdaLoRA adapters may train (each keeps its own budget state); peft allows one"
)
MIXED_TRAINING = (
    "deliberate: adapter_names= works in training mode (peftkit trains prompt ensembles that way); peft "
    "refuses it"
)
DORA_MIXED = (
    "deliberate: DoRA adapters take per-row adapter_names like LoRA's (peftkit never builds the rescaled "
    "weight in the forward); peft refuses them"
)
ADALORA_R = (
    "deliberate: AdaLoraConfig takes no r (its rank is init_r); peft accepts r and ignores it with a warning"
)

# ---- rows ---------------------------------------------------------------------------------------------
KNOWN_GAPS: dict[str, str] = {
    "test_checkpoints.py::test_checkpoint_loads_in_peft[llama-prefix]": POSITIONS,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[llama-prompt]": POSITIONS,
    "test_checkpoints.py::test_checkpoint_loads_in_peft[llama-ptuning]": POSITIONS,
    "test_checkpoints.py::test_peft_checkpoint_loads[llama-prefix]": POSITIONS,
    "test_checkpoints.py::test_peft_checkpoint_loads[llama-prompt]": POSITIONS,
    "test_checkpoints.py::test_peft_checkpoint_loads[llama-ptuning]": POSITIONS,
    "test_common.py::test_adding_multiple_adapters_with_bias_raises[llama-adalora]": ADALORA_R,
    "test_common.py::test_forward_shape[llama-prompt]": VIRTUAL_LOGITS,
    "test_common.py::test_forward_shape[llama-ptuning]": VIRTUAL_LOGITS,
    "test_custom_models.py::test_loading_model_requires_grad_set_correctly[mlp-adalora-trainable]": (
        ADALORA_TRAINABLE
    ),
    "test_custom_models.py::test_mixed_adapter_batches_lora_with_dora_raises": DORA_MIXED,
    "test_custom_models.py::test_mixed_adapter_batches_raises[training_mode]": MIXED_TRAINING,
    "test_methods.py::test_adalora_refuses_a_second_trainable_adapter": ADALORA_TRAINABLE,
}
