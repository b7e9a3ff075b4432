"""Proactive defenses (what a patch must defeat), behind one ``protect(x, editor, condition)`` API.

Bases: :class:`Defense`, :class:`UniversalDefense`. Defenses: :class:`FGSM`, :class:`IFGSM`, :class:`PGD` (Disrupting
Deepfakes), :class:`CMUA` (CMUA-Watermark), :class:`AntiForgery` (Anti-Forgery). Each takes ``eot=[...]``
(expectation over transformation: the objective averaged over differentiable JPEG / blur, :mod:`.transforms`); the
built-in spec ``pgd_eot`` is PGD with ``eot=["identity", "jpeg75", "blur1"]``.
"""

from .anti_forgery import AntiForgery
from .base import Defense, UniversalDefense
from .cmua import CMUA
from .fgsm import FGSM
from .ifgsm import IFGSM
from .pgd import PGD

__all__ = ["CMUA", "FGSM", "IFGSM", "PGD", "AntiForgery", "Defense", "UniversalDefense"]
