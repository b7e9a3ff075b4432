"""Errors raised by the loss encoders."""

from __future__ import annotations


class EncoderUnavailableError(RuntimeError):
    """A frozen encoder (ResNet-50 or BLIP vision) could not be loaded: weights not cached, no connection, missing
    local file. The message says where the weights were expected and how to provide them."""
