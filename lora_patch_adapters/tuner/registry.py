"""Registration of the gated LoRA patch as a PEFT method (``PeftType.LORA_PATCH``), idempotent.

peft has no public API to add a member to its ``PeftType`` enum, so :func:`ensure_peft_type` does it by hand; the
rest goes through ``peft.utils.register_peft_method``.
"""

from __future__ import annotations

from peft.utils import PeftType

PEFT_METHOD_NAME = "lora_patch"
PEFT_TYPE_NAME = "LORA_PATCH"
PREFIX = "lora_patch_"
"""Every adapter attribute starts with this prefix; it never appears in the official generators' module names."""


def ensure_peft_type() -> PeftType:
    """Return ``PeftType.LORA_PATCH``, adding the member to peft's enum the first time (safe to call repeatedly)."""
    members = PeftType.__members__
    if PEFT_TYPE_NAME in members:
        return members[PEFT_TYPE_NAME]
    member = str.__new__(PeftType, PEFT_TYPE_NAME)
    member._name_ = PEFT_TYPE_NAME
    member._value_ = PEFT_TYPE_NAME
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    add_member = getattr(PeftType, "_add_member_", None)
    if add_member is not None:  # Python >= 3.13 keeps members in the class dict through this hook
        add_member(PEFT_TYPE_NAME, member)
    else:
        PeftType._member_map_[PEFT_TYPE_NAME] = member
        type.__setattr__(PeftType, PEFT_TYPE_NAME, member)
    if PEFT_TYPE_NAME not in PeftType._member_names_:  # list(PeftType) iterates over this list
        PeftType._member_names_.append(PEFT_TYPE_NAME)
    PeftType._value2member_map_[PEFT_TYPE_NAME] = member
    return member


def register(config_cls: type, model_cls: type) -> None:
    """Register the method with peft; a second call (re-import, ``importlib.reload``) re-points it at the given
    classes instead of failing with peft's "already a PEFT method" error."""
    from peft import mapping
    from peft.utils import register_peft_method

    peft_type = ensure_peft_type()
    if peft_type in mapping.PEFT_TYPE_TO_CONFIG_MAPPING:
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
        mapping.PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
        mapping.PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = PREFIX
        return
    register_peft_method(name=PEFT_METHOD_NAME, config_cls=config_cls, model_cls=model_cls, prefix=PREFIX)


def is_registered() -> bool:
    """Whether peft currently knows the LORA_PATCH method."""
    from peft import mapping

    return PEFT_TYPE_NAME in PeftType.__members__ and PeftType[PEFT_TYPE_NAME] in mapping.PEFT_TYPE_TO_TUNER_MAPPING

