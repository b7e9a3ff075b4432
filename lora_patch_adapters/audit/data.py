"""Which images an audit uses: the attacker's (the first rows), the defender's shadow patches' (the next rows), the
universal defenses' fitting set and the held-out evaluation images (CelebA: from the paper's test rows)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Subset

from ..data import is_hf_data, testbed_faces
from ..generators import Editor
from ..runs.errors import RunInputError
from ..runs.inputs import Inputs, stack

PAPER_TEST_START = 29000
"""The first CelebA row of the paper's test images."""
PAPER_TRAIN_IMAGES = 1000
"""The paper's training images are CelebA's first 1000 rows."""


def audit_data(inputs: Inputs, editor: Editor, max_images: int, shadow_images: int, n_eval: int) -> dict[str, Any]:
    """``{"train", "eval", "fit", "shadow", "description"}``: attacker, evaluation, universal-fit and shadow data."""
    seed = inputs.seed
    if inputs.data is None:
        return {"train": testbed_faces(max_images, seed=seed, split="train"),
                "eval": testbed_faces(n_eval, seed=seed, split="test"),
                "fit": testbed_faces(n_eval, seed=seed + 1, split="test"),
                "shadow": testbed_faces(shadow_images, seed=seed + 1, split="train"),
                "description": f"procedural testbed faces (seed {seed}; attacker: train split, evaluation: "
                               f"{n_eval} test-split faces)"}
    if is_hf_data(inputs.data) and inputs.data_split is None:  # the dataset's own train and test splits
        return _hub_audit_data(inputs, editor, max_images, shadow_images, n_eval)
    full = inputs.celeba(editor, None)
    test_start = PAPER_TEST_START
    if max_images + shadow_images > test_start:
        raise RunInputError(f"the budgets and shadow patches need {max_images + shadow_images} CelebA training "
                            f"images; only the first {test_start} rows are outside the paper's test rows")
    if len(full) < test_start + n_eval:
        raise RunInputError(f"the CelebA attribute file has {len(full)} rows: too short for {n_eval} evaluation "
                            f"images from the paper's test rows (from row {test_start})")
    test = stack(Subset(full, range(test_start, test_start + n_eval)))
    return {"train": Subset(full, range(max_images)), "eval": test,
            "fit": stack(Subset(full, range(n_eval))),
            "shadow": Subset(full, range(max_images, max_images + shadow_images)),
            "description": f"CelebA from {inputs.data} (attacker: the first {max_images} images; shadow patches: "
                           f"the next {shadow_images}; evaluation: {n_eval} images from row {test_start})"}


def _hub_audit_data(inputs: Inputs, editor: Editor, max_images: int, shadow_images: int,
                    n_eval: int) -> dict[str, Any]:
    """``--data hf:...``: attacker, shadow and fitting images from the dataset's train split, evaluation images from
    its test (or validation) split."""
    train, test = inputs.celeba(editor, "paper-train"), inputs.celeba(editor, "paper-test")
    need = max(max_images + shadow_images, n_eval)
    if len(train) < need:
        raise RunInputError(f"the budgets and shadow patches need {need} training images; the {train.split!r} "
                            f"split of {inputs.data} has {len(train)}")
    if len(test) < n_eval:
        raise RunInputError(f"--eval-images {n_eval}: the {test.split!r} split of {inputs.data} has {len(test)} "
                            f"images; pass --eval-images {len(test)} or fewer")
    return {"train": Subset(train, range(max_images)), "eval": stack(Subset(test, range(n_eval))),
            "fit": stack(Subset(train, range(n_eval))),
            "shadow": Subset(train, range(max_images, max_images + shadow_images)),
            "description": f"{inputs.data} (attacker: the first {max_images} images of its {train.split!r} split; "
                           f"shadow patches: the next {shadow_images}; evaluation: the first {n_eval} of its "
                           f"{test.split!r} split)"}


def defensive_audit_data(inputs: Inputs, editor: Editor, max_images: int, n_eval: int) -> dict[str, Any]:
    """``{"attacker", "eval", "description"}`` of a removal audit: the attacker's photos (images only; testbed: train
    split faces of another seed than the defender's; CelebA: the rows after the paper's 1000 training images) and
    held-out (images, labels) for the evaluation (testbed: test split; CelebA: the paper's test rows)."""
    seed = inputs.seed
    if inputs.data is None:
        attacker, _ = testbed_faces(max_images, seed=seed + 1, split="train")
        return {"attacker": attacker, "eval": testbed_faces(n_eval, seed=seed, split="test"),
                "description": f"procedural testbed faces (attacker: {max_images} train-split faces of seed "
                               f"{seed + 1}; evaluation: {n_eval} test-split faces of seed {seed})"}
    if is_hf_data(inputs.data) and inputs.data_split is None:
        train, test = inputs.celeba(editor, "paper-train"), inputs.celeba(editor, "paper-test")
        if len(train) < max_images or len(test) < n_eval:
            raise RunInputError(f"the removal audit needs {max_images} attacker images and {n_eval} evaluation "
                                f"images; {inputs.data} has {len(train)} and {len(test)}")
        return {"attacker": stack(Subset(train, range(max_images)))[0], "eval": stack(Subset(test, range(n_eval))),
                "description": f"{inputs.data} (attacker: the first {max_images} images of its train split; "
                               f"evaluation: the first {n_eval} of its test split)"}
    full = inputs.celeba(editor, None)
    first = PAPER_TRAIN_IMAGES
    if first + max_images > PAPER_TEST_START or len(full) < PAPER_TEST_START + n_eval:
        raise RunInputError(f"the removal audit reads attacker photos from CelebA rows {first}.."
                            f"{first + max_images - 1} and {n_eval} evaluation images from row {PAPER_TEST_START}; "
                            f"the attribute file has {len(full)} rows")
    return {"attacker": stack(Subset(full, range(first, first + max_images)))[0],
            "eval": stack(Subset(full, range(PAPER_TEST_START, PAPER_TEST_START + n_eval))),
            "description": f"CelebA from {inputs.data} (attacker: rows {first}..{first + max_images - 1}, after the "
                           f"paper's training images; evaluation: {n_eval} images from row {PAPER_TEST_START})"}
