"""The app's computation (:class:`AppSession`) without a browser: on the testbed editor with tiny patches and a
2-step PGD, every number is recomputed here from the editors' outputs with ``evaluation.metrics``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import lora_patch_adapters as lpa
from lora_patch_adapters.app import COLUMNS, AppSession, prepare_image, to_uint8
from lora_patch_adapters.data import testbed_faces
from lora_patch_adapters.defenses import PGD
from lora_patch_adapters.evaluation import metrics
from lora_patch_adapters.evaluation.watermark import watermark_visibility
from lora_patch_adapters.runs.errors import RunInputError
from lora_patch_adapters.training import Watermark


def save_tiny_patch(directory, kind: str, generator: str = "testbed", seed: int = 1) -> str:
    """A rank-2 patch of the testbed editor with random (non-zero) A and B, so patched outputs differ."""
    editor = lpa.load_editor("testbed")
    torch.manual_seed(seed)
    model = lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(r=2, init_weights="kaiming"))
    metadata = {"generator": generator, "kind": kind}
    if kind == "watermark":
        metadata["watermark"] = Watermark().to_dict()
    return lpa.save_patch(model, directory, metadata=metadata)


@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-patches")
    return save_tiny_patch(root / "bypass", "bypass", seed=1), save_tiny_patch(root / "defensive", "watermark", seed=2)


@pytest.fixture(scope="module")
def session(patches):
    return AppSession(patch=patches[0], defensive=patches[1], n_faces=4, fit_images=2)


def _uint8(t: torch.Tensor) -> np.ndarray:
    return ((t[0].clamp(-1, 1).permute(1, 2, 0).numpy() + 1) / 2 * 255).round().astype(np.uint8)


def test_numbers_and_images_match_an_independent_computation(session, patches):
    result = session.run("Smiling", "pgd", face=1, steps=2)

    base, bypass, defensive = lpa.load_editor("testbed"), lpa.load_editor("testbed"), lpa.load_editor("testbed")
    lpa.load_patch(bypass, patches[0])
    lpa.load_patch(defensive, patches[1])
    faces, labels = testbed_faces(4, seed=0, split="test")
    x = faces[1:2]
    condition = base.conditions(labels[1:2])[4]  # Smiling is the 5th testbed attribute
    x_protected = PGD(eps=0.05, steps=2, step_size=0.05, seed=0).protect(x, base, condition)
    with torch.no_grad():
        outputs = {"clean": base.edit(x, condition), "base": base.edit(x_protected, condition),
                   "bypass": bypass.edit(x_protected, condition), "defensive": defensive.edit(x_protected, condition)}
    outputs = {k: v.clamp(-1, 1) for k, v in outputs.items()}

    assert set(result.images) == {"input", "protected", *COLUMNS}
    assert np.array_equal(result.images["input"], _uint8(x))
    assert np.array_equal(result.images["protected"], _uint8(x_protected))
    for key in COLUMNS:
        assert result.images[key].dtype == np.uint8 and result.images[key].shape == (64, 64, 3)
        assert np.abs(result.images[key].astype(int) - _uint8(outputs[key]).astype(int)).max() <= 1, key
        mse = metrics.mse(outputs[key], outputs["clean"]).item()
        assert result.numbers[key]["mse"] == pytest.approx(mse, rel=1e-4, abs=1e-7), key
        assert result.numbers[key]["psnr_db"] == pytest.approx(metrics.psnr(outputs[key], outputs["clean"]).item(),
                                                               abs=1e-3), key
        assert result.numbers[key]["success"] is (mse > 0.05), key
    assert result.numbers["clean"]["mse"] == 0 and result.numbers["clean"]["success"] is False
    # the testbed is fragile: a 2-step PGD already disrupts the base edit; the random tiny patches change outputs
    assert result.numbers["base"]["success"] is True
    assert result.numbers["bypass"]["mse"] != result.numbers["base"]["mse"]
    visible = watermark_visibility(outputs["defensive"], outputs["clean"], Watermark())["visible"][0].item()
    assert result.numbers["defensive"]["warning_visible"] is bool(visible)
    assert result.numbers["protected"]["linf"] == pytest.approx((x_protected - x).abs().max().item(), abs=1e-6)
    assert result.numbers["protected"]["linf"] <= 0.05 + 1e-6
    for key in ("base", "bypass", "defensive"):
        assert f"MSE {result.numbers[key]['mse']:.4f}" in result.notes[key] and "PSNR" in result.notes[key]
    assert "warning visible" in result.notes["defensive"]
    assert "testbed face 2" in result.description and "Smiling" in result.description


def test_columns_without_a_patch_say_which_flag_fills_them():
    session = AppSession(n_faces=2)
    result = session.run(0, "fgsm", face=0)
    assert result.images["bypass"] is None and result.images["defensive"] is None
    assert "--patch DIR" in result.notes["bypass"] and "--defensive DIR" in result.notes["defensive"]
    assert "bypass" not in result.numbers and "defensive" not in result.numbers
    assert result.images["base"] is not None and result.numbers["base"]["mse"] > 0
    assert "Bypass patch: none" in session.describe() and "Defensive patch: none" in session.describe()
    hinted = AppSession(n_faces=1, missing={"bypass": "set LORA_PATCH_BYPASS"})
    assert hinted.run(0, "fgsm", face=0).notes["bypass"] == 'set LORA_PATCH_BYPASS'


def test_a_universal_defense_is_fitted_once_on_training_faces(session):
    first = session.defense("cmua", steps=1)
    assert first.perturbation is not None and first.perturbation.shape == (1, 3, 64, 64)
    assert session.defense("cmua", steps=1) is first  # cached
    assert session.defense("cmua", eps=0.03, steps=1) is not first
    result = session.run("Black_Hair", "cmua", face=0, steps=1)
    x = session.faces[0:1]
    expected = (x + first.perturbation).clamp(-1, 1)
    assert np.array_equal(result.images["protected"], _uint8(expected))


def test_the_built_in_defenses_are_offered(session):
    assert {"pgd", "ifgsm", "fgsm", "cmua", "anti_forgery"} <= set(session.defenses)
    assert session.targets == list(lpa.load_editor("testbed").attribute_names)


def test_an_upload_is_centre_cropped_resized_and_scaled(tmp_path):
    array = np.zeros((80, 120, 3), np.uint8)
    array[:, :, 0] = 255  # red margins left and right ...
    array[:, 20:100] = (0, 0, 255)  # ... around a blue 80x80 centre
    expected = torch.tensor([-1.0, -1.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 64, 64)
    for image in (array, Image.fromarray(array)):
        x = prepare_image(image, 64)
        assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
        assert torch.allclose(x, expected, atol=1e-6)
    path = tmp_path / "face.png"
    Image.fromarray(array).save(path)
    assert torch.allclose(prepare_image(str(path), 64), expected, atol=1e-6)
    grey = prepare_image(np.full((10, 10), 255, np.uint8), 8)
    assert torch.allclose(grey, torch.ones(1, 3, 8, 8))


def test_an_uploaded_face_runs_with_no_source_attributes(session, tmp_path):
    face = to_uint8(session.faces[2])
    path = tmp_path / "upload.png"
    Image.fromarray(face).save(path)
    result = session.run("Eyeglasses", "fgsm", face=None, upload=str(path))
    assert np.array_equal(result.images["input"], face)  # already 64x64: unchanged
    assert "uploaded image" in result.description


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8), 3.0])
def test_bad_uploads_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        prepare_image(bad, 64)


def test_bad_choices_are_one_line_errors(session):
    with pytest.raises(ValueError, match="unknown target 'Bald'"):
        session.run("Bald", "pgd")
    with pytest.raises(ValueError, match="unknown defense 'nope'"):
        session.run(0, "nope")
    with pytest.raises(ValueError, match="face must be an index"):
        session.run(0, "pgd", face=4)
    with pytest.raises(ValueError, match="target must be"):
        session.run(5, "pgd")


def test_patch_directories_are_checked_before_anything_runs(tmp_path, patches):
    with pytest.raises(RunInputError, match="--patch: patch directory .* not found"):
        AppSession(patch=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunInputError, match="--defensive: .* is not a patch directory"):
        AppSession(defensive=str(tmp_path / "empty"))
    foreign = save_tiny_patch(tmp_path / "foreign", "bypass", generator="stargan")
    with pytest.raises(RunInputError, match="pass --generator stargan"):
        AppSession(patch=foreign)
    with pytest.raises(RunInputError, match="needs --checkpoint"):
        AppSession(generator="stargan")
    with pytest.warns(UserWarning, match="--patch holds a watermark patch"):
        AppSession(patch=patches[1], n_faces=1)


def test_to_uint8_clamps_and_rounds():
    image = torch.tensor([[-2.0, -1.0], [0.0, 1.5]]).expand(1, 3, 2, 2)
    out = to_uint8(image)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[:, :, 0].tolist() == [[0, 0], [128, 255]]  # 0 -> 127.5 rounds half to even: 128
