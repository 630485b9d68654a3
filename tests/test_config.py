"""Configs are checked when built; errors name the field and the allowed values."""

from __future__ import annotations

import pytest

import peftkit
from peftkit import ConfigError, LoraConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"r": 0}, "r"),
        ({"r": -2}, "r"),
        ({"r": 2.5}, "r"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_dropout": -0.1}, "lora_dropout"),
        ({"init_lora_weights": "xavier"}, "init_lora_weights"),
        ({"bias": "some"}, "bias"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern"),
        ({"target_modules": 3}, "target_modules"),
        ({"layers_to_transform": [-1]}, "layers_to_transform"),
    ],
)
def test_bad_values_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        LoraConfig(**{"target_modules": ["q_proj"], **kwargs})
    assert err.value.field.startswith(field)


def test_choice_errors_list_allowed_values():
    with pytest.raises(
        ConfigError, match=r"\['kaiming', 'gaussian', 'pissa', 'olora', False, 'pissa_niter_<n>'\]"
    ):
        LoraConfig(init_lora_weights="xavier")


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="rank"):
        LoraConfig.from_dict({"rank": 4})
    assert LoraConfig.from_dict({"r": 4, "target_modules": ["q"]}).r == 4


def test_registry():
    assert "lora" in peftkit.list_methods()
    assert peftkit.get_method("lora").config_class is LoraConfig
    assert LoraConfig.method == "lora"
    with pytest.raises(ValueError, match="registered methods"):
        peftkit.get_method("nope")


def test_register_a_new_method_with_one_decorator():
    from dataclasses import dataclass

    from peftkit.registry import _METHODS

    @dataclass
    class ScaleConfig(peftkit.PeftConfig):
        factor: float = 1.0

    @peftkit.register_method("scale_test", config=ScaleConfig)
    class ScaleMethod(peftkit.Method):
        def inject(self, model, config, adapter_name):
            return []

    try:
        assert "scale_test" in peftkit.list_methods()
        assert ScaleConfig.method == "scale_test"
        with pytest.raises(ValueError, match="already registered"):
            peftkit.register_method("scale_test", config=ScaleConfig)(ScaleMethod)
    finally:
        del _METHODS["scale_test"]
