"""NNCF post-training quantization of the ONNX model into the Q/DQ form TensorRT consumes.

Settings per target (`quantize.config.Target`):

- ``tensorrt``: preset PERFORMANCE (symmetric), activations **per tensor** and symmetric,
  weights per-channel symmetric. NNCF's defaults put a per-channel activation quantizer on
  LANMSFF's first depthwise conv input, which neither TensorRT nor onnxruntime's optimized
  session accepts (docs/measured-facts.md), hence the explicit ``activations_quantization_params``.
  NNCF's ONNX backend writes a symmetric quantizer on a non-negative tensor (after ReLU, Sigmoid,
  the [0, 1] image) as UINT8 with zero point 0, and its hardware config refuses
  ``signedness_to_force=True`` for activations; TensorRT needs INT8, so `to_signed_int8` rewrites
  those quantizers to INT8 covering the same range (scale × 255/127: one bit less resolution on
  non-negative tensors, which is what TensorRT's symmetric INT8 costs anyway).
- ``cpu``: preset MIXED: unsigned asymmetric activations, signed symmetric per-channel weights
  (U8S8), the fast form for x86 onnxruntime. The FP32 graph first gets the cpu target's exact
  rewrites and keeps its classifier in float (`quantize.targets.cpu.before_quantization`), as with
  the onnxruntime method.

``max_drop_pts`` switches to `nncf.quantize_with_accuracy_control`: it quantizes, scores top-1 on
the validation set, and reverts the layers that cost the most accuracy to float, one by one, until
the drop is within the bound. The reverted layers are reported (by comparing which compute ops
still have dequantized inputs).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from runtime.backends.ort import make_session, predict
from runtime.cli import loggers_held
from runtime.errors import QuantizationError

log = logging.getLogger(__name__)

# Ops TensorRT runs in float even inside an INT8 engine (onnx-tensorrt support matrix: no INT8).
# For the tensorrt target NNCF leaves their inputs unquantized: Q/DQ there only adds rounding and a
# reformat. Measured on the dev model: mean |Δlogit| 0.057 -> 0.050, 78 -> 58 QuantizeLinear, no
# lint warnings left.
TRT_FLOAT_ONLY_TYPES = ("Max", "Min", "Sub", "Mul", "Div", "ReduceMean", "ReduceMax", "ReduceSum", "Softmax", "Split")


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs every ignored node at INFO; keep that at DEBUG level of our own logging.

    NNCF also draws an unlabelled rich progress bar ("Statistics collection") for every pass, 5-6
    of them per file with the 'auto' ignored scope; the caller shows one labelled progress display
    per step instead, so NNCF's own bars are switched off here (its `track` has a ``disable`` flag;
    where a future NNCF moves it, its bars simply show again).
    """
    try:
        from nncf.common.logging import track_progress
    except ImportError:  # pragma: no cover - older/newer NNCF layout
        track_progress = None
    init = getattr(getattr(track_progress, "track", None), "__init__", None)
    if init is not None:

        def quiet_init(self, *args, **kwargs):
            kwargs["disable"] = True
            init(self, *args, **kwargs)

        track_progress.track.__init__ = quiet_init
    try:
        with loggers_held(("nncf",), unless=log):
            yield
    finally:
        if init is not None:
            track_progress.track.__init__ = init


def _advanced_parameters(target: str, bias_correction: bool = False):
    from nncf.common.quantization.structs import QuantizationScheme as QM
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    act_mode = QM.SYMMETRIC if target == "tensorrt" else QM.ASYMMETRIC
    return AdvancedQuantizationParameters(
        # Per-tensor activations: TensorRT's rule, and onnxruntime's QLinearConv needs a scalar zero point.
        activations_quantization_params=QuantizationParameters(per_channel=False, mode=act_mode),
        weights_quantization_params=QuantizationParameters(per_channel=True, mode=QM.SYMMETRIC),
        # Global min/max like TensorRT's and onnxruntime's MinMax calibrators. NNCF's default for
        # activations averages per-sample extremes, which clips LANMSFF's rare large activations:
        # measured on the 15-epoch dev model, mean |Δlogit| 0.56 and 64% top-1 agreement vs 0.10
        # and 86% with global min/max.
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
        # Fast bias correction shifted the dev model's logits more than it corrected (mean |Δlogit|
        # 0.088 with it, 0.036 without, UINT8 form): off unless asked for.
        disable_bias_correction=not bias_correction,
    )


