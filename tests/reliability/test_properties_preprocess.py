"""Property-based tests (hypothesis) for runtime.preprocess: any input gives the contract or a clear error.

The contract of `preprocess(images, spec)`: decoded uint8 images of any size and layout (H×W,
H×W×1, H×W×3 RGB, H×W×4 RGBA) become a C-contiguous float32 batch of shape (N, C, H, W) whose
values are finite and lie in the range the spec implies, ``(p * scale - mean) / std`` for
p in [0, 255]. Anything else (other dtypes, NaN/Inf floats, empty images, other shapes, non-image
objects) raises a `DataError` that names what was received and what was expected; invalid spec
parameters raise a `ConfigError`. Never a raw numpy/OpenCV exception, never NaN/Inf output.

Float input is never accepted (the contract is decoded uint8 pixels), so NaN/Inf input is
rejected by its dtype before any arithmetic can spread it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runtime.errors import ConfigError, DataError, PipelineError
from runtime.preprocess import ColorMode, PreprocessSpec, ResizePolicy, preprocess, resize_image, to_color

# Reproducible in CI: no example database, derandomized search, no per-example deadline.
PROPS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

LAYOUTS = ("hw", "hw1", "hw3", "hw4")
NON_UINT8 = (
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
    np.complex64,
)


# --- strategies -------------------------------------------------------------------------------------


@st.composite
def image_sizes(draw) -> tuple[int, int]:
    """Small sizes, 1×1, and very wide / very tall strips."""
    kind = draw(st.sampled_from(["small", "small", "one", "wide", "tall"]))
    if kind == "one":
        return 1, 1
    if kind == "wide":
        return draw(st.integers(1, 3)), draw(st.integers(100, 700))
    if kind == "tall":
        return draw(st.integers(100, 700)), draw(st.integers(1, 3))
    return draw(st.integers(1, 80)), draw(st.integers(1, 80))


def shape_for(size: tuple[int, int], layout: str) -> tuple[int, ...]:
    h, w = size
    return {"hw": (h, w), "hw1": (h, w, 1), "hw3": (h, w, 3), "hw4": (h, w, 4)}[layout]


@st.composite
def uint8_images(draw, layout: str | None = None) -> np.ndarray:
    """A uint8 image in any layout: random noise, a constant, or the extremes 0/255."""
    layout = layout or draw(st.sampled_from(LAYOUTS))
    shape = shape_for(draw(image_sizes()), layout)
    content = draw(st.sampled_from(["noise", "constant", "extremes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if content == "constant":
        img = np.full(shape, draw(st.integers(0, 255)), np.uint8)
    elif content == "extremes":
        img = (rng.integers(0, 2, size=shape) * 255).astype(np.uint8)
    else:
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
    if draw(st.booleans()) and img.shape[1] > 1:  # a non-contiguous view, as slicing a frame gives
        img = img[:, ::-1]
    return img


@st.composite
def specs(draw) -> PreprocessSpec:
    """Valid specs over every user-controlled parameter."""
    mode = draw(st.sampled_from(list(ColorMode)))
    channels = 1 if mode is ColorMode.GRAY else 3
    finite = st.floats(-4.0, 4.0, allow_nan=False)
    nonzero_std = st.one_of(st.floats(0.01, 4.0), st.floats(-4.0, -0.01))
    n_stats = draw(st.sampled_from([1, channels]))
    return PreprocessSpec(
        input_size=(draw(st.integers(1, 64)), draw(st.integers(1, 64))),
        color_mode=draw(st.sampled_from([mode, mode.value])),
        scale=draw(st.one_of(st.sampled_from([1 / 255, 1 / 127.5, 1.0]), st.floats(1e-4, 10.0))),
        mean=tuple(draw(st.lists(finite, min_size=n_stats, max_size=n_stats))),
        std=tuple(draw(st.lists(nonzero_std, min_size=n_stats, max_size=n_stats))),
        resize=draw(st.sampled_from([*ResizePolicy, *(p.value for p in ResizePolicy)])),
        interpolation=draw(st.sampled_from(["linear", "area", "nearest"])),
    )


# --- helpers ----------------------------------------------------------------------------------------


def expected_bounds(spec: PreprocessSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel (low, high, tolerance) of the output, derived from the spec in float64."""
    c = spec.channels
    mean = np.broadcast_to(np.asarray(spec.mean, np.float64), (c,))
    std = np.broadcast_to(np.asarray(spec.std, np.float64), (c,))
    a, b = (0.0 - mean) / std, (255.0 * spec.scale - mean) / std
    # float32 arithmetic: a few ulps of the largest intermediate term
    tol = 1e-5 * (255.0 * abs(spec.scale) + np.abs(mean)) / np.abs(std) + 1e-6
    return np.minimum(a, b), np.maximum(a, b), tol


