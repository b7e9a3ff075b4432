"""wrap(): any nn.Module becomes an Editor that patches attach to."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lora_patch_adapters as lpa
from lora_patch_adapters.generators import CustomEditor, wrap


class TwoInputNet(nn.Module):
    """A user generator with its own calling convention: forward(image, style_vector)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1))
        self.style = nn.Linear(4, 8)

    def forward(self, image, style):
        h = self.body[0](image) + self.style(style)[:, :, None, None]
        return torch.tanh(self.body[3](self.body[2](self.body[1](h))))


def _edit(module, x, condition):
    return module(x, condition["style"])


def test_wrap_runs_edits_and_builds_conditions():
    net = TwoInputNet()
    editor = wrap(net, _edit, conditions_fn=lambda labels: [{"style": labels * 2 - 1}], attribute_names=list("abcd"))
    assert isinstance(editor, CustomEditor) and isinstance(editor, lpa.Editor) and editor.generator is net
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    labels = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]])
    (cond,) = editor.conditions(labels)
    with torch.no_grad():
        y = editor.edit(x, cond)
        assert torch.equal(y, net.eval()(x, labels * 2 - 1))
    assert not net.training  # default mode is eval
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        editor.conditions(torch.zeros(2, 3))


def test_patch_attaches_to_a_custom_generator():
    net = TwoInputNet()
    editor = wrap(net, _edit)
    x, cond = torch.rand(2, 3, 16, 16) * 2 - 1, {"style": torch.randn(2, 4)}
    with torch.no_grad():
        before = editor.edit(x, cond)
    model = lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(include_linear=True, init_weights="kaiming"))
    names = model.peft_config["default"].target_modules
    assert names == ["body.0", "body.3", "style"]
    with torch.no_grad():
        after = editor.edit(x, cond)
        assert not torch.allclose(after, before)
        with model.disable_adapter():
            assert torch.equal(editor.edit(x, cond), before)


def test_default_call_and_mode():
    conv = nn.Conv2d(3, 3, 3, padding=1)
    editor = wrap(conv, mode="train", name="mine")
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(editor.edit(x, None), conv(x)) and conv.training
    assert "mine" in repr(editor)


def test_wrap_errors():
    with pytest.raises(TypeError, match="needs an nn.Module"):
        wrap(lambda x: x)
    with pytest.raises(TypeError, match="edit_fn must be callable"):
        wrap(nn.Identity(), edit_fn=3)
    with pytest.raises(ValueError, match="mode must be 'train' or 'eval'"):
        wrap(nn.Identity(), mode="inference")
    editor = wrap(nn.Identity(), edit_fn=lambda m, x, c: x.mean())
    with pytest.raises(ValueError, match=r"must return images \[N=1, C, H, W\], got \(\)"):
        editor.edit(torch.zeros(1, 3, 4, 4), None)
    with pytest.raises(ValueError, match="without conditions_fn"):
        wrap(nn.Identity()).conditions(torch.zeros(1, 2))