def nncf_settings(target: str, bias_correction: bool = False) -> dict[str, Any]:
    """The NNCF settings used for ``target`` (recorded in the sidecar)."""
    target = str(getattr(target, "value", target))
    if target not in ("tensorrt", "cpu"):
        raise QuantizationError(f"unknown target {target!r}; valid: tensorrt, cpu")
    return {
        "preset": "performance" if target == "tensorrt" else "mixed",
        "target_device": "ANY",
        "activations": {"per_channel": False, "mode": "symmetric" if target == "tensorrt" else "asymmetric"},
        "weights": {"per_channel": True, "mode": "symmetric"},
        "activation_range": "global min/max",
        "signed_int8_rewrite": target == "tensorrt",
        "bias_correction": "fast" if bias_correction else "off",
    }


def _dataset(tensors: np.ndarray, input_name: str, labels: np.ndarray | None = None):
    import nncf

    if labels is None:
        return nncf.Dataset(list(tensors), lambda x: {input_name: x[None]})
    return nncf.Dataset(list(zip(tensors, labels)), lambda item: {input_name: item[0][None]})


class _AccuracyFn:
    """NNCF validation function: top-1 accuracy on (tensor, label) items, one session per model.

    For the tensorrt target the model NNCF hands over is still in its UINT8 form; it is scored
    after `to_signed_int8` (on a copy), i.e. in the form that will be written, so the accuracy
    bound holds for the output file and not for an intermediate.
    """

    def __init__(self, input_name: str, signed: bool) -> None:
        self.input_name = input_name
        self.signed = signed
        self._cache: tuple[Any, Any] | None = None  # (model object, session): NNCF scores one model many times

    def __call__(self, model, items: Iterable) -> tuple[float, list[float]]:
        if self._cache is None or self._cache[0] is not model:
            scored = model
            if self.signed:
                import copy

                scored = copy.deepcopy(model)
                to_signed_int8(scored)
            self._cache = (model, make_session(scored))
        sess = self._cache[1]
        items = list(items)
        x = np.stack([np.asarray(t, dtype=np.float32) for t, _ in items])
        y = np.asarray([int(lab) for _, lab in items])
        pred = predict(sess, x).argmax(axis=1)
        correct = (pred == y).astype(np.float64)
        return float(correct.mean()), correct.tolist()


