"""train.augment: the LANMSFF notebook's four augmentation variants."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from train.augment import NUM_VARIANTS, augment


def _img(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_variant_0_is_identity() -> None:
    img = _img((64, 64))
    out = augment(img, 0, np.random.default_rng(0))
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("shape", [(64, 64), (64, 48, 3)])
def test_variant_1_is_horizontal_flip(shape: tuple[int, ...]) -> None:
    img = _img(shape)
    out = augment(img, 1, np.random.default_rng(0))
    np.testing.assert_array_equal(out, np.fliplr(img))
    assert out.flags["C_CONTIGUOUS"]
    marker = np.zeros((4, 6), np.uint8)
    marker[1, 0] = 255
    flipped = augment(marker, 1, np.random.default_rng(0))
    assert flipped[1, 5] == 255 and flipped.sum() == 255


@pytest.mark.parametrize("variant", range(NUM_VARIANTS))
@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 3), (48, 64), (40, 56, 3)])
def test_variants_preserve_shape_and_dtype(variant: int, shape: tuple[int, ...]) -> None:
    out = augment(_img(shape), variant, np.random.default_rng(1))
    assert out.shape == shape
    assert out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("variant", [2, 3])
def test_random_variants_are_deterministic_by_seed(variant: int) -> None:
    img = _img((64, 64, 3))
    a = augment(img, variant, np.random.default_rng(42))
    b = augment(img, variant, np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)
    outs = [augment(img, variant, np.random.default_rng(s)).tobytes() for s in range(8)]
    assert len(set(outs)) > 1  # the seed matters
    assert not np.array_equal(a, img)


def test_variant_2_without_rotation_is_upscale_and_centre_crop() -> None:
    img = _img((64, 64))
    out = augment(img, 2, np.random.default_rng(0), max_rotation_deg=0)
    expected = cv2.resize(img, (72, 72), interpolation=cv2.INTER_LINEAR)[4:68, 4:68]
    np.testing.assert_array_equal(out, expected)


def test_variant_2_rotates_by_the_drawn_angle() -> None:
    img = _img((64, 64))
    angle = int(np.random.default_rng(7).integers(-15, 16))
    m = cv2.getRotationMatrix2D((32.0, 32.0), angle, 1.0)
    rot = cv2.warpAffine(img, m, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    expected = cv2.resize(rot, (72, 72), interpolation=cv2.INTER_LINEAR)[4:68, 4:68]
    np.testing.assert_array_equal(augment(img, 2, np.random.default_rng(7)), expected)


def test_variant_3_is_a_random_crop_of_the_upscaled_image() -> None:
    img = _img((64, 64, 3))
    up = cv2.resize(img, (72, 72), interpolation=cv2.INTER_LINEAR)
    seen = set()
    for seed in range(12):
        draws = np.random.default_rng(seed)
        oy, ox = int(draws.integers(0, 9)), int(draws.integers(0, 9))  # offsets 0..8 at 64 px
        seen.add((oy, ox))
        out = augment(img, 3, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, up[oy : oy + 64, ox : ox + 64])
    assert len(seen) > 3


@pytest.mark.parametrize("variant", [-1, 4, 10])
def test_invalid_variant_raises(variant: int) -> None:
    with pytest.raises(ValueError, match=f"augmentation variant must be 0..3, got {variant}"):
        augment(_img((64, 64)), variant, np.random.default_rng(0))
