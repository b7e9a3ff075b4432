"""Registration with peft: enum member, mappings, idempotence across imports and reloads."""

from __future__ import annotations

import importlib

import peft
import torch
from peft import mapping
from peft.utils import PeftType

import lora_patch_adapters
from lora_patch_adapters.tuner import registry
from tests.helpers import MixedNet
from tests.tuner.test_save_load import _run_fresh


def test_peft_type_member_is_listed_and_mapped():
    member = PeftType.LORA_PATCH
    assert member in list(PeftType)
    assert PeftType("LORA_PATCH") is member and PeftType["LORA_PATCH"] is member
    assert mapping.PEFT_TYPE_TO_CONFIG_MAPPING[member] is lora_patch_adapters.LoraPatchConfig
    assert mapping.PEFT_TYPE_TO_TUNER_MAPPING[member] is lora_patch_adapters.LoraPatchModel
    assert mapping.PEFT_TYPE_TO_PREFIX_MAPPING[member] == "lora_patch_"
    assert registry.is_registered()


def test_register_twice_and_reload_keep_working():
    n_members = len(list(PeftType))
    registry.register(lora_patch_adapters.LoraPatchConfig, lora_patch_adapters.LoraPatchModel)
    importlib.reload(lora_patch_adapters)
    importlib.reload(lora_patch_adapters.tuner)
    assert len(list(PeftType)) == n_members
    model = peft.get_peft_model(MixedNet(), lora_patch_adapters.LoraPatchConfig())
    assert isinstance(model.base_model, lora_patch_adapters.LoraPatchModel)
    x = torch.rand(1, 3, 32, 32)
    assert model(x).shape == (1, 4)


def test_fresh_interpreter_double_import_and_reload():
    result = _run_fresh(
        """
        import importlib, peft
        import lora_patch_adapters
        import lora_patch_adapters as again
        importlib.reload(lora_patch_adapters)
        importlib.reload(lora_patch_adapters.tuner.registry)
        importlib.reload(lora_patch_adapters.tuner)
        from peft.utils import PeftType
        assert [m for m in PeftType if m == "LORA_PATCH"] == [PeftType.LORA_PATCH]
        cfg = lora_patch_adapters.LoraPatchConfig()
        from tests.helpers import MixedNet
        m = peft.get_peft_model(MixedNet(), cfg)
        print("OK", type(m.base_model).__name__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "OK LoraPatchModel" in result.stdout