def pixel_value(p: float, spec: PreprocessSpec) -> np.ndarray:
    """What a pixel value p becomes in each channel, in float64."""
    c = spec.channels
    mean = np.broadcast_to(np.asarray(spec.mean, np.float64), (c,))
    std = np.broadcast_to(np.asarray(spec.std, np.float64), (c,))
    return (p * spec.scale - mean) / std


def assert_contract(out: np.ndarray, n: int, spec: PreprocessSpec) -> None:
    assert isinstance(out, np.ndarray)
    assert out.shape == (n, spec.channels, *spec.input_size)
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    assert np.isfinite(out).all(), "NaN/Inf out of finite uint8 input"
    lo, hi, tol = expected_bounds(spec)
    per_channel = out.transpose(1, 0, 2, 3).reshape(spec.channels, -1)
    assert (per_channel.min(axis=1) >= lo - tol).all(), (per_channel.min(axis=1), lo)
    assert (per_channel.max(axis=1) <= hi + tol).all(), (per_channel.max(axis=1), hi)


def assert_clear_data_error(exc: BaseException, *fragments: str) -> None:
    """A DataError (not a raw numpy/cv2 exception) whose message names what it got."""
    assert type(exc) is DataError, f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    assert "expect" in msg, msg  # says what is expected
    for frag in fragments:
        assert frag in msg, (frag, msg)


# --- valid input: the contract ----------------------------------------------------------------------


@PROPS
@given(spec=specs(), images=st.lists(uint8_images(), min_size=1, max_size=3))
def test_any_uint8_image_gives_the_contract(spec: PreprocessSpec, images: list[np.ndarray]) -> None:
    out = preprocess(images, spec)
    assert_contract(out, len(images), spec)


@PROPS
@given(spec=specs(), size=image_sizes(), layout=st.sampled_from(LAYOUTS), value=st.integers(0, 255))
def test_constant_image_maps_to_its_value_or_the_padding(
    spec: PreprocessSpec, size: tuple[int, int], layout: str, value: int
) -> None:
    """Resizing never invents values: a constant image stays constant (letterbox adds only zeros)."""
    out = preprocess([np.full(shape_for(size, layout), value, np.uint8)], spec)[0]
    lo, hi, tol = expected_bounds(spec)
    want = pixel_value(value, spec)
    pad = pixel_value(0, spec)
    for ch in range(spec.channels):
        is_value = np.abs(out[ch] - want[ch]) <= tol[ch]
        if spec.resize is ResizePolicy.LETTERBOX:
            is_value |= np.abs(out[ch] - pad[ch]) <= tol[ch]
        assert is_value.all(), (ch, np.unique(out[ch]), want[ch], pad[ch])
    if spec.resize is not ResizePolicy.LETTERBOX or size == spec.input_size:
        assert np.abs(out - want[:, None, None]).max() <= tol.max()


@PROPS
@given(
    spec=specs(),
    n=st.integers(1, 3),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**32 - 1),
)
def test_batch_array_equals_list_of_images(
    spec: PreprocessSpec, n: int, size: tuple[int, int], layout: str, seed: int
) -> None:
    batch = np.random.default_rng(seed).integers(0, 256, size=(n, *shape_for(size, layout)), dtype=np.uint8)
    out = preprocess(batch, spec)
    assert_contract(out, n, spec)
    np.testing.assert_array_equal(out, preprocess(list(batch), spec))
    np.testing.assert_array_equal(out[-1:], preprocess([batch[-1]], spec))  # samples are independent


@PROPS
@given(image=uint8_images(), mode=st.sampled_from(list(ColorMode)))
def test_to_color_gives_the_mode_and_keeps_the_pixels(image: np.ndarray, mode: ColorMode) -> None:
    out = to_color(image, mode)
    h, w = image.shape[:2]
    assert out.dtype == np.uint8
    assert out.shape == ((h, w) if mode is ColorMode.GRAY else (h, w, 3))
    gray_in = image.ndim == 2 or image.shape[2] == 1
    if gray_in:
        plane = image.reshape(h, w)
        np.testing.assert_array_equal(out if mode is ColorMode.GRAY else out[:, :, 1], plane)
        if mode in (ColorMode.RGB, ColorMode.BGR):
            assert (out == plane[:, :, None]).all()
    else:
        rgb = image[:, :, :3]
        if mode is ColorMode.RGB:
            np.testing.assert_array_equal(out, rgb)  # alpha dropped, channel order kept
        elif mode is ColorMode.BGR:
            np.testing.assert_array_equal(out, rgb[:, :, ::-1])  # alpha dropped, channels reversed
        else:
            r, g, b = (rgb[:, :, k].astype(np.float64) for k in range(3))
            luma = 0.299 * r + 0.587 * g + 0.114 * b  # ITU-R BT.601, R first (not OpenCV's BGR order)
            assert np.abs(out.astype(np.float64) - luma).max() <= 1.0


