"""Fuzz load_patch with malformed patch directories derived from one valid patch (deterministic, seed 1234).

Every mutation must be refused with the expected :class:`PatchLoadError` subclass, a one-line message naming the
file (and the tensor, for per-tensor mutations), and the target model -- a plain module, an Editor or a PeftModel
that already carries another patch -- and every file of the test's folder must be exactly as before. Per-kind counts
are printed by the last test (``pytest -q -s``).
"""

from __future__ import annotations

import collections
import copy
import json
import os
import random
import shutil
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import save_file

from lora_patch_adapters import LoraPatchConfig, get_peft_model
from lora_patch_adapters.generators import StarGANEditor
from lora_patch_adapters.patches import (
    FingerprintMismatchError,
    MissingFingerprintError,
    NonFinitePatchError,
    PatchConfigError,
    PatchFileError,
    PatchLoadError,
    PatchShapeError,
    UnsafePatchFileError,
    load_patch,
    save_patch,
)
from tests.helpers import ToyEditor

CONFIG, WEIGHTS, SIDECAR = "adapter_config.json", "adapter_model.safetensors", "lora_patch.json"
N_TENSORS = 30  # ToyEditor: 10 conv / transposed conv layers x (A, B, gate logit)
TARGET_KINDS = ("module", "editor", "peft")


@dataclass
class Case:
    kind: str
    error: type[PatchLoadError]
    mutation: tuple  # (operation, *arguments), applied by _mutate
    mentions: str = WEIGHTS  # a file name the message must contain
    tensor: int | None = None  # index of the tensor the message must name
    trust_pickle: bool = False
    target: str = "module"
    id: str = field(default="", compare=False)


