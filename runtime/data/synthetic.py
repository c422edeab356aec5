"""A procedural multi-view facial-expression dataset, deterministic by seed.

Each face is a small 3-D model (head ellipsoid, brows, eyes, nose, mouth) posed at one of KDEF's
five head yaws and projected orthographically, so profile views hide half the face and
foreshorten the rest. Seven expressions differ in brow tilt and height, eye opening, mouth
curvature, opening and width, and a nose wrinkle (disgust). Each sample draws an expression
intensity (weak ones drift towards neutral), an identity with its own face geometry, skin tone and
resting expression, random lighting, sensor noise and sometimes an occluding patch, so the set is
learnable but not trivial: profile and occluded views are measurably harder than frontal ones.

Sample ``i`` of seed ``s`` depends only on ``(s, i)``: any subset regenerates exactly, and
``count`` does not change earlier samples.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from runtime.data.base import CANONICAL_CLASSES, DatasetIndex, Record
from runtime.data.registry import register_dataset
from runtime.errors import DataError

log = logging.getLogger(__name__)

CLASSES = CANONICAL_CLASSES[:7]
# KDEF's five views, left to right, with the head yaw (degrees) they are rendered at. KDEF's full
# profiles are 90°; this flat cartoon face shows nothing of one side at 90°, so "full" views are
# rendered at 70° (one eye, one brow, half the mouth, all foreshortened): hard, but learnable.
VIEWS: tuple[tuple[str, float], ...] = (
    ("full_left", -70.0),
    ("half_left", -40.0),
    ("frontal", 0.0),
    ("half_right", 40.0),
    ("full_right", 70.0),
)

# Expression parameters relative to neutral: brow tilt (+ = inner ends up), brow raise, eye
# opening (multiplier), mouth curvature (+ = smile), mouth opening, mouth width (multiplier),
# nose wrinkle, upper-lip asymmetry.
_EXPR = {
    "angry": (-1.0, -0.6, 0.85, -0.25, 0.0, 0.80, 0.0, 0.0),
    "disgust": (-0.4, -0.3, 0.65, -0.45, 0.15, 0.95, 1.0, 1.0),
    "fear": (0.8, 0.8, 1.45, -0.30, 0.45, 1.25, 0.0, 0.0),
    "happy": (0.0, 0.1, 0.75, 1.0, 0.25, 1.25, 0.0, 0.0),
    "sad": (1.0, 0.0, 0.80, -0.9, 0.0, 0.90, 0.0, 0.0),
    "surprise": (0.0, 1.1, 1.55, 0.0, 1.0, 0.60, 0.0, 0.0),
    "neutral": (0.0, 0.0, 1.00, 0.0, 0.0, 1.00, 0.0, 0.0),
}
_NEUTRAL = np.array(_EXPR["neutral"], dtype=np.float64)


@dataclass(frozen=True)
class SynthConfig:
    """Generator settings.

    Attributes:
        count: Number of samples (classes and views are balanced: sample i has class i % 7 and
            view (i // 7) % 5, so every class × view cell is equally filled).
        seed: Master seed.
        size: Output side in pixels.
        mode: ``gray`` or ``rgb``.
        identities: Number of distinct identities.
        occlusion_prob: Probability of an occluding patch.
        noise_std: Std of additive Gaussian sensor noise (in 0..255 units), drawn up to this.
        min_intensity: Lowest expression intensity (1 = full expression).
    """

    count: int = 2800
    seed: int = 0
    size: int = 64
    mode: str = "gray"
    identities: int = 48
    occlusion_prob: float = 0.2
    noise_std: float = 8.0
    min_intensity: float = 0.6

    def __post_init__(self) -> None:
        if self.count < 1:
            raise DataError(f"synthetic count must be >= 1, got {self.count}")
        if self.size < 16:
            raise DataError(f"synthetic size must be >= 16 pixels, got {self.size}")
        if self.mode not in ("gray", "rgb"):
            raise DataError(f"synthetic mode must be 'gray' or 'rgb', got {self.mode!r}")
        if self.identities < 1:
            raise DataError(f"synthetic identities must be >= 1, got {self.identities}")


def _identity(seed: int, ident: int) -> dict[str, np.ndarray | float]:
    r = np.random.default_rng([seed, 1_000_003, ident])
    skin = r.uniform(0.35, 0.95)
    return {
        "face_w": r.uniform(0.78, 0.95),
        "face_h": r.uniform(1.0, 1.18),
        "eye_dx": r.uniform(0.30, 0.40),
        "eye_y": r.uniform(-0.22, -0.10),
        "eye_size": r.uniform(0.10, 0.13),
        "brow_gap": r.uniform(0.10, 0.17),
        "mouth_y": r.uniform(0.40, 0.52),
        "mouth_w": r.uniform(0.28, 0.36),
        "nose_len": r.uniform(0.18, 0.30),
        "skin": np.array([skin, skin * r.uniform(0.72, 0.9), skin * r.uniform(0.55, 0.8)]),
        "hair": r.uniform(0.05, 0.45),
        "hair_line": r.uniform(-0.75, -0.5),
        # A resting expression: some people look a little sad or amused when neutral.
        "rest": r.normal(0.0, 0.12, size=8) * np.array([1, 1, 0.5, 1, 0.3, 0.5, 0, 0]),
    }


def _rot(points: np.ndarray, yaw_deg: float) -> np.ndarray:
    """Rotate (N, 3) points (x right, y down, z towards the camera) about the vertical axis."""
    t = np.deg2rad(yaw_deg)
    c, s = np.cos(t), np.sin(t)
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    return np.stack([x * c + z * s, y, -x * s + z * c], axis=1)


def _on_head(x: np.ndarray, y: np.ndarray, fw: float, fh: float) -> np.ndarray:
    """Lift 2-D frontal coordinates onto the head ellipsoid's front surface."""
    u = np.clip((x / fw) ** 2 + (y / fh) ** 2, 0.0, 0.98)
    return np.stack([x, y, 0.9 * np.sqrt(1.0 - u)], axis=1)


def render(index: int, cfg: SynthConfig) -> tuple[np.ndarray, int, dict]:
    """Render sample ``index``: (uint8 image, class index, meta)."""
    label = index % len(CLASSES)
    view_idx = (index // len(CLASSES)) % len(VIEWS)
    view, yaw = VIEWS[view_idx]
    r = np.random.default_rng([cfg.seed, index])
    ident = int(r.integers(cfg.identities))
    idp = _identity(cfg.seed, ident)
    intensity = r.uniform(cfg.min_intensity, 1.0)
    expr = _NEUTRAL + intensity * (np.array(_EXPR[CLASSES[label]]) - _NEUTRAL) + idp["rest"]
    expr = expr + r.normal(0.0, 0.05, size=8) * np.array([1, 1, 0.3, 1, 0.3, 0.3, 0, 0])
    tilt, raise_, eye_open, curve, mopen, mwidth, wrinkle, asym = expr
    yaw = yaw + r.uniform(-7.0, 7.0)

    S = 2 * cfg.size  # draw at 2× and downsample: cheap anti-aliasing
    scale = S * r.uniform(0.44, 0.50)  # a face crop: the face fills the frame
    cx = S / 2 + r.uniform(-0.04, 0.04) * S
    cy = S / 2 + r.uniform(0.0, 0.08) * S
    roll = r.uniform(-8.0, 8.0)

    bg = r.uniform(0.15, 0.85) * np.array([1.0, r.uniform(0.8, 1.2), r.uniform(0.8, 1.2)])
    img = np.ones((S, S, 3), dtype=np.float32) * np.clip(bg, 0, 1).astype(np.float32)
    fw, fh = idp["face_w"], idp["face_h"]

    def proj(p3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = _rot(p3, yaw)
        xy = np.stack([cx + q[:, 0] * scale, cy + q[:, 1] * scale], axis=1)
        return xy, q[:, 2]

    def poly(xs: np.ndarray, ys: np.ndarray, color, thick: float, closed: bool = False, fill: bool = False) -> None:
        xy, z = proj(_on_head(xs, ys, fw, fh))
        vis = z > 0.05  # points turned away from the camera are hidden
        if vis.sum() < 2:
            return
        pts = np.round(xy[vis] * 16).astype(np.int32).reshape(-1, 1, 2)  # 4 fractional bits
        col = tuple(float(c) for c in color)
        if fill:
            cv2.fillPoly(img, [pts], col, cv2.LINE_AA, shift=4)
        else:
            cv2.polylines(img, [pts], closed, col, max(1, int(round(thick * S / 128))), cv2.LINE_AA, shift=4)

    # Head outline: an ellipse whose width shrinks a little when turned (the head is deeper than wide).
    head_w = scale * fw * (1.0 + 0.12 * abs(np.sin(np.deg2rad(yaw))))
    hair = np.full(3, idp["hair"], dtype=np.float32)
    cv2.ellipse(
        img,
        (int(cx), int(cy - 0.08 * scale)),
        (int(head_w * 1.04), int(scale * fh * 1.06)),
        0,
        180,
        360,
        hair.tolist(),
        -1,
        cv2.LINE_AA,
    )
    cv2.ellipse(
        img, (int(cx), int(cy)), (int(head_w), int(scale * fh)), 0, 0, 360, idp["skin"].tolist(), -1, cv2.LINE_AA
    )
    hl = idp["hair_line"]
    cv2.ellipse(
        img,
        (int(cx), int(cy + hl * scale)),
        (int(head_w * 0.98), int(scale * 0.35)),
        0,
        180,
        360,
        hair.tolist(),
        -1,
        cv2.LINE_AA,
    )

    dark = idp["skin"] * 0.35
    t = np.linspace(-1.0, 1.0, 9)
    for side in (-1.0, 1.0):
        ex = side * idp["eye_dx"]
        ey = idp["eye_y"]
        es = idp["eye_size"]
        # Eye: an ellipse whose height follows the expression's eye opening.
        ang = np.linspace(0, 2 * np.pi, 16)
        poly(ex + es * 1.3 * np.cos(ang), ey + es * 0.55 * eye_open * np.sin(ang), (0.95, 0.95, 0.95), 1, fill=True)
        pr = es * 0.45 * min(1.0, 0.6 + 0.4 * eye_open)
        poly(ex + pr * np.cos(ang), ey + pr * np.sin(ang), (0.08, 0.06, 0.05), 1, fill=True)
        # Brow: a segment whose inner end moves with tilt, the whole brow with raise.
        bx = ex + side * es * 1.4 * t
        # Weight 1 at the brow's inner end (towards the nose), 0 from the eye centre outwards.
        inner_w = np.clip((ex - bx) * side / (es * 1.4), 0.0, 1.0)
        by = ey - idp["brow_gap"] - 0.10 * raise_ - 0.16 * tilt * (inner_w - 0.5)
        poly(bx, by, dark, 7)
    # Nose: bridge and tip stand out of the surface, so they are drawn in true 3-D.
    ny = np.linspace(idp["eye_y"] + 0.05, idp["eye_y"] + 0.05 + idp["nose_len"], 6)
    nz = 0.95 + 0.25 * (ny - ny[0]) / (ny[-1] - ny[0])
    nxy, nzv = proj(np.stack([np.zeros_like(ny), ny, nz], axis=1))
    pts = np.round(nxy * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(img, [pts], False, (idp["skin"] * 0.6).tolist(), max(1, S // 64), cv2.LINE_AA, shift=4)
    if wrinkle > 0.4:  # disgust: wrinkles across the bridge of the nose
        for k in range(3):
            yy = idp["eye_y"] + 0.06 + 0.04 * k
            poly(np.linspace(-0.12, 0.12, 5), np.full(5, yy), idp["skin"] * 0.4, 4)
    # Mouth: corners move up with curvature; opening adds a dark lower lip arc.
    mw = idp["mouth_w"] * mwidth
    mx = mw * np.linspace(-1.0, 1.0, 13)
    my0 = idp["mouth_y"]
    upper = my0 - 0.20 * curve * (mx / mw) ** 2 + 0.08 * curve
    upper = upper - 0.10 * asym * np.clip(mx / mw, 0, 1)  # disgust raises one side of the upper lip
    lower = upper + 0.28 * mopen * (1 - (mx / mw) ** 2)
    lip = np.array([0.45, 0.12, 0.12]) * 0.6 + idp["skin"] * 0.3
    if mopen > 0.12:
        poly(np.concatenate([mx, mx[::-1]]), np.concatenate([upper, lower[::-1]]), (0.1, 0.03, 0.03), 1, fill=True)
    poly(mx, upper, lip, 6)
    if mopen > 0.12:
        poly(mx, lower, lip, 6)
    if curve > 0.5:  # a smile lifts the cheeks
        for side in (-1.0, 1.0):
            cxs = side * (mw + 0.06) + 0.02 * side * t
            poly(cxs, my0 - 0.12 + 0.06 * t, idp["skin"] * 0.7, 2.5)

    # Roll, lighting gradient, occlusion, downsample, noise.
    M = cv2.getRotationMatrix2D((S / 2, S / 2), roll, 1.0)
    img = cv2.warpAffine(img, M, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gx = np.linspace(-1, 1, S, dtype=np.float32)
    light_dir = r.uniform(0, 2 * np.pi)
    grad = np.cos(light_dir) * gx[None, :] + np.sin(light_dir) * gx[:, None]
    img = img * (r.uniform(0.75, 1.05) + r.uniform(0.0, 0.25) * grad)[:, :, None]
    occluded = bool(r.random() < cfg.occlusion_prob)
    if occluded:
        ow, oh = int(S * r.uniform(0.25, 0.45)), int(S * r.uniform(0.18, 0.35))
        ox = int(r.uniform(cx - scale, cx + scale - ow))
        oy = int(r.uniform(cy - 0.6 * scale, cy + 0.8 * scale - oh))
        img[max(0, oy) : max(0, oy + oh), max(0, ox) : max(0, ox + ow)] = r.uniform(0.0, 1.0, size=3)
    img = cv2.resize(img, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA)
    img = img * 255.0 + r.normal(0.0, r.uniform(0.0, cfg.noise_std), size=img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if cfg.mode == "gray":
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    meta = {"view": view, "identity": ident, "occluded": occluded, "intensity": round(float(intensity), 3)}
    return img, label, meta


def generate(cfg: SynthConfig) -> Iterator[tuple[int, np.ndarray, int, dict]]:
    """Yield ``(index, image, label, meta)`` for every sample of ``cfg``."""
    for i in range(cfg.count):
        img, label, meta = render(i, cfg)
        yield i, img, label, meta


@register_dataset("synthetic")
def load_synthetic(root: Path | None = None, *, seed: int = 0, **options) -> DatasetIndex:
    """Render the synthetic set in memory (``root`` is ignored: nothing is read from disk)."""
    known = set(SynthConfig.__dataclass_fields__) - {"seed"}
    unknown = set(options) - known
    if unknown:
        raise DataError(f"unknown synthetic dataset options {sorted(unknown)}; valid: {sorted(known)}")
    cfg = SynthConfig(seed=seed, **options)
    records = [
        Record(id=f"synthetic-{cfg.seed}-{i:06d}", label=label, split="train", pixels=img, meta=meta)
        for i, img, label, meta in generate(cfg)
    ]
    return DatasetIndex(name="synthetic", class_names=CLASSES, records=records, info={"config": cfg.__dict__})


def write_image_folder(cfg: SynthConfig, out: Path, progress: bool = True) -> dict[str, int]:
    """Write the set as an ImageFolder (``out/<class>/<id>.png``) plus ``out/metadata.csv``.

    Returns:
        Per-class sample counts.
    """
    from tqdm import tqdm

    from runtime.artifacts import atomic_write, atomic_write_text

    out = Path(out)
    counts = {c: 0 for c in CLASSES}
    lines = ["file,label,view,identity,occluded,intensity"]
    for i, img, label, meta in tqdm(generate(cfg), total=cfg.count, desc="synth", disable=not progress):
        rel = f"{CLASSES[label]}/synthetic-{cfg.seed}-{i:06d}.png"
        ok, buf = cv2.imencode(".png", img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - cv2 fails only on invalid arrays
            raise DataError(f"could not encode sample {i} as PNG")
        atomic_write(out / rel, lambda p, b=buf: p.write_bytes(b.tobytes()))
        counts[CLASSES[label]] += 1
        lines.append(
            f"{rel},{CLASSES[label]},{meta['view']},{meta['identity']},{int(meta['occluded'])},{meta['intensity']}"
        )
    atomic_write_text(out / "metadata.csv", "\n".join(lines) + "\n")
    return counts