@PROPS
@given(spec=specs(), image=uint8_images())
def test_resize_image_gives_the_input_size_and_no_new_values(spec: PreprocessSpec, image: np.ndarray) -> None:
    img = to_color(image, spec.color_mode)
    out = resize_image(img, spec)
    assert out.shape == tuple(spec.input_size) + img.shape[2:]
    assert out.dtype == np.uint8
    low = 0 if spec.resize is ResizePolicy.LETTERBOX else int(img.min())
    assert int(out.min()) >= low and int(out.max()) <= int(img.max())


# --- invalid input: a clear DataError ---------------------------------------------------------------


@PROPS
@given(
    dtype=st.sampled_from(NON_UINT8),
    size=image_sizes(),
    layout=st.sampled_from(LAYOUTS),
    special=st.sampled_from([None, np.nan, np.inf, -np.inf]),
    position=st.integers(0, 2),
    spec=specs(),
)
def test_non_uint8_images_raise_a_clear_error(dtype, size, layout, special, position, spec) -> None:
    img = np.ones(shape_for(size, layout), dtype=dtype)
    if special is not None and np.issubdtype(img.dtype, np.inexact):
        img.flat[0] = special  # NaN/Inf in float input must not pass through silently
    images = [np.zeros((4, 4), np.uint8)] * position + [img]
    with pytest.raises(PipelineError) as exc:
        preprocess(images, spec)
    assert_clear_data_error(exc.value, f"image {position}", "uint8", np.dtype(dtype).name)
    with pytest.raises(PipelineError) as exc:
        to_color(img, spec.color_mode)
    assert_clear_data_error(exc.value, "uint8", np.dtype(dtype).name)


@PROPS
@given(
    zero_dims=st.sampled_from([(0,), (1,), (0, 1)]),
    other=st.integers(1, 50),
    layout=st.sampled_from(LAYOUTS),
    spec=specs(),
    as_batch=st.booleans(),
)
def test_empty_images_raise_a_clear_error(zero_dims, other, layout, spec, as_batch) -> None:
    size = [other, other]
    for d in zero_dims:
        size[d] = 0
    shape = shape_for(tuple(size), layout)
    img = np.zeros(shape, np.uint8)
    with pytest.raises(PipelineError) as exc:
        preprocess(img[None] if as_batch else [img], spec)
    assert_clear_data_error(exc.value, "image 0", str(shape))
    with pytest.raises(PipelineError) as exc:
        resize_image(img if img.ndim == 2 or img.shape[2] != 4 else img[:, :, :3], spec)
    assert_clear_data_error(exc.value, str(img.shape[:2]).rstrip(")"))


@st.composite
def bad_shapes(draw) -> tuple[int, ...]:
    kind = draw(st.sampled_from(["1d", "channels", "5d"]))
    if kind == "1d":
        return (draw(st.integers(1, 50)),)
    if kind == "channels":
        return (draw(st.integers(1, 20)), draw(st.integers(1, 20)), draw(st.sampled_from([2, 5, 6, 8])))
    return tuple(draw(st.lists(st.integers(1, 4), min_size=4, max_size=5)))


@PROPS
@given(shape=bad_shapes(), spec=specs())
def test_unsupported_shapes_raise_a_clear_error(shape: tuple[int, ...], spec: PreprocessSpec) -> None:
    img = np.zeros(shape, np.uint8)
    with pytest.raises(PipelineError) as exc:
        preprocess([img], spec)
    assert_clear_data_error(exc.value, "image 0", str(shape))
    with pytest.raises(PipelineError) as exc:
        to_color(img, spec.color_mode)
    assert_clear_data_error(exc.value, str(shape))


