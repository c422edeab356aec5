"""The one preprocessing function shared by training's evaluation and every runtime backend.

A model's input contract (`PreprocessSpec`) is stored in the ONNX `metadata_props` and in the
checkpoint sidecar; `preprocess` turns decoded uint8 images into the float32 NCHW batch the model
expects. Training evaluation, calibration, parity and device inference all call this function, so
train and device cannot drift apart. numpy + OpenCV only: no torch.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from runtime.errors import ConfigError, DataError


class ColorMode(str, enum.Enum):
    GRAY = "gray"
    RGB = "rgb"
    BGR = "bgr"  # 3 channels, B first (models trained on OpenCV-decoded images)


class ResizePolicy(str, enum.Enum):
    STRETCH = "stretch"  # resize to H×W ignoring aspect (what both papers' pipelines do)
    LETTERBOX = "letterbox"  # keep aspect, pad with zeros
    CENTER_CROP = "center_crop"  # keep aspect, resize the short side, crop the centre


_INTERP = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class PreprocessSpec:
    """A model's input contract.

    Attributes:
        input_size: (height, width) in pixels.
        color_mode: ``gray`` (1 channel), ``rgb`` (3 channels, R first) or ``bgr`` (3 channels, B first).
        scale: Multiplier applied to uint8 pixels before normalisation (1/255 maps to [0, 1]).
        mean: Per-channel mean subtracted after scaling (one value, or one per channel).
        std: Per-channel std divided after the mean.
        resize: How an image of another size is brought to ``input_size``.
        interpolation: OpenCV interpolation name (``linear``, ``area``, ``nearest``).
    """

    input_size: tuple[int, int] = (64, 64)
    color_mode: ColorMode = ColorMode.GRAY
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: ResizePolicy = ResizePolicy.STRETCH
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        for name in ("input_size", "mean", "std"):
            if isinstance(getattr(self, name), (str, bytes)):  # "64" would otherwise become (6, 4)
                raise ConfigError(f"{name} must be a sequence of numbers, got the string {getattr(self, name)!r}")
        try:
            if any(float(v) != int(v) for v in self.input_size):
                raise ConfigError(f"input_size must be whole numbers of pixels, got {tuple(self.input_size)}")
            object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))
            object.__setattr__(self, "scale", float(self.scale))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(
                f"input_size, mean and std must be sequences of numbers and scale a number: {exc}"
            ) from None
        for name, enum_cls in (("color_mode", ColorMode), ("resize", ResizePolicy)):
            try:
                object.__setattr__(self, name, enum_cls(getattr(self, name)))
            except ValueError:
                valid = [m.value for m in enum_cls]
                raise ConfigError(f"{name} must be one of {valid}, got {getattr(self, name)!r}") from None
        if len(self.input_size) != 2 or min(self.input_size) <= 0:
            raise ConfigError(f"input_size must be (height, width) > 0, got {self.input_size}")
        for name, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) not in (1, self.channels):
                raise ConfigError(
                    f"{name} has {len(vals)} values; expected 1 or {self.channels} for color_mode={self.color_mode.value}"
                )
        if any(s == 0 for s in self.std):
            raise ConfigError(f"std must be non-zero, got {self.std}")
        for name, value in (("scale", self.scale), ("mean", self.mean), ("std", self.std)):
            if not np.isfinite(value).all():
                raise ConfigError(f"{name} must be finite, got {value}")
        scale, mean, inv_std = self._affine()
        with np.errstate(all="ignore"):  # the output is affine in the pixel: its ends are at 0 and 255
            ends = (np.array([0.0, 255.0], dtype=np.float32).reshape(1, 1, 2) * scale - mean) * inv_std
        if not np.isfinite(ends).all():
            raise ConfigError(
                f"scale={self.scale}, mean={self.mean}, std={self.std} map uint8 pixels outside the float32 "
                "range; use values of ordinary magnitude (e.g. scale 1/255, mean 0.5, std 0.5)"
            )
        if not isinstance(self.interpolation, str) or self.interpolation not in _INTERP:
            raise ConfigError(f"interpolation must be one of {sorted(_INTERP)}, got {self.interpolation!r}")

    def _affine(self) -> tuple[np.float32, np.ndarray, np.ndarray]:
        """(scale, mean, 1/std) in float32, shaped to broadcast over C×H×W, as `preprocess` applies them."""
        with np.errstate(over="ignore", divide="ignore"):
            mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
            inv_std = (1.0 / np.asarray(self.std, dtype=np.float32)).reshape(-1, 1, 1)
            return np.float32(self.scale), mean, inv_std

    @property
    def channels(self) -> int:
        return 1 if self.color_mode is ColorMode.GRAY else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed sample."""
        return (self.channels, *self.input_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["color_mode"] = self.color_mode.value
        d["resize"] = self.resize.value
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> PreprocessSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown preprocessing keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**dict(d))

    def to_metadata(self) -> dict[str, str]:
        """String key/values for ONNX ``metadata_props``."""
        return {"preprocess": json.dumps(self.to_dict(), sort_keys=True)}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str]) -> PreprocessSpec:
        if "preprocess" not in props:
            raise DataError("model metadata has no 'preprocess' entry; re-export it with `python -m export onnx`")
        try:
            return cls.from_dict(json.loads(props["preprocess"]))
        except json.JSONDecodeError as exc:
            raise DataError(f"model metadata 'preprocess' is not valid JSON ({exc}); re-export the model") from exc


