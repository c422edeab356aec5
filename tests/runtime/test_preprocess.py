"""runtime.preprocess: the one preprocessing path shared by training and every runtime backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import ConfigError, DataError
from runtime.preprocess import ColorMode, PreprocessSpec, ResizePolicy, preprocess, resize_image, to_color

REPO = Path(__file__).resolve().parents[2]


# --- PreprocessSpec ---------------------------------------------------------------------------------


def test_spec_defaults_and_shapes() -> None:
    spec = PreprocessSpec()
    assert spec.input_size == (64, 64)
    assert spec.color_mode is ColorMode.GRAY
    assert spec.resize is ResizePolicy.STRETCH
    assert spec.channels == 1
    assert spec.input_shape == (1, 64, 64)
    rgb = PreprocessSpec(input_size=[224, 112], color_mode="rgb", mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    assert rgb.channels == 3
    assert rgb.input_shape == (3, 224, 112)
    assert rgb.input_size == (224, 112) and isinstance(rgb.input_size, tuple)
    assert rgb.mean == (0.5, 0.4, 0.3) and isinstance(rgb.mean, tuple)


def test_spec_metadata_round_trip() -> None:
    spec = PreprocessSpec(
        input_size=(48, 40),
        color_mode="rgb",
        scale=1 / 127.5,
        mean=(1.0, 0.9, 0.8),
        std=(0.5, 0.25, 2.0),
        resize="letterbox",
        interpolation="area",
    )
    props = spec.to_metadata()
    assert list(props) == ["preprocess"]
    decoded = json.loads(props["preprocess"])
    assert decoded == {
        "input_size": [48, 40],
        "color_mode": "rgb",
        "scale": 1 / 127.5,
        "mean": [1.0, 0.9, 0.8],
        "std": [0.5, 0.25, 2.0],
        "resize": "letterbox",
        "interpolation": "area",
    }
    assert props["preprocess"] == json.dumps(decoded, sort_keys=True)
    back = PreprocessSpec.from_metadata(props)
    assert back == spec
    assert back.resize is ResizePolicy.LETTERBOX and back.color_mode is ColorMode.RGB
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec


def test_from_metadata_without_entry_raises() -> None:
    with pytest.raises(DataError, match="no 'preprocess' entry.*python -m export onnx"):
        PreprocessSpec.from_metadata({"other": "x"})


def test_from_dict_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        PreprocessSpec.from_dict({"input_size": [64, 64], "colour": "gray", "zoom": 2})
    msg = str(exc.value)
    assert "unknown preprocessing keys ['colour', 'zoom']" in msg
    assert "valid keys: ['color_mode', 'input_size', 'interpolation', 'mean', 'resize', 'scale', 'std']" in msg


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"input_size": (64,)}, "input_size must be (height, width) > 0, got (64,)"),
        ({"input_size": (0, 64)}, "input_size must be (height, width) > 0, got (0, 64)"),
        ({"color_mode": "rgb", "mean": (0.1, 0.2)}, "mean has 2 values; expected 1 or 3 for color_mode=rgb"),
        ({"std": (0.5, 0.5, 0.5)}, "std has 3 values; expected 1 or 1 for color_mode=gray"),
        ({"std": (0.0,)}, "std must be non-zero, got (0.0,)"),
        ({"interpolation": "cubic"}, "interpolation must be one of ['area', 'linear', 'nearest'], got 'cubic'"),
    ],
)
def test_spec_validation(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        PreprocessSpec(**kwargs)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("d", [{"color_mode": "hsv"}, {"resize": "fit"}])
def test_from_dict_bad_enum_value_is_config_error(d: dict) -> None:
    with pytest.raises(ConfigError):
        PreprocessSpec.from_dict(d)


def test_from_metadata_corrupt_json_is_data_error() -> None:
    with pytest.raises(DataError):
        PreprocessSpec.from_metadata({"preprocess": "{not json"})


# --- colour conversion ------------------------------------------------------------------------------


def test_to_color_gray_and_rgb() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_color(gray, ColorMode.GRAY) is gray
    rgb = to_color(gray, ColorMode.RGB)
    assert rgb.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], gray)
    np.testing.assert_array_equal(to_color(gray[:, :, None], ColorMode.GRAY), gray)

    # Pure red/green/blue -> ITU-R BT.601 luma (0.299, 0.587, 0.114) of 255, rounded.
    img = np.zeros((1, 3, 3), np.uint8)
    img[0, 0, 0] = img[0, 1, 1] = img[0, 2, 2] = 255
    np.testing.assert_array_equal(to_color(img, ColorMode.GRAY), [[76, 150, 29]])
    assert to_color(img, ColorMode.RGB) is img

    rgba = np.concatenate([img, np.full((1, 3, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(to_color(rgba, ColorMode.RGB), img)
    np.testing.assert_array_equal(to_color(rgba, ColorMode.GRAY), [[76, 150, 29]])


@pytest.mark.parametrize("shape", [(4, 4, 2), (4, 4, 5), (4,), (2, 4, 4, 3)])
def test_to_color_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(DataError) as exc:
        to_color(np.zeros(shape, np.uint8), ColorMode.GRAY)
    assert f"expected an image of shape H×W or H×W×{{1,3,4}}, got {shape}" in str(exc.value)


# --- resizing ---------------------------------------------------------------------------------------


def test_stretch_resizes_to_exact_shape_and_keeps_constant() -> None:
    spec = PreprocessSpec(input_size=(64, 48))
    out = resize_image(np.full((30, 100), 51, np.uint8), spec)
    assert out.shape == (64, 48) and out.dtype == np.uint8
    assert (out == 51).all()
    same = np.full((64, 48), 9, np.uint8)
    assert resize_image(same, spec) is same  # already at size: untouched


def test_letterbox_pads_with_zeros_centred() -> None:
    spec = PreprocessSpec(input_size=(64, 64), resize="letterbox")
    img = np.full((32, 64), 255, np.uint8)  # scale 1: no interpolation, 16 rows of padding each side
    out = resize_image(img, spec)
    assert out.shape == (64, 64)
    assert (out[:16] == 0).all() and (out[48:] == 0).all()
    assert (out[16:48] == 255).all()

    rgb = np.full((20, 10, 3), 200, np.uint8)  # tall: resized to 64×32, 16 columns of padding each side
    out = resize_image(rgb, spec)
    assert out.shape == (64, 64, 3)
    assert (out[:, :16] == 0).all() and (out[:, 48:] == 0).all()
    assert (out[:, 16:48] == 200).all()


def test_center_crop_keeps_the_centre() -> None:
    spec = PreprocessSpec(input_size=(64, 64), resize="center_crop")
    img = np.zeros((64, 128), np.uint8)
    img[:, 64:] = 255  # left half black, right half white; scale 1, crop columns 32..95
    out = resize_image(img, spec)
    assert out.shape == (64, 64)
    assert (out[:, :32] == 0).all() and (out[:, 32:] == 255).all()

    marker = np.arange(128 * 64, dtype=np.uint32).reshape(128, 64)
    tall = (marker % 251).astype(np.uint8)
    out = resize_image(tall, PreprocessSpec(input_size=(64, 64), resize="center_crop", interpolation="nearest"))
    np.testing.assert_array_equal(out, tall[32:96])


@pytest.mark.parametrize("policy", ["stretch", "letterbox", "center_crop"])
def test_every_policy_gives_the_input_size(policy: str) -> None:
    spec = PreprocessSpec(input_size=(40, 56), color_mode="rgb", resize=policy)
    for shape in [(17, 93, 3), (120, 31, 3), (40, 56, 3)]:
        out = preprocess([np.full(shape, 10, np.uint8)], spec)
        assert out.shape == (1, 3, 40, 56)


# --- preprocess -------------------------------------------------------------------------------------


def test_constant_gray_image_scales_to_0_2() -> None:
    spec = PreprocessSpec()  # 64×64 gray, scale 1/255
    out = preprocess([np.full((64, 64), 51, np.uint8), np.full((100, 80), 51, np.uint8)], spec)
    assert out.shape == (2, 1, 64, 64)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out, 0.2, rtol=0, atol=1e-7)


def test_per_channel_mean_std_normalisation() -> None:
    spec = PreprocessSpec(input_size=(8, 8), color_mode="rgb", mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    img = np.empty((8, 8, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 51, 102
    out = preprocess([img], spec)
    assert out.shape == (1, 3, 8, 8)
    # R: (1.0 - 0.5) / 0.5 = 1; G: (0.2 - 0.25) / 0.25 = -0.2; B: (0.4 - 0) / 2 = 0.2
    np.testing.assert_allclose(out[0, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[0, 1], -0.2, atol=1e-6)
    np.testing.assert_allclose(out[0, 2], 0.2, atol=1e-6)


def test_single_mean_std_broadcasts_over_channels() -> None:
    spec = PreprocessSpec(input_size=(4, 4), color_mode="rgb", scale=1.0, mean=(10.0,), std=(4.0,))
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 18, 2
    out = preprocess([img], spec)
    np.testing.assert_array_equal(out[0, :, 0, 0], np.array([0.0, 2.0, -2.0], np.float32))


def test_gray_image_into_rgb_model_and_rgb_into_gray_model() -> None:
    gray = np.full((4, 4), 51, np.uint8)
    out = preprocess([gray], PreprocessSpec(input_size=(4, 4), color_mode="rgb"))
    assert out.shape == (1, 3, 4, 4)
    np.testing.assert_allclose(out, 0.2, atol=1e-7)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    out = preprocess([red], PreprocessSpec(input_size=(4, 4), scale=1.0))
    assert out.shape == (1, 1, 4, 4)
    assert (out == 76.0).all()


def test_batch_array_input_and_channel_order() -> None:
    batch = np.zeros((3, 5, 5, 3), np.uint8)
    for i in range(3):
        batch[i, ..., 0], batch[i, ..., 1], batch[i, ..., 2] = i, 10 + i, 20 + i
    out = preprocess(batch, PreprocessSpec(input_size=(5, 5), color_mode="rgb", scale=1.0))
    assert out.shape == (3, 3, 5, 5)
    assert out.flags["C_CONTIGUOUS"]
    for i in range(3):
        np.testing.assert_array_equal(out[i, :, 2, 2], [i, 10 + i, 20 + i])
    gray = np.stack([np.full((6, 6), v, np.uint8) for v in (0, 255)])
    out = preprocess(gray, PreprocessSpec(input_size=(6, 6)))
    assert out.shape == (2, 1, 6, 6)
    assert out[0].max() == 0.0 and out[1].min() == 1.0


def test_generator_input_is_accepted() -> None:
    out = preprocess((np.full((4, 4), v, np.uint8) for v in (0, 51)), PreprocessSpec(input_size=(4, 4)))
    assert out.shape == (2, 1, 4, 4)
    np.testing.assert_allclose(out[1], 0.2, atol=1e-7)


def test_non_uint8_image_is_rejected_with_its_index() -> None:
    ok = np.zeros((4, 4), np.uint8)
    with pytest.raises(DataError, match="image 1: expected dtype uint8 \\(decoded pixels\\), got float32"):
        preprocess([ok, np.zeros((4, 4), np.float32)], PreprocessSpec(input_size=(4, 4)))
    with pytest.raises(DataError, match="got float64"):
        preprocess(np.zeros((2, 4, 4)), PreprocessSpec(input_size=(4, 4)))


def test_empty_and_bad_shape_inputs() -> None:
    with pytest.raises(DataError, match="preprocess received no images"):
        preprocess([], PreprocessSpec())
    with pytest.raises(DataError, match="got \\(4, 4, 2\\)"):
        preprocess([np.zeros((4, 4, 2), np.uint8)], PreprocessSpec(input_size=(4, 4)))


# --- torch-free imports -----------------------------------------------------------------------------


def test_runtime_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import runtime.preprocess, runtime.metrics, runtime.artifacts, runtime.configs, runtime.errors\n"
        "runtime.artifacts.library_versions()\n"
        "print('torch' in sys.modules)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
