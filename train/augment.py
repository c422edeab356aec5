"""The LANMSFF notebook's four augmentation variants, on uint8 images already at input size.

0: original; 1: horizontal flip; 2: rotation by a random integer angle in [-15, 15] degrees,
then resize to 9/8 of the side and crop the centre (72 -> [4:68] at 64 px); 3: resize to 9/8 and
take a random crop (offset 0..8 at 64 px). Augmentation runs before `runtime.preprocess`, which
then only scales and normalises, so training and deployment share one preprocessing path.
"""

from __future__ import annotations

import cv2
import numpy as np

NUM_VARIANTS = 4


def augment(image: np.ndarray, variant: int, rng: np.random.Generator, max_rotation_deg: int = 15) -> np.ndarray:
    """Return augmented ``image`` (same shape and dtype) for ``variant`` in 0..3."""
    if variant == 0:
        return image
    if variant == 1:
        return np.ascontiguousarray(image[:, ::-1])
    h, w = image.shape[:2]
    big = (w + w // 8, h + h // 8)
    if variant == 2:
        angle = int(rng.integers(-max_rotation_deg, max_rotation_deg + 1))
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        rot = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        up = cv2.resize(rot, big, interpolation=cv2.INTER_LINEAR)
        oy, ox = (big[1] - h) // 2, (big[0] - w) // 2
        return np.ascontiguousarray(up[oy : oy + h, ox : ox + w])
    if variant == 3:
        up = cv2.resize(image, big, interpolation=cv2.INTER_LINEAR)
        oy = int(rng.integers(0, big[1] - h + 1))
        ox = int(rng.integers(0, big[0] - w + 1))
        return np.ascontiguousarray(up[oy : oy + h, ox : ox + w])
    raise ValueError(f"augmentation variant must be 0..{NUM_VARIANTS - 1}, got {variant}")