def quantize_nncf(
    model,
    calibration: np.ndarray,
    *,
    target: str,
    ignored: Iterable[str] = (),
    max_drop_pts: float | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    input_name: str | None = None,
    bias_correction: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Quantize an ONNX ModelProto with NNCF.

    Args:
        model: The FP32 ModelProto (left unchanged).
        calibration: Preprocessed calibration tensors (N, C, H, W).
        target: ``tensorrt`` or ``cpu``.
        ignored: Node names kept in float (NNCF ``IgnoredScope(names=...)``).
        max_drop_pts: When set, accuracy-controlled quantization with this top-1 bound in
            percentage points (needs ``validation``).
        validation: (tensors, labels) for accuracy control.
        input_name: Graph input to feed (default: the first).
        bias_correction: NNCF fast bias correction.

    Returns:
        (quantized ModelProto, info: settings, time, and for accuracy control the reverted ops).
    """
    import nncf

    from runtime.qdq_lint import quantized_ops

    target = str(getattr(target, "value", target))
    settings = nncf_settings(target, bias_correction)
    adv = _advanced_parameters(target, bias_correction)
    input_name = input_name or next(i.name for i in model.graph.input)
    ignored = list(dict.fromkeys(ignored))
    cpu_info: dict[str, Any] = {}
    if target == "cpu":  # the cpu target's FP32 rewrites and float classifier, as for quantize_ort
        from quantize.targets import cpu

        model, cpu_info, keep_float = cpu.before_quantization(model, calibration[:16], input_name=input_name)
        ignored += [n for n in keep_float if n not in ignored]
    present = {n.op_type for n in model.graph.node}
    float_types = [t for t in TRT_FLOAT_ONLY_TYPES if t in present] if target == "tensorrt" else []
    scope = nncf.IgnoredScope(names=ignored, types=float_types, validate=False) if ignored or float_types else None
    preset = nncf.QuantizationPreset.PERFORMANCE if target == "tensorrt" else nncf.QuantizationPreset.MIXED
    calib_ds = _dataset(calibration, input_name)
    info: dict[str, Any] = {"settings": settings, "ignored_scope": ignored, "float_only_types": float_types}
    info.update(cpu_info)
    t0 = time.perf_counter()
    try:
        with _quiet_nncf():
            if max_drop_pts is None:
                q = nncf.quantize(
                    model,
                    calib_ds,
                    preset=preset,
                    subset_size=len(calibration),
                    ignored_scope=scope,
                    advanced_parameters=adv,
                )
            else:
                if validation is None:
                    raise QuantizationError("accuracy-controlled quantization (--max-drop) needs a validation set")
                from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

                vx, vy = validation
                q = nncf.quantize_with_accuracy_control(
                    model,
                    calib_ds,
                    _dataset(vx, input_name, vy),
                    _AccuracyFn(input_name, signed=target == "tensorrt"),
                    max_drop=max_drop_pts / 100.0,
                    preset=preset,
                    subset_size=len(calibration),
                    ignored_scope=scope,
                    advanced_quantization_parameters=adv,
                    advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(),
                )
                info["accuracy_control"] = {
                    "max_drop_pts": max_drop_pts,
                    "metric": "top-1 accuracy",
                    "validation_size": len(vx),
                }
    except QuantizationError:
        raise
    except Exception as exc:  # nncf raises ValueError, nncf.ValidationError, InternalError...
        raise QuantizationError(f"NNCF quantization failed for target {target}: {type(exc).__name__}: {exc}") from exc
    info["quantize_s"] = time.perf_counter() - t0
    if target == "tensorrt":
        info["signed_rewrites"] = to_signed_int8(q)
    if max_drop_pts is not None:
        # Which compute ops the restorer put back in float: quantizable in a plain run, float now.
        with _quiet_nncf():
            plain_model = nncf.quantize(
                model,
                calib_ds,
                preset=preset,
                subset_size=len(calibration),
                ignored_scope=scope,
                advanced_parameters=adv,
            )
        plain = quantized_ops(plain_model)["int8"]
        now = set(quantized_ops(q)["int8"])
        info["accuracy_control"]["reverted_to_float"] = [n for n in plain if n not in now]
    return q, info


def to_signed_int8(model) -> int:
    """Rewrite UINT8 zero-point-0 quantizers as INT8 with the same real range (in place).

    A UINT8 quantizer with zero point 0 and scale s covers [0, 255·s]; an INT8 one with scale
    s' = 255·s/127 covers [-128·s', 127·s'] ⊇ [0, 255·s]. Both the QuantizeLinear and the
    DequantizeLinear of a pair are rewritten, each with its own new initializers, so shared
    initializers are never changed under another node.

    Returns:
        The number of Q/DQ nodes rewritten.
    """
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    retyped: set[str] = set()
    count = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp_init = inits.get(node.input[2])
        scale_init = inits.get(node.input[1])
        if zp_init is None or scale_init is None or zp_init.data_type != TensorProto.UINT8:
            continue
        zp = numpy_helper.to_array(zp_init)
        if np.any(zp != 0):
            continue  # asymmetric: not ours to fix (the lint reports it)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            continue  # a stored uint8 weight would need its values changed too; NNCF weights are int8
        scale = numpy_helper.to_array(scale_init).astype(np.float32)
        base = f"{node.name or node.op_type}_{count}"
        new_scale = numpy_helper.from_array((scale * np.float32(255.0 / 127.0)).astype(scale.dtype), f"{base}_s8_scale")
        new_zp = numpy_helper.from_array(np.zeros_like(zp, dtype=np.int8), f"{base}_s8_zero_point")
        model.graph.initializer.extend([new_scale, new_zp])
        inits[new_scale.name], inits[new_zp.name] = new_scale, new_zp
        node.input[1], node.input[2] = new_scale.name, new_zp.name
        if node.op_type == "QuantizeLinear":
            retyped.add(node.output[0])
        count += 1
    # Shape inference recorded the Q outputs as uint8; onnxruntime checks value_info types.
    for vi in list(model.graph.value_info) + list(model.graph.output):
        if vi.name in retyped and vi.type.tensor_type.elem_type == TensorProto.UINT8:
            vi.type.tensor_type.elem_type = TensorProto.INT8
    _drop_unused_initializers(model)
    return count


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input}
    used.update(o.name for o in model.graph.output)
    keep = [i for i in model.graph.initializer if i.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
