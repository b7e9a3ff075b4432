"""The embedded testbed: procedural faces with controllable attributes and paired ground truth.

Every face is an *identity* (face shape, skin tone, position, tilt, gaze, background, clothing; drawn from a seeded
generator) rendered under an attribute vector over :data:`TESTBED_ATTRIBUTES`: a 3-way hair colour plus eyeglasses
and a smile. Rendering the same identity under other attributes gives the exact edited image, so edits can be scored
against ground truth. Images are anti-aliased analytic shapes, rendered at any size (64 and 128 are the usual ones),
as float tensors [N, 3, H, W] in [-1, 1].

Train and test identities come from separate random streams (``split``), and a set for ``(split, seed)`` is a
prefix-stable sequence: the first 10 faces of ``n=100`` are the 10 faces of ``n=10``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ..attributes import TESTBED_ATTRIBUTES

HAIR_COLOURS = torch.tensor([[0.09, 0.07, 0.07], [0.88, 0.76, 0.46], [0.45, 0.27, 0.13]])  # black, blond, brown
_SPLIT_STREAMS = {"train": 0x7E57_0001, "test": 0x7E57_0002}


@dataclass
class FaceIdentity:
    """Per-face appearance parameters, each a float tensor [N] (colours [N, 3])."""

    center_x: torch.Tensor
    center_y: torch.Tensor
    tilt: torch.Tensor  # radians
    face_w: torch.Tensor  # half-width of the face ellipse, image units ([-1, 1] spans the image)
    face_h: torch.Tensor
    hairline: torch.Tensor  # fraction of the face height covered by the fringe
    hair_volume: torch.Tensor
    hair_shade: torch.Tensor  # multiplies the hair colour
    skin: torch.Tensor  # [N, 3]
    background: torch.Tensor  # [N, 3]
    background_slope: torch.Tensor
    shirt: torch.Tensor  # [N, 3]
    eye_spacing: torch.Tensor
    gaze: torch.Tensor
    yaw: torch.Tensor  # shifts the inner features sideways
    mouth_width: torch.Tensor

    def __len__(self) -> int:
        return self.center_x.shape[0]

    def select(self, index: torch.Tensor) -> FaceIdentity:
        """The identities at ``index`` (a LongTensor or slice)."""
        return FaceIdentity(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _stream(split: str, seed: int) -> torch.Generator:
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return torch.Generator().manual_seed(_SPLIT_STREAMS[split] * 1_000_003 + seed)


def sample_faces(n: int, seed: int = 0, split: str = "test") -> tuple[FaceIdentity, torch.Tensor]:
    """``n`` identities and their source attribute labels [n, 5] (0/1: one hair colour, glasses, smile)."""
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    g = _stream(split, seed)
    # One row of uniforms per face keeps the sequence prefix-stable in n.
    u = torch.rand(n, 32, generator=g)

    def lerp(col: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * u[:, col]

    skin_t = u[:, 9:10]
    skin = (1 - skin_t) * torch.tensor([0.97, 0.84, 0.72]) + skin_t * torch.tensor([0.42, 0.28, 0.19])
    identity = FaceIdentity(
        center_x=lerp(0, -0.12, 0.12),
        center_y=lerp(1, -0.02, 0.14),
        tilt=lerp(2, -0.2, 0.2),
        face_w=lerp(3, 0.30, 0.40),
        face_h=lerp(4, 0.40, 0.50),
        hairline=lerp(5, 0.30, 0.50),
        hair_volume=lerp(6, 1.10, 1.28),
        hair_shade=lerp(7, 0.85, 1.12),
        skin=skin,
        background=0.15 + 0.75 * u[:, 10:13],
        background_slope=lerp(13, -0.25, 0.25),
        shirt=0.1 + 0.8 * u[:, 14:17],
        eye_spacing=lerp(17, 0.36, 0.46),
        gaze=lerp(18, -0.02, 0.02),
        yaw=lerp(19, -0.06, 0.06),
        mouth_width=lerp(20, 0.11, 0.17),
    )
    labels = torch.zeros(n, len(TESTBED_ATTRIBUTES))
    labels[torch.arange(n), (u[:, 21] * 3).long().clamp(max=2)] = 1.0
    labels[:, 3] = (u[:, 22] < 0.4).float()
    labels[:, 4] = (u[:, 23] < 0.5).float()
    return identity, labels


def render_faces(identity: FaceIdentity, labels: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Render ``identity`` under attribute ``labels`` [N, 5] -> images [N, 3, size, size] in [-1, 1]."""
    labels = torch.as_tensor(labels, dtype=torch.float32)
    if labels.shape != (len(identity), len(TESTBED_ATTRIBUTES)):
        raise ValueError(
            f"labels must be [{len(identity)}, {len(TESTBED_ATTRIBUTES)}] over {list(TESTBED_ATTRIBUTES)}, "
            f"got {tuple(labels.shape)}."
        )
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}.")
    p = {f.name: getattr(identity, f.name) for f in fields(identity)}
    col = {k: v[:, None, None] for k, v in p.items() if v.dim() == 1}
    pix = 2.0 / size  # one pixel in image units
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * pix - 1.0
    y, x = coords[None, :, None], coords[None, None, :]
    # face frame: rotated about the face centre
    dx, dy = x - col["center_x"], y - col["center_y"]
    cos, sin = torch.cos(col["tilt"]), torch.sin(col["tilt"])
    fu, fv = cos * dx + sin * dy, -sin * dx + cos * dy

    def soft(signed_distance: torch.Tensor) -> torch.Tensor:  # inside > 0, ~1.5 px anti-aliased edge
        return torch.sigmoid(signed_distance / (0.6 * pix))

    def ellipse(u: torch.Tensor, v: torch.Tensor, a, b) -> torch.Tensor:
        r = torch.sqrt((u / a) ** 2 + (v / b) ** 2 + 1e-12)
        return soft((1 - r) * torch.minimum(torch.as_tensor(a), torch.as_tensor(b)))

    def ring(u, v, radius, half_width) -> torch.Tensor:
        return soft(half_width - (torch.sqrt(u**2 + v**2 + 1e-12) - radius).abs())

    def paint(canvas: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        colour = colour.reshape(-1, 3, 1, 1)  # [3] or [N, 3]
        return canvas + (colour - canvas) * mask[:, None]

    n = len(identity)
    canvas = p["background"][:, :, None, None] * (1 + col["background_slope"] * y)[:, None].expand(n, 1, size, size)
    canvas = canvas.expand(n, 3, size, size).clone()
    fw, fh = col["face_w"], col["face_h"]
    hair = HAIR_COLOURS[labels[:, :3].argmax(1)] * p["hair_shade"][:, None]
    hair = hair.clamp(0, 1)
    # shirt and neck
    canvas = paint(canvas, p["shirt"], ellipse(x - col["center_x"], y - col["center_y"] - 1.05, 0.78, 0.5))
    canvas = paint(canvas, p["skin"] * 0.88, ellipse(fu, fv - fh * 1.05, fw * 0.45, fh * 0.6))
    # hair volume behind the face, face, fringe
    vol = col["hair_volume"]
    canvas = paint(canvas, hair, ellipse(fu, fv + fh * 0.18, fw * vol, fh * (vol - 0.08)))
    face = ellipse(fu, fv, fw, fh)
    canvas = paint(canvas, p["skin"], face)
    fringe = face * soft(-(fv + fh * (1 - 2 * col["hairline"])))
    canvas = paint(canvas, hair, fringe)
    # eyes (sclera + pupil), shifted by yaw
    iu = fu - col["yaw"]
    eye_v = fv + fh * 0.08
    for side in (-1.0, 1.0):
        eu = iu - side * col["eye_spacing"] * fw
        canvas = paint(canvas, torch.tensor([0.96, 0.96, 0.94]), ellipse(eu, eye_v, 0.085 * fw / 0.35, 0.045))
        canvas = paint(canvas, torch.tensor([0.12, 0.08, 0.06]), ellipse(eu - col["gaze"], eye_v, 0.032, 0.032))
    # mouth: neutral line or smile arc
    mouth_v = fv - fh * 0.5
    mw = col["mouth_width"]
    neutral = ellipse(iu, mouth_v, mw, torch.full_like(mw, 0.022))
    arc_v = mouth_v + mw * 0.7  # arc centre above the mouth line; keep the ring's lower part
    arc = ring(iu, arc_v, mw * 1.05, 0.024) * soft(arc_v - mw * 0.45)
    smiling = labels[:, 4][:, None, None]
    mouth = neutral * (1 - smiling) + arc * smiling
    canvas = paint(canvas, torch.tensor([0.55, 0.12, 0.14]), mouth)
    # eyeglasses: two rims, a bridge and a light tint
    glasses = labels[:, 3][:, None, None]
    lens_r = 0.12 * fw / 0.35
    rims = torch.zeros_like(fu)
    tint = torch.zeros_like(fu)
    for side in (-1.0, 1.0):
        eu = iu - side * col["eye_spacing"] * fw
        rims = torch.maximum(rims, ring(eu, eye_v, lens_r, 0.02))
        tint = torch.maximum(tint, ellipse(eu, eye_v, lens_r, lens_r))
    bridge_half = col["eye_spacing"] * fw - lens_r
    bridge = soft(bridge_half - iu.abs()) * soft(0.016 - (eye_v - 0.015).abs())
    canvas = paint(canvas, torch.tensor([0.35, 0.45, 0.55]), tint * 0.18 * glasses)
    canvas = paint(canvas, torch.tensor([0.06, 0.06, 0.09]), torch.maximum(rims, bridge) * glasses)
    return (canvas.clamp(0, 1) * 2 - 1).contiguous()


MAX_BATCH_BYTES = 4 * 2**30
"""The largest image batch (float32 bytes) one call renders: a larger request is refused before anything is
allocated (rendering also needs a few times this in temporaries)."""


def _check_batch_size(n: int, size: int) -> None:
    if isinstance(n, int) and isinstance(size, int) and n > 0 and size > 0:
        needed = n * 3 * size * size * 4
        if needed > MAX_BATCH_BYTES:
            most = MAX_BATCH_BYTES // (3 * size * size * 4)
            raise ValueError(f"{n} testbed faces of {size}x{size} px would take {needed / 2**30:.1f} GiB; draw at most "
                             f"{most} per call at this size (e.g. in chunks of faces with the same seed: the sequence "
                             "is prefix-stable).")


def testbed_faces(
    n: int, seed: int = 0, size: int = 64, split: str = "test"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` testbed faces: (images [n, 3, size, size] in [-1, 1], labels [n, 5] float 0/1) over
    :data:`TESTBED_ATTRIBUTES`. Deterministic in ``(n, seed, size, split)``; train and test faces never coincide.
    Requests over :data:`MAX_BATCH_BYTES` are refused before anything is allocated."""
    _check_batch_size(n, size)
    identity, labels = sample_faces(n, seed=seed, split=split)
    return render_faces(identity, labels, size=size), labels


def testbed_edits(
    n: int, targets: list[torch.Tensor], seed: int = 0, size: int = 64, split: str = "test"
) -> list[torch.Tensor]:
    """Ground-truth edits of the faces of :func:`testbed_faces` with the same arguments: for each target label
    tensor [n, 5] in ``targets`` (e.g. ``load_editor("testbed").conditions(labels)``), the same faces rendered
    with those attributes, [n, 3, size, size] in [-1, 1]."""
    _check_batch_size(n, size)
    identity, _ = sample_faces(n, seed=seed, split=split)
    return [render_faces(identity, target, size=size) for target in targets]

