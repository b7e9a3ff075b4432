"""Proactive defenses (what a patch must defeat), behind one ``protect(x, editor, condition)`` API."""

from .anti_forgery import AntiForgery
from .base import Defense
from .cmua import CMUA
from .pgd import FGSM, IFGSM, PGD

__all__ = ["CMUA", "FGSM", "IFGSM", "PGD", "AntiForgery", "Defense"]
