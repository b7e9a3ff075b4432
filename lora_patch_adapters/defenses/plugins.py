"""Naming a defense: a built-in name, or a user's defense that follows the protocol, loaded without editing the package.

A *spec* is one of

* a built-in name: ``pgd``, ``ifgsm``, ``fgsm``, ``cmua``, ``anti_forgery``, ``pgd_eot`` (PGD averaged over
  :data:`PGD_EOT_TRANSFORMS`, see :class:`~.pgd.PGD`);
* ``package.module:attribute`` — imported from the Python path;
* ``path/to/file.py:attribute`` — the file is run as a module (it is the user's own code, named on purpose);
* ``path/to/file.py`` — the file's ``defense`` object, else its one :class:`Defense` subclass, else its ``protect``
  function.

The attribute may be

* a :class:`Defense` instance (used as it is) or subclass (built with the ``eps``/``seed`` its constructor takes);
* any other class or object with a ``protect(x, editor, condition)`` method (a class is built the same way);
* a function ``protect(x, editor, condition) -> x_protected``;
* a function of no arguments returning one of the above (a factory).

The protocol: ``x`` [N, 3, H, W] in [-1, 1]; ``editor`` an :class:`~lora_patch_adapters.generators.base.Editor`
(call ``editor.edit(x, condition)``; its output may have 3·K channels when the audit computes a patch-aware
defense against K generators at once, see ``generators/ensemble.py``); ``condition`` one target condition or a list
of them; return protected images of the same shape. An ``eps`` attribute declares the L-inf budget on the [-1, 1]
scale (otherwise the ``eps`` given to :func:`load_defense`); a universal defense also has ``fit(data, editors)``
where ``data`` is an ``(images, labels)`` pair. Outputs outside the declared budget are an error, not clipped: an
audit of a defense that exceeds its budget would overstate it. A user's :class:`Defense` subclass implements
``_protect`` (``protect`` is final) and is trusted with its own budget (``protect`` projects onto ``eps``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..generators.base import Editor
from .anti_forgery import AntiForgery
from .base import PGD_EPS, Defense
from .checks import check_eps, check_positive_int
from .cmua import CMUA
from .fgsm import FGSM
from .ifgsm import IFGSM
from .pgd import PGD

BUILTIN_DEFENSES = ("pgd", "ifgsm", "fgsm", "cmua", "anti_forgery", "pgd_eot")
PGD_EOT_TRANSFORMS = ("identity", "jpeg75", "blur1")
"""The transformations the built-in ``pgd_eot`` averages its objective over (EOT): the image itself, a JPEG
re-encoding at quality 75 and a Gaussian blur of sigma 1 pixel. ``"identity"`` keeps the untransformed image in the
objective (without it the protection is weaker when no transformation happens). benchmarks/eot_robustness.py
measures it: on the testbed at eps 0.01 success after Pillow's JPEG-75 goes from 30% (PGD) to 50%; blur sigma 1
is not improved there; at eps 0.05 both are already 100%."""
# iterations of the built-in defenses when ``steps`` is not given (Anti-Forgery: 100 Adam steps, the others PGD-10)
DEFAULT_STEPS = {"anti_forgery": 100}
_BUDGET_TOLERANCE = 1e-4  # round-off of a perturbation computed in another colour space or precision


class DefenseLoadError(ValueError):
    """A defense spec that names nothing loadable, or an object that does not follow the protocol."""


class DefenseOutputError(ValueError):
    """A plug-in defense returned something other than protected images within its budget."""


def builtin_defense(name: str, eps: float = PGD_EPS, steps: int | None = None, seed: int = 0,
                    editors: Sequence[Editor] | None = None) -> Defense:
    """A built-in defense with the field's settings: iterative ones take ``steps`` (default 10; Anti-Forgery 100
    Adam steps) of size ``2 * eps / steps``; Anti-Forgery's ``eps`` is in normalised Lab a/b units. ``pgd_eot`` is
    that PGD with ``eot=PGD_EOT_TRANSFORMS`` and the name ``"pgd_eot"`` (so reports tell it from ``pgd``).

    ``editors`` (``cmua`` only; the others defend one editor at a time): with two or more, the CMUA watermark is
    fitted across all of them, besides the editor the evaluation protects against (each object once); with one or
    none, it is fitted on the evaluation's editor alone, as before."""
    if name not in BUILTIN_DEFENSES:
        raise DefenseLoadError(f"Unknown built-in defense {name!r}; choose one of {', '.join(BUILTIN_DEFENSES)}, "
                               "or name your own as module:attribute or path/to/file.py[:attribute].")
    steps = check_positive_int(steps, "steps") if steps is not None else DEFAULT_STEPS.get(name, 10)
    if name == "pgd":
        return PGD(eps=eps, steps=steps, step_size=2 * eps / steps, seed=seed)
    if name == "pgd_eot":
        defense = PGD(eps=eps, steps=steps, step_size=2 * eps / steps, seed=seed, eot=PGD_EOT_TRANSFORMS)
        defense.name = "pgd_eot"
        return defense
    if name == "ifgsm":
        return IFGSM(eps=eps, steps=steps, step_size=2 * eps / steps, seed=seed)
    if name == "fgsm":
        return FGSM(eps=eps, seed=seed)
    if name == "cmua":
        if editors is not None and (not isinstance(editors, (list, tuple))
                                    or not all(isinstance(e, Editor) for e in editors)):
            raise DefenseLoadError("builtin_defense('cmua', editors=...) needs a list of Editors (see "
                                   f"lora_patch_adapters.load_editor), got {editors!r:.200}.")
        across = list(editors) if editors is not None and len(editors) > 1 else None
        return CMUA(eps=eps, steps=steps, step_size=2 * eps / steps, seed=seed, editors=across)
    return AntiForgery(eps=eps, steps=steps, seed=seed)


