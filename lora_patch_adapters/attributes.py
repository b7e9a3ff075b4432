"""Attribute names of the editors' conditions: a leaf module (imports nothing of the package) that both the
generators (their condition formats) and the data readers (their default label columns) import."""

from __future__ import annotations

STARGAN_ATTRIBUTES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
"""StarGAN's 5 CelebA attributes, in the order of its condition vector."""
HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
"""CelebA's hair-colour attributes (one at a time in a target condition)."""
TESTBED_ATTRIBUTES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Eyeglasses", "Smiling")
"""The testbed's attributes: a 3-way hair colour plus eyeglasses and smile (the procedural faces render them)."""
ATTGAN_ATTRIBUTES: tuple[str, ...] = (
    "Bald",
    "Bangs",
    "Black_Hair",
    "Blond_Hair",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Eyeglasses",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "No_Beard",
    "Pale_Skin",
    "Young",
)
"""The 13 CelebA attributes of the released AttGAN models, in the order of the condition vector."""
