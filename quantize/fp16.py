"""FP16 graph with FP32 inputs and outputs, for TensorRT's strongly typed networks.

TensorRT 11 dropped the implicit ``FP16`` builder flag: precision lives in the ONNX types, so the
FP16 model is a graph whose tensors and weights are float16, with a Cast at the float32 input and
output (the runtime keeps feeding float32 and reading float32 logits).

The converter is onnxconverter-common's ``float16`` module, which onnxruntime vendors as
``onnxruntime.transformers.float16`` (onnxconverter-common itself is not installed here). Ops in
``keep_fp32`` stay float32 with Casts around them. The default keeps the *reductions*
(ReduceMean/ReduceSum... and global pooling: a 64×64 mean accumulated in half precision loses
about 3 significant bits) and the exponential family (Softmax, Exp, Log, Pow): what can overflow
65504 or lose precision in accumulation. Sigmoid, Min/Max and convolutions are safe in FP16 for
inputs in [0, 1] and BN-folded weights; the parity check in the report measures it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from runtime.errors import QuantizationError

log = logging.getLogger(__name__)

DEFAULT_KEEP_FP32: tuple[str, ...] = (
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceProd",
    "GlobalAveragePool",
    "GlobalLpPool",
    "Softmax",
    "LogSoftmax",
    "Exp",
    "Log",
    "Pow",
    # Not numerics: ops onnxruntime and onnxconverter-common keep float32 by default (no FP16 kernels).
    "Range",
    "CumSum",
    "TopK",
    "NonMaxSuppression",
    "RoiAlign",
    "RandomUniformLike",
    "Upsample",
)


def convert_fp16(model, *, keep_fp32_ops: Iterable[str] = DEFAULT_KEEP_FP32, keep_fp32_nodes: Iterable[str] = ()):
    """Convert a float32 ModelProto to float16 with float32 graph inputs and outputs.

    Args:
        model: The FP32 ModelProto (left unchanged).
        keep_fp32_ops: Op types left in float32.
        keep_fp32_nodes: Node names left in float32.

    Returns:
        (FP16 ModelProto, info dict: ops kept, counts of FP16/FP32 initializers, time).

    Raises:
        QuantizationError: when the converter fails.
    """
    import copy

    from onnx import TensorProto

    try:
        from onnxruntime.transformers import float16
    except ImportError as exc:  # pragma: no cover - onnxruntime always ships it
        from runtime.errors import MissingDependencyError

        raise MissingDependencyError(
            f"onnxruntime.transformers.float16 is not importable ({exc}); install onnxruntime or onnxconverter-common"
        ) from exc
    t0 = time.perf_counter()
    keep_ops = list(dict.fromkeys(keep_fp32_ops))
    keep_nodes = list(dict.fromkeys(keep_fp32_nodes))
    try:
        out = float16.convert_float_to_float16(
            copy.deepcopy(model), keep_io_types=True, op_block_list=keep_ops, node_block_list=keep_nodes
        )
    except Exception as exc:  # the converter raises ValueError/AssertionError/onnx errors
        raise QuantizationError(f"FP16 conversion failed: {type(exc).__name__}: {exc}") from exc
    # The converter appends the Casts it inserts at the end of the node list, so nodes read tensors
    # produced later: onnxruntime tolerates that, onnx.checker and Polygraphy do not. Sort the graph.
    out = _topological_sort(out)
    kinds = [i.data_type for i in out.graph.initializer]
    float_types = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16"}
    present = {n.op_type for n in model.graph.node}
    info: dict[str, Any] = {
        "converter": "onnxruntime.transformers.float16 (onnxconverter-common)",
        "keep_fp32_ops": keep_ops,
        "keep_fp32_ops_present": sorted(present & set(keep_ops)),
        "keep_fp32_nodes": keep_nodes,
        "initializers": {v: sum(1 for k in kinds if k == t) for t, v in float_types.items()},
        "casts_inserted": sum(1 for n in out.graph.node if n.op_type == "Cast")
        - sum(1 for n in model.graph.node if n.op_type == "Cast"),
        "convert_s": time.perf_counter() - t0,
    }
    _check_io_float32(out)
    return out, info


def _topological_sort(model):
    """The model with its nodes (and subgraphs') in topological order (onnx-ir's sort)."""
    import onnx_ir as ir

    ir_model = ir.from_proto(model)
    ir_model.graph.sort()
    return ir.to_proto(ir_model)


def _check_io_float32(model) -> None:
    from onnx import TensorProto

    bad = [
        v.name
        for v in list(model.graph.input) + list(model.graph.output)
        if v.type.tensor_type.elem_type not in (TensorProto.FLOAT, 0)
        and v.type.tensor_type.elem_type != TensorProto.INT64
    ]
    if bad:
        raise QuantizationError(f"FP16 graph has non-float32 inputs/outputs {bad}; the runtime feeds and reads float32")


def fp16_weight_overflow(model) -> list[str]:
    """Initializers whose float32 values exceed the float16 range (they would become inf)."""
    from onnx import TensorProto, numpy_helper

    out = []
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            a = numpy_helper.to_array(init)
            if a.size and float(np.abs(a).max()) > 65504.0:
                out.append(init.name)
    return out