class PluginDefense(Defense):
    """A user's protect function or protocol object behind the :class:`Defense` API, with its outputs checked.

    :meth:`Defense.protect` validates the inputs as for every defense; :meth:`_protect` then hands the user's code a
    copy of the images (detached), the editor and the condition(s) exactly as given, and :meth:`_finish` requires a
    float tensor of the input's shape, finite, within ``eps`` of the input (L-inf) after clamping to [-1, 1];
    anything else raises :class:`DefenseOutputError` naming the defense and the fix.
    """

    def __init__(self, protect: Callable[..., torch.Tensor], name: str, eps: float, source: Any = None,
                 spec: str | None = None) -> None:
        self._protect_fn = protect
        self._source = source
        self.name = name
        self.eps = check_eps(eps)
        self.spec = spec

    def _protect(self, x: torch.Tensor, editor: Editor, conditions: list) -> Any:
        """The user's ``protect(x.clone(), editor, condition)``, with ``condition`` exactly as the caller gave it."""
        call = self._current_call()
        condition = call.condition if call is not None else conditions
        return self._protect_fn(x.clone(), editor, condition)

    def _finish(self, x_protected: Any, x: torch.Tensor) -> torch.Tensor:
        """The user's output checked, not clipped (beyond clamping to [-1, 1]): :class:`DefenseOutputError` unless it
        is a float tensor of ``x``'s shape, finite and within ``eps`` of ``x`` (L-inf)."""
        out = x_protected
        if not isinstance(out, torch.Tensor):
            raise DefenseOutputError(f"Defense {self.name!r} returned {type(out).__name__}, not a tensor: protect() "
                                     "must return the protected images [N, 3, H, W] in [-1, 1].")
        if tuple(out.shape) != tuple(x.shape) or not out.dtype.is_floating_point:
            raise DefenseOutputError(f"Defense {self.name!r} returned a {out.dtype} tensor of shape {tuple(out.shape)}"
                                     f" for images of shape {tuple(x.shape)}: return float images of the same shape.")
        out = out.detach().to(x.device, x.dtype)
        if not torch.isfinite(out).all():
            raise DefenseOutputError(f"Defense {self.name!r} returned NaN or Inf values.")
        out = out.clamp(-1.0, 1.0)
        size = (out - x).abs().max().item()
        if size > self.eps + _BUDGET_TOLERANCE:
            raise DefenseOutputError(
                f"Defense {self.name!r} changed pixels by up to {size:.4f} (L-inf on the [-1, 1] scale), over its "
                f"budget eps={self.eps:g}: declare the real budget as an `eps` attribute of the defense (or pass "
                "--eps), or keep the perturbation within it.")
        return out

    def __deepcopy__(self, memo: dict) -> PluginDefense:
        import copy

        source = copy.deepcopy(self._source, memo)
        protect = source.protect if source is not None and callable(getattr(source, "protect", None)) \
            else self._protect_fn
        return type(self)(protect, self.name, self.eps, source=source, spec=self.spec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, eps={self.eps!r}, spec={self.spec!r})"


class UniversalPluginDefense(PluginDefense):
    """A plug-in with ``fit(data, editors)``: one perturbation fitted on data, then applied to any image."""

    def fit(self, data: Any, editors: Editor | list[Editor]) -> UniversalPluginDefense:
        """Forward to the user's ``fit(data, editors)``; ``data`` is an ``(images, labels)`` pair."""
        self._source.fit(data, editors)
        return self


def _import_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise DefenseLoadError(f"Defense file {path!r} not found.")
    name = "lora_patch_user_defense_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DefenseLoadError(f"{path!r} cannot be imported as Python (name it *.py).")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise DefenseLoadError(f"Importing the defense file {path!r} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise DefenseLoadError(f"Cannot import the defense module {name!r} ({exc}); is it on the Python path "
                               "(PYTHONPATH), or did you mean a file path like path/to/file.py:attribute?") from exc


def _default_attribute(module: Any, where: str) -> Any:
    if hasattr(module, "defense"):
        return module.defense
    classes = [v for v in vars(module).values() if inspect.isclass(v) and issubclass(v, Defense)
               and v.__module__ == module.__name__]
    if len(classes) == 1:
        return classes[0]
    if callable(getattr(module, "protect", None)):
        return module.protect
    found = f" (it defines the Defense classes {[c.__name__ for c in classes]})" if classes else ""
    raise DefenseLoadError(f"{where} has no `defense` object, single Defense subclass or `protect` function{found}; "
                           "name the attribute: path/to/file.py:ATTRIBUTE.")