def to_color(image: np.ndarray, mode: ColorMode) -> np.ndarray:
    """Convert a decoded uint8 image (H×W, H×W×1, H×W×3 RGB or H×W×4 RGBA) to ``mode``."""
    img = np.asarray(image)
    if img.size == 0 and img.ndim in (2, 3):
        raise DataError(f"expected a non-empty image, got shape {img.shape}; check the decoder or the face crop")
    if img.dtype != np.uint8:
        raise DataError(f"expected a decoded uint8 image, got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim == 2:
        return img if mode is ColorMode.GRAY else np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 3:
        if mode is ColorMode.BGR:
            return np.ascontiguousarray(img[:, :, ::-1])
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY) if mode is ColorMode.GRAY else img
    raise DataError(f"expected an image of shape H×W or H×W×{{1,3,4}}, got {img.shape}")


def resize_image(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Bring one colour-converted image to ``spec.input_size`` with the spec's resize policy."""
    h, w = spec.input_size
    if image.ndim not in (2, 3) or image.size == 0:
        raise DataError(f"expected a non-empty H×W or H×W×C image to resize, got shape {image.shape}")
    ih, iw = image.shape[:2]
    interp = _INTERP[spec.interpolation]
    if (ih, iw) == (h, w):
        return image
    try:
        return _resize(image, spec, h, w, ih, iw, interp)
    except cv2.error as exc:
        raise DataError(
            f"cannot resize an image of shape {image.shape} and dtype {image.dtype} to {h}×{w} "
            f"(expected a uint8 H×W or H×W×3 image): {str(exc).strip().splitlines()[-1]}"
        ) from None


def _resize(image: np.ndarray, spec: PreprocessSpec, h: int, w: int, ih: int, iw: int, interp: int) -> np.ndarray:
    if spec.resize is ResizePolicy.STRETCH:
        return cv2.resize(image, (w, h), interpolation=interp)
    if spec.resize is ResizePolicy.LETTERBOX:
        s = min(h / ih, w / iw)
        nh, nw = max(1, round(ih * s)), max(1, round(iw * s))
        small = cv2.resize(image, (nw, nh), interpolation=interp)
        out = np.zeros((h, w) + image.shape[2:], dtype=image.dtype)
        top, left = (h - nh) // 2, (w - nw) // 2
        out[top : top + nh, left : left + nw] = small
        return out
    s = max(h / ih, w / iw)  # CENTER_CROP
    nh, nw = max(h, round(ih * s)), max(w, round(iw * s))
    big = cv2.resize(image, (nw, nh), interpolation=interp)
    top, left = (nh - h) // 2, (nw - w) // 2
    return big[top : top + h, left : left + w]


def preprocess(images: np.ndarray | Sequence[np.ndarray] | Iterable[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Decoded uint8 images -> float32 batch (N, C, H, W) per ``spec``.

    Args:
        images: A sequence of uint8 images (each H×W gray or H×W×3 RGB, any size), or one uint8
            array of shape (N, H, W) / (N, H, W, 3).
        spec: The model's input contract.

    Returns:
        A C-contiguous float32 array of shape (N, C, H, W).

    Raises:
        DataError: On an empty input, an empty image, a non-uint8 image (float input, NaN/Inf
            included, is never accepted) or an unsupported shape.
    """
    if isinstance(images, np.ndarray) and images.ndim not in (3, 4):
        raise DataError(
            f"preprocess expects a list of images or one batch array of shape (N, H, W) / (N, H, W, C), "
            f"got an array of shape {images.shape}; wrap a single image in a list: [image]"
        )
    try:
        batch_in: Sequence[np.ndarray] = list(images)
    except TypeError:
        raise DataError(f"preprocess expects a list of images or a batch array, got {type(images).__name__}") from None
    if not batch_in:
        raise DataError("preprocess received no images")
    c = spec.channels
    h, w = spec.input_size
    out = np.empty((len(batch_in), c, h, w), dtype=np.float32)
    scale, mean, inv_std = spec._affine()
    for i, img in enumerate(batch_in):
        try:
            img = np.asarray(img)
        except ValueError as exc:  # ragged nested lists
            raise DataError(f"image {i}: not an array of pixels ({exc})") from None
        if img.dtype != np.uint8:
            raise DataError(
                f"image {i}: expected dtype uint8 (decoded pixels), got {img.dtype}; "
                "decode images with OpenCV/PIL, or convert floats in [0, 1] with (img * 255).round().astype(np.uint8)"
            )
        try:
            img = resize_image(to_color(img, spec.color_mode), spec)
        except DataError as exc:
            raise DataError(f"image {i}: {exc}") from None
        chw = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
        out[i] = (chw.astype(np.float32) * scale - mean) * inv_std
    return out