def _cases() -> list[Case]:
    rng = random.Random(1234)
    cases: list[Case] = []

    def add(kind, error, *mutation, mentions=WEIGHTS, tensor=None, trust_pickle=False):
        cases.append(Case(kind, error, tuple(mutation), mentions, tensor, trust_pickle))

    # truncated weights file: empty, inside the 8-byte header length, inside the header, inside the data
    for n in range(10):
        add("truncated", PatchFileError, "truncate", "start", n)
    for _ in range(6):
        add("truncated", PatchFileError, "truncate", "header", rng.random())
    for _ in range(9):
        add("truncated", PatchFileError, "truncate", "data", rng.random())
    add("truncated", PatchFileError, "truncate", "end", -1)
    # header length field
    for value in ("+1", "-1", "size", "2size", 2**63, 2**64 - 1, 0, 1):
        add("header_length", PatchFileError, "header_length", value)
    # header bytes: JSON structure, garbage, not an object, invalid UTF-8
    for _ in range(10):
        add("header_corrupt", PatchFileError, "header_byte", rng.random(), rng.choice([b"#", b"\x00", b"\xff", b"\\"]))
    for _ in range(3):
        add("header_corrupt", PatchFileError, "header_garbage", rng.randrange(2**32))
    for text in ("[]", '"x"', "1", "{}", "null"):
        add("header_corrupt", PatchFileError, "header_replace", text)
    # per tensor: shape, dtype, missing, non-finite
    dtypes = ["int8", "uint8", "int16", "int32", "int64", "bool", "float8_e4m3fn", "float8_e5m2", "complex64"]
    for i in range(N_TENSORS):
        add("wrong_shape", PatchShapeError, "reshape", i, rng.randrange(3), tensor=i)
        add("wrong_dtype", PatchShapeError, "dtype", i, rng.choice(dtypes), tensor=i)
        add("missing_tensor", PatchShapeError, "drop", i, tensor=i)
        add("non_finite", NonFinitePatchError, "poison", i, rng.choice(["nan", "inf", "-inf"]), rng.random(),
            tensor=i)
    for i in rng.sample(range(N_TENSORS), 3):
        add("non_finite", NonFinitePatchError, "overflow", i, tensor=i)
    # extra or renamed tensors (base weights smuggled in, unknown layers, adapter-named keys)
    for key in ("base_model.model.net.main.0.weight", "base_model.model.net.main.0.bias",
                "base_model.model.net.main.1.lora_patch_A.weight",
                "base_model.model.net.main.0.lora_patch_A.default.weight",
                "base_model.model.net.main.0.lora_patch_C.weight", "net.main.0.lora_patch_A.weight", "", "x" * 300):
        add("extra_tensor", PatchShapeError, "extra", key)
    for i in rng.sample(range(N_TENSORS), 6):
        add("renamed_tensor", PatchShapeError, "rename", i)
    # config values
    bad_values: list[tuple[str, Any]] = [
        ("r", 0), ("r", -1), ("r", "4"), ("r", 4.5), ("r", True), ("r", None),
        ("lora_alpha", "2.0"), ("lora_alpha", "abc"), ("lora_alpha", -1), ("lora_alpha", 0), ("lora_alpha", None),
        ("lora_alpha", True), ("lora_alpha", []), ("gate_init", "x"), ("gate_init", None),
        ("gate", "unknown"), ("gate", ""), ("gate", 5), ("gate", None), ("gate", "Basic"),
        ("scaling", "cube"), ("init_weights", "gaussian"), ("forward_mode", "turbo"), ("include_linear", "yes"),
        ("target_modules", ["nope"]), ("target_modules", ["net.main.0", "does.not.exist"]),
        ("target_modules", ["net.main.1"]), ("target_modules", ["net.main.2"]), ("target_modules", ["net"]),
        ("target_modules", []), ("target_modules", "("), ("target_modules", "nothing_matches_.*"),
        ("target_modules", r"net\.main\.1"), ("target_modules", [1]), ("target_modules", 5),
        ("exclude_modules", 5), ("modules_to_save", "net"),
        ("base_fingerprint", "md5:abc"), ("base_fingerprint", 7),
        ("peft_type", "LORA"), ("peft_type", "PROMPT_TUNING"), ("peft_type", "NOPE"), ("peft_type", None),
        ("peft_type", 5), ("peft_type", "__delete__"),
    ]
    for key, value in bad_values:
        add("config_value", PatchConfigError, "config", key, value, mentions=CONFIG)
    for raw in (b'{"peft_type": "LORA_PATCH", "r": ', b"", b"[]", b'"x"', b"1", b"null", b"\xff\xfe{}",
                b'{"peft_type": "LORA_PATCH", "lora_alpha": NaN}', b'{"peft_type": "LORA_PATCH", "r": Infinity}'):
        add("config_file", PatchConfigError, "config_raw", raw, mentions=CONFIG)
    add("config_file", PatchFileError, "remove", CONFIG, mentions=CONFIG)
    add("config_file", PatchFileError, "to_directory", CONFIG, mentions=CONFIG)
    # valid but edited configs that no longer match the weights or the base
    for key, value in (("r", 8), ("r", 2), ("gate", "none"), ("gate", "input_adaptive"),
                       ("gate", "input_adaptive_channel")):
        add("config_mismatch", PatchShapeError, "config", key, value)
    for targets in (["net.main.0"], ["net.main.0", "net.main.3"]):
        add("config_mismatch", FingerprintMismatchError, "config", "target_modules", targets, mentions=CONFIG)
    # fingerprints: consistently wrong, or conflicting between the three files
    for _ in range(3):
        add("fingerprint", FingerprintMismatchError, "fingerprint", "all", rng.getrandbits(256), mentions=CONFIG)
    for where in (CONFIG, SIDECAR, WEIGHTS):
        add("fingerprint", FingerprintMismatchError, "fingerprint", where, rng.getrandbits(256), mentions=where)
    # the provenance sidecar
    for raw in (b"{", b"[]", b'{"format_version": 99}', b'{"format_version": "1"}',
                b'{"base_fingerprint": "sha256:xyz"}'):
        add("sidecar", PatchFileError, "sidecar_raw", raw, mentions=SIDECAR)
    add("sidecar", PatchFileError, "to_directory", SIDECAR, mentions=SIDECAR)
    # pickles instead of safetensors
    for name in ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth", "adapter_model.pkl",
                 "adapter_model.ckpt", "weights.bin"):
        add("pickle", UnsafePatchFileError, "pickle", name, mentions=name)
    for style in ("zip", "legacy"):
        add("pickle", UnsafePatchFileError, "pickle_code", style, mentions="adapter_model.bin", trust_pickle=True)
    add("pickle_trusted", PatchFileError, "pickle_truncated", mentions="adapter_model.bin", trust_pickle=True)
    add("pickle_trusted", PatchFileError, "pickle_not_dict", mentions="adapter_model.bin", trust_pickle=True)
    add("pickle_trusted", PatchFileError, "pickle", "weights.pt", mentions="weights.pt", trust_pickle=True)
    add("pickle_trusted", NonFinitePatchError, "pickle_nan", mentions="adapter_model.bin", trust_pickle=True)
    add("pickle_trusted", PatchShapeError, "pickle_extra", mentions="adapter_model.bin", trust_pickle=True)
    # no weights at all
    add("missing_weights", PatchFileError, "remove", WEIGHTS)
    add("missing_weights", PatchFileError, "to_directory", WEIGHTS)
    # configs bounded by the target layers before anything is built (ToyEditor: the widest layer allows r <= 32), a
    # scale of at most 1e3, no task_type; a patch without any base fingerprint (refused unless opted in)
    for key, value in (("r", 33), ("r", 10**9), ("lora_alpha", 1e30), ("lora_alpha", 2000.5),
                       ("task_type", "CAUSAL_LM"), ("task_type", "FEATURE_EXTRACTION")):
        add("config_bounds", PatchConfigError, "config", key, value, mentions=CONFIG)
    add("no_fingerprint", MissingFingerprintError, "no_fingerprint", mentions=CONFIG)

    counters: collections.Counter = collections.Counter()
    for number, case in enumerate(cases):
        case.target = TARGET_KINDS[number % len(TARGET_KINDS)]
        case.id = f"{case.kind}-{counters[case.kind]:02d}-{case.target}"
        counters[case.kind] += 1
    return cases


