"""Checks whose reference behaviour arrived in a later peft than the oldest release peftkit claims.

On an older peft (``make test-oldest`` installs peft 0.18.0), the ``peft`` leg of these checks is skipped
with the row's reason: peft itself behaved otherwise then. The ``peftkit`` leg runs everywhere. Each
version was found by running the ``peft`` leg against peft 0.18.1, 0.19.1 and 0.20.0 (transformers 5.0).
"""

from __future__ import annotations

SINCE_0_19 = "0.19.0"
SINCE_0_20 = "0.20.0"
SINCE_0_21 = "0.21.0"

# test name (no parameters) -> (first peft release with the checked behaviour, what older releases do)
REFERENCE_SINCE: dict[str, tuple[str, str]] = {
    "test_common.py::test_merge_layers": (
        SINCE_0_19,
        "merge_and_unload leaves peft_config on the returned model",
    ),
    "test_common.py::test_unload_adapter": (SINCE_0_19, "unload leaves peft_config on the returned model"),
    "test_common.py::test_weighted_adapter_single_reweighting": (
        SINCE_0_19,
        "a single LoRA adapter reweighted by w gives w^2 * dW, and a negative weight does not negate",
    ),
    "test_custom_models.py::test_add_weighted_adapter_negative_weight_negates_adapter": (
        SINCE_0_19,
        "a negative weight does not negate a LoRA adapter",
    ),
    "test_common.py::test_get_base_model_state_dict": (SINCE_0_20, "no get_base_model_state_dict"),
    "test_common.py::test_save_pretrained_adapter_name_substring": (
        SINCE_0_20,
        "an adapter whose name contains another's saves the other's weights too",
    ),
    "test_custom_models.py::test_delete_merged_adapter_raises_without_mutation": (
        SINCE_0_21,
        "deleting a merged adapter is allowed",
    ),
}