def _build(cls: type, eps: float, seed: int, where: str) -> Any:
    """``cls(**{eps, seed})`` restricted to the keywords its constructor accepts."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in {"eps": eps, "seed": seed}.items() if takes_any or k in parameters}
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise DefenseLoadError(f"Building {where} as {cls.__name__}(**{kwargs}) failed: {type(exc).__name__}: "
                               f"{exc}") from exc


def _positional_arity(fn: Callable) -> tuple[int, int] | None:
    """(required, maximum) positional arguments of ``fn``; None when its signature cannot be read."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is inspect.Parameter.empty for p in positional)
    varargs = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    return required, (10**6 if varargs else len(positional))


def _as_defense(obj: Any, name: str, eps: float, seed: int, where: str, spec: str, depth: int = 0) -> Defense:
    if isinstance(obj, Defense):
        return obj
    if inspect.isclass(obj):
        if not (issubclass(obj, Defense) or callable(getattr(obj, "protect", None))):
            raise DefenseLoadError(f"{where} is the class {obj.__name__}, which has no protect(x, editor, condition) "
                                   "method.")
        return _as_defense(_build(obj, eps, seed, where), name, eps, seed, where, spec, depth)
    if callable(getattr(obj, "protect", None)):
        declared = getattr(obj, "eps", None)
        declared = eps if declared is None else declared
        cls = UniversalPluginDefense if callable(getattr(obj, "fit", None)) else PluginDefense
        return cls(obj.protect, getattr(obj, "name", None) or name, _checked_eps(declared, where), source=obj,
                   spec=spec)
    if callable(obj):
        arity = _positional_arity(obj)
        if arity is not None and arity[0] <= 3 <= arity[1]:
            declared = getattr(obj, "eps", None)
            return PluginDefense(obj, name, _checked_eps(eps if declared is None else declared, where), spec=spec)
        if arity is not None and arity[0] == 0 and depth == 0:
            try:
                made = obj()
            except Exception as exc:
                raise DefenseLoadError(f"Calling the factory {where}() failed: {type(exc).__name__}: {exc}") from exc
            return _as_defense(made, name, eps, seed, where, spec, depth + 1)
    raise DefenseLoadError(
        f"{where} ({type(obj).__name__}) does not follow the defense protocol: use a Defense subclass or instance, "
        "an object with protect(x, editor, condition), a function protect(x, editor, condition), or a function of "
        "no arguments returning one of these.")


def _checked_eps(value: Any, where: str) -> float:
    try:
        return check_eps(value)
    except ValueError as exc:
        raise DefenseLoadError(f"{where}: {exc}") from exc


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``(target, attribute)``; a Windows drive letter's colon is not an attribute separator."""
    target, sep, attribute = spec.rpartition(":")
    if not sep or not attribute or not target or os.sep in attribute or "/" in attribute or \
            (len(target) == 1 and target.isalpha()):
        return spec, None
    return target, attribute


def _looks_like_file(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target or os.path.isfile(target)


def load_defense(spec: str, eps: float = PGD_EPS, seed: int = 0, steps: int | None = None) -> Defense:
    """The defense named by ``spec`` (see the module docstring) as a :class:`Defense`.

    ``eps`` (L-inf, [-1, 1] scale) and ``seed`` are passed to constructors that take them and are the budget of
    plug-ins that declare none; ``steps`` only applies to built-in defenses. Raises :class:`DefenseLoadError` with
    the reason and the fix.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DefenseLoadError(f"A defense spec must be a non-empty string, got {spec!r}.")
    spec = spec.strip()
    if spec in BUILTIN_DEFENSES:
        return builtin_defense(spec, eps=eps, steps=steps, seed=seed)
    target, attribute = _split_spec(spec)
    if _looks_like_file(target):
        module, where = _import_file(target), target
    elif attribute is None:
        raise DefenseLoadError(f"Unknown defense {spec!r}: use a built-in name ({', '.join(BUILTIN_DEFENSES)}), "
                               "module:attribute or path/to/file.py[:attribute].")
    else:
        module, where = _import_module(target), target
    if attribute is None:
        obj = _default_attribute(module, where)
        where = f"{where}:{getattr(obj, '__name__', 'defense')}"
    else:
        obj = module
        for part in attribute.split("."):
            if not hasattr(obj, part):
                public = sorted(k for k in vars(module) if not k.startswith("_"))[:20]
                raise DefenseLoadError(f"{target!r} has no attribute {attribute!r} (it defines {public}).")
            obj = getattr(obj, part)
        where = f"{where}:{attribute}"
    default_name = attribute.split(".")[-1] if attribute else os.path.splitext(os.path.basename(target))[0]
    defense = _as_defense(obj, default_name, eps, seed, where, spec)
    if not getattr(defense, "name", None) or defense.name == Defense.name:
        defense.name = default_name
    return defense