CASES = _cases()
RESULTS: collections.Counter = collections.Counter()


# --------------------------------------------------------------------------------------------------- reference
@dataclass
class Target:
    obj: Any  # what load_patch receives
    module: torch.nn.Module  # what must stay unchanged
    state: dict
    text: str
    grads: list
    modes: list
    attributes: set


def _snapshot(obj, module) -> Target:
    return Target(
        obj, module, {k: v.clone() for k, v in module.state_dict().items()}, str(module),
        [p.requires_grad for p in module.parameters()], [m.training for m in module.modules()], set(module.__dict__),
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.manual_seed(0)
    base = ToyEditor()
    pristine = copy.deepcopy(base)
    model = get_peft_model(base, LoraPatchConfig(init_weights="kaiming", r=4))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_patch_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    valid = save_patch(model, tmp_path_factory.mktemp("fuzz") / "valid")
    with safe_open(os.path.join(valid, WEIGHTS), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert len(tensors) == N_TENSORS
    host = get_peft_model(copy.deepcopy(pristine), LoraPatchConfig(r=2, target_modules=["net.main.0"]),
                          adapter_name="resident")
    editor = StarGANEditor(copy.deepcopy(pristine))
    module = copy.deepcopy(pristine)
    targets = {"module": _snapshot(module, module), "editor": _snapshot(editor, editor.generator),
               "peft": _snapshot(host, host)}
    load_patch(copy.deepcopy(pristine), valid)  # the unmutated patch loads
    return {"dir": valid, "tensors": tensors, "names": sorted(tensors), "metadata": metadata, "targets": targets}


# ---------------------------------------------------------------------------------------------------- mutations
def _weights_bytes(ref) -> bytes:
    return (Path(ref["dir"]) / WEIGHTS).read_bytes()


def _header_span(data: bytes) -> tuple[int, int]:
    (length,) = struct.unpack("<Q", data[:8])
    return 8, 8 + length


def _structural_positions(header: bytes) -> list[int]:
    """Offsets of JSON structure (brackets, colons, commas, string quotes) outside string contents."""
    positions, in_string, escaped = [], False, False
    for i, byte in enumerate(header):
        char = chr(byte)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                positions.append(i)
        elif char == '"':
            in_string = True
            positions.append(i)
        elif char in "{}[]:,":
            positions.append(i)
    return positions


def _save_weights(path: Path, tensors: dict, ref) -> None:
    save_file(tensors, path / WEIGHTS, metadata=ref["metadata"])


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _mutate(case: Case, path: Path, ref) -> None:
    op, *args = case.mutation
    tensors = dict(ref["tensors"])
    names = ref["names"]
    weights = path / WEIGHTS
    if op == "truncate":
        data = _weights_bytes(ref)
        start, end = _header_span(data)
        where, amount = args
        cut = {
            "start": lambda: amount,
            "header": lambda: start + int(amount * (end - start)),
            "data": lambda: end + int(amount * (len(data) - end - 1)),
            "end": lambda: len(data) - 1,
        }[where]()
        weights.write_bytes(data[:cut])
    elif op == "header_length":
        data = _weights_bytes(ref)
        (length,) = struct.unpack("<Q", data[:8])
        value = args[0]
        value = {"+1": length + 1, "-1": length - 1, "size": len(data), "2size": 2 * len(data)}.get(value, value)
        weights.write_bytes(struct.pack("<Q", value) + data[8:])
    elif op == "header_byte":
        data = bytearray(_weights_bytes(ref))
        start, end = _header_span(data)
        positions = _structural_positions(bytes(data[start:end]))
        data[start + positions[int(args[0] * len(positions))]] = args[1][0]
        weights.write_bytes(bytes(data))
    elif op == "header_garbage":
        data = _weights_bytes(ref)
        start, end = _header_span(data)
        garbage = random.Random(args[0]).randbytes(end - start)
        weights.write_bytes(data[:start] + garbage + data[end:])
    elif op == "header_replace":
        data = _weights_bytes(ref)
        start, end = _header_span(data)
        weights.write_bytes(data[:start] + args[0].encode().ljust(end - start) + data[end:])
    elif op == "reshape":
        name = names[args[0]]
        shape = list(tensors[name].shape)
        if not shape:
            shape = [1]
        elif args[1] == 0:
            shape[0] += 1
        elif args[1] == 1:
            shape[-1] = shape[-1] + 1 if shape[-1] == 1 else shape[-1] - 1
        else:
            shape = [*shape, 1]
        tensors[name] = torch.randn(shape)
        _save_weights(path, tensors, ref)
    elif op == "dtype":
        name = names[args[0]]
        tensors[name] = tensors[name].to(getattr(torch, args[1]))
        _save_weights(path, tensors, ref)
    elif op == "drop":
        del tensors[names[args[0]]]
        _save_weights(path, tensors, ref)
    elif op == "poison":
        name = names[args[0]]
        value = tensors[name].clone()
        value.view(-1)[int(args[2] * value.numel())] = float(args[1])
        tensors[name] = value
        _save_weights(path, tensors, ref)
    elif op == "overflow":
        name = names[args[0]]
        value = tensors[name].double()
        value.view(-1)[0] = 1e300
        tensors[name] = value
        _save_weights(path, tensors, ref)
    elif op == "extra":
        tensors[args[0]] = torch.zeros(8, 3, 7, 7)
        _save_weights(path, tensors, ref)
    elif op == "rename":
        name = names[args[0]]
        tensors[name.replace("lora_patch_", "lora_patch_x")] = tensors.pop(name)
        _save_weights(path, tensors, ref)
    elif op == "config":
        key, value = args

        def edit(data):
            if value == "__delete__":
                del data[key]
            else:
                data[key] = value

        _edit_json(path / CONFIG, edit)
    elif op == "config_raw":
        (path / CONFIG).write_bytes(args[0])
    elif op == "remove":
        os.remove(path / args[0])
    elif op == "to_directory":
        os.remove(path / args[0])
        (path / args[0]).mkdir()
    elif op == "fingerprint":
        where, bits = args
        fake = f"sha256:{bits:064x}"
        if where in ("all", CONFIG):
            _edit_json(path / CONFIG, lambda data: data.update(base_fingerprint=fake))
        if where in ("all", SIDECAR):
            _edit_json(path / SIDECAR, lambda data: data.update(base_fingerprint=fake))
        if where in ("all", WEIGHTS):
            save_file(tensors, weights, metadata={**ref["metadata"], "base_fingerprint": fake})
    elif op == "no_fingerprint":  # as saved by plain save_pretrained of older versions
        _edit_json(path / CONFIG, lambda data: data.update(base_fingerprint=None))
        os.remove(path / SIDECAR)
        save_file(tensors, weights, metadata={"format": "pt"})
    elif op == "sidecar_raw":
        (path / SIDECAR).write_bytes(args[0])
    elif op.startswith("pickle"):
        os.remove(weights)
        target = path / (args[0] if op == "pickle" else "adapter_model.bin")
        if op == "pickle":
            torch.save(tensors, target)
        elif op == "pickle_code":
            marker = path / "code-ran"
            payload = {**tensors, "x": _Payload(str(marker))}
            if args[0] == "zip":
                torch.save(payload, target)
            else:
                torch.save(payload, target, _use_new_zipfile_serialization=False)
        elif op == "pickle_truncated":
            torch.save(tensors, target)
            target.write_bytes(target.read_bytes()[:100])
        elif op == "pickle_not_dict":
            torch.save(list(tensors.values()), target)
        elif op == "pickle_nan":
            torch.save({**tensors, names[0]: torch.full_like(tensors[names[0]], float("nan"))}, target)
        elif op == "pickle_extra":
            torch.save({**tensors, "base_model.model.net.main.0.weight": torch.zeros(8, 3, 7, 7)}, target)
    else:  # pragma: no cover - a typo in the case table
        raise AssertionError(op)


class _Payload:
    """A pickle that would create a file when unpickled with plain pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# -------------------------------------------------------------------------------------------------------- tests
def _files(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: folders as None, files as their bytes."""
    found: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            found[os.path.relpath(os.path.join(folder, name), root)] = Path(folder, name).read_bytes()
    return found


def _assert_unchanged(target: Target) -> None:
    module = target.module
    state = module.state_dict()
    assert set(state) == set(target.state)
    assert all(torch.equal(state[k], v) for k, v in target.state.items())
    assert str(module) == target.text
    assert [p.requires_grad for p in module.parameters()] == target.grads
    assert [m.training for m in module.modules()] == target.modes
    assert set(module.__dict__) == target.attributes
    if isinstance(target.obj, PeftModel):
        assert set(target.obj.peft_config) == {"resident"} and target.obj.active_adapter == "resident"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_patch_is_refused_and_model_untouched(case, reference, tmp_path):
    path = tmp_path / "patch"
    shutil.copytree(reference["dir"], path)
    _mutate(case, path, reference)
    target = reference["targets"][case.target]
    files_before = _files(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. torch's pickle-protocol notes
        with pytest.raises(PatchLoadError) as info:
            load_patch(target.obj, path, trust_pickle=case.trust_pickle)
    assert _files(tmp_path) == files_before  # nothing written, moved or removed beside or inside the patch
    assert type(info.value) is case.error, f"{case.id}: {type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "\n" not in message and len(message) < 800, message
    assert case.mentions in message, message
    if case.tensor is not None:
        assert reference["names"][case.tensor] in message, message
    assert not (path / "code-ran").exists()
    _assert_unchanged(target)
    RESULTS[case.kind] += 1


def test_fuzz_summary():
    """Per-kind counts of the generated cases (and of those verified in this run); printed with ``-s``."""
    planned = collections.Counter(case.kind for case in CASES)
    width = max(len(kind) for kind in planned)
    lines = [f"{kind:<{width}}  {planned[kind]:>3} cases, {RESULTS[kind]:>3} refused as expected" for kind in planned]
    print("\nload_patch fuzz (seed 1234):\n" + "\n".join(lines) + f"\n{'total':<{width}}  {len(CASES):>3}")
    assert len(CASES) >= 200
    assert len({case.id for case in CASES}) == len(CASES)
    assert set(planned) >= {"truncated", "header_length", "header_corrupt", "wrong_shape", "wrong_dtype",
                            "missing_tensor", "extra_tensor", "non_finite", "config_value", "config_file",
                            "fingerprint", "pickle", "config_bounds", "no_fingerprint"}