@PROPS
@given(
    images=st.one_of(
        st.none(),
        st.integers(),
        st.floats(),
        st.just([]),
        st.just(()),
        st.lists(st.lists(st.integers(0, 255), min_size=0, max_size=4), min_size=2, max_size=4),  # ragged
        st.lists(st.text(max_size=5), min_size=1, max_size=3),
        st.builds(lambda h, w: np.zeros((h, w), np.uint8), st.integers(1, 9), st.integers(1, 9)),  # no batch axis
        st.builds(lambda n: np.zeros((n,), np.uint8), st.integers(0, 9)),
        st.just(np.zeros((0, 4, 4), np.uint8)),
    ),
    spec=specs(),
)
def test_non_image_inputs_raise_a_clear_error(images, spec: PreprocessSpec) -> None:
    try:
        out = preprocess(images, spec)
    except PipelineError as exc:
        assert type(exc) is DataError, f"{type(exc).__name__}: {exc}"
        assert "expect" in str(exc) or "no images" in str(exc), str(exc)
    else:  # none of these is a list of uint8 images or a uint8 batch array
        pytest.fail(f"preprocess accepted {images!r} and returned shape {out.shape}")


# --- the spec's parameters --------------------------------------------------------------------------


wild_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-10.0, 10.0),
    st.sampled_from([0.0, -0.0, 1e-45, 1e-39, 1e-30, 3e38, 1e300, 1 / 255]),
)
wild_sequences = st.one_of(
    st.lists(wild_floats, min_size=0, max_size=4),
    st.text(max_size=4),
    st.none(),
    wild_floats,
    st.lists(st.text(max_size=3), min_size=1, max_size=3),
)


WILD_FIELDS = {
    "input_size": st.one_of(
        st.tuples(st.integers(-3, 48), st.integers(-3, 48)),
        st.lists(st.integers(1, 48), min_size=0, max_size=3),
        st.tuples(st.one_of(st.floats(allow_nan=True), st.floats(1.0, 48.0)), st.integers(1, 8)),
        st.text(max_size=3),
        st.integers(),
        st.none(),
    ),
    "color_mode": st.one_of(st.sampled_from(["gray", "rgb", ColorMode.RGB]), st.text(max_size=5), st.integers()),
    "scale": st.one_of(wild_floats, st.text(max_size=3), st.none()),
    "mean": wild_sequences,
    "std": wild_sequences,
    "resize": st.one_of(st.sampled_from([p.value for p in ResizePolicy]), st.text(max_size=6)),
    "interpolation": st.one_of(
        st.sampled_from(["linear", "area", "nearest"]), st.text(max_size=6), st.lists(st.text(max_size=2), max_size=2)
    ),
}


@PROPS
@given(
    base=specs(),
    wild=st.lists(st.sampled_from(sorted(WILD_FIELDS)), min_size=1, max_size=2, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: WILD_FIELDS[n] for n in names})
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_spec_parameters_are_valid_or_a_config_error(base: PreprocessSpec, wild: dict, seed: int) -> None:
    """A spec either refuses its parameters with a ConfigError, or preprocesses into finite values.

    One or two fields of a valid spec are replaced by arbitrary values (NaN, Inf, subnormal, huge,
    strings, wrong lengths, wrong types), so each wild value is actually reached by validation.
    """
    params = {**base.to_dict(), **wild}
    try:
        spec = PreprocessSpec(**params)
    except PipelineError as exc:
        assert type(exc) is ConfigError, f"{type(exc).__name__}: {exc}"
        return
    # Accepted: every parameter must be what its docstring says, and the output must be finite.
    assert len(spec.input_size) == 2 and all(isinstance(v, int) and v > 0 for v in spec.input_size)
    if "input_size" in wild:
        assert [float(v) for v in wild["input_size"]] == list(spec.input_size)  # no silent truncation
    assert all(isinstance(v, float) and math.isfinite(v) for v in (spec.scale, *spec.mean, *spec.std))
    assert all(v != 0 for v in spec.std)
    assume(spec.input_size[0] * spec.input_size[1] <= 64 * 64)
    rng = np.random.default_rng(seed)
    images = [
        rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8),
        np.full((3, 9), 255, np.uint8),
        np.zeros((2, 2), np.uint8),
    ]
    out = preprocess(images, spec)
    assert_contract(out, 3, spec)
    assert PreprocessSpec.from_metadata(spec.to_metadata()) == spec


@PROPS
@given(spec=specs())
def test_spec_metadata_round_trip(spec: PreprocessSpec) -> None:
    back = PreprocessSpec.from_metadata(spec.to_metadata())
    assert back == spec
    assert back.input_shape == spec.input_shape
    img = np.arange(7 * 11, dtype=np.uint8).reshape(7, 11)
    np.testing.assert_array_equal(preprocess([img], back), preprocess([img], spec))
