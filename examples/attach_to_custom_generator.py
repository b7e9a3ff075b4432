"""Attach a gated LoRA patch to your own generator.

Any ``nn.Module`` becomes an Editor with ``lora_patch_adapters.wrap``: tell it how to run an edit
(``edit_fn(module, x, condition)``) and, optionally, how to build target conditions from attribute labels. The
patch then goes in with ``get_peft_model(editor.generator, config)``, in place, so ``editor.edit`` runs the patched
network. Runs on CPU in a second.

    python examples/attach_to_custom_generator.py
"""

from __future__ import annotations

import torch
from torch import nn

import lora_patch_adapters as lpa


class MyGenerator(nn.Module):
    """A toy image-to-image generator conditioned on a style vector: forward(image, style) -> image."""

    def __init__(self, style_dim: int = 4, width: int = 16) -> None:
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(3, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 1, 1))
        self.style = nn.Linear(style_dim, width)
        self.decode = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(width, 3, 4, 2, 1), nn.Tanh())

    def forward(self, image: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        h = self.encode(image) + self.style(style)[:, :, None, None]
        return self.decode(h)


def main() -> None:
    torch.manual_seed(0)
    editor = lpa.wrap(
        MyGenerator(),
        edit_fn=lambda module, x, condition: module(x, condition),
        conditions_fn=lambda labels: [1 - 2 * labels],  # one edit: flip every attribute, as a +-1 style
        attribute_names=("a", "b", "c", "d"),
        name="my-generator",
    )
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    (condition,) = editor.conditions(torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0]]))
    with torch.no_grad():
        before = editor.edit(x, condition)

    model = lpa.get_peft_model(editor.generator, lpa.LoraPatchConfig(include_linear=True, init_weights="kaiming"))
    print(editor)
    print("patched layers:", model.peft_config["default"].target_modules)
    model.print_trainable_parameters()
    with torch.no_grad():
        after = editor.edit(x, condition)
        with model.disable_adapter():
            unpatched = editor.edit(x, condition)
    print(f"mean |patched - original| = {(after - before).abs().mean():.4f}; "
          f"with the adapter disabled: {(unpatched - before).abs().max():.1e}")


if __name__ == "__main__":
    main()
