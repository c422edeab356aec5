"""Real TensorRT / GPU checks. They skip with the reason on machines without them (all of ours so
far: see docs/tensorrt.md for what has and has not run on real TensorRT)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from runtime.trt.compat import tensorrt_unavailable_reason
from runtime.trt.cuda import IMPLEMENTATIONS, cuda_unavailable_reason, get_cuda

TRT_REASON = tensorrt_unavailable_reason()
CUDA_REASON = cuda_unavailable_reason()


@pytest.mark.gpu
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_cuda_roundtrip_stream_and_events(impl):
    reason = cuda_unavailable_reason(impl)
    if reason:
        pytest.skip(f"{impl}: {reason}")
    api = get_cuda(impl)
    try:
        dev = api.device()
        assert dev.name and dev.compute_capability.count(".") == 1
        stream = api.create_stream()
        src = api.alloc_pinned((1 << 20,), np.float32)
        src.array[:] = np.arange(src.array.size, dtype=np.float32)
        dst = api.alloc_pinned((1 << 20,), np.float32)
        buf = api.alloc_device(src.nbytes)
        ms = api.time_ms(
            lambda: (api.copy_htod_async(buf, src.array, stream), api.copy_dtoh_async(dst.array, buf, stream)), stream
        )
        api.synchronize(stream)
        np.testing.assert_array_equal(dst.array, src.array)
        assert 0.0 < ms < 1000.0
        for b in (buf, src, dst):
            b.free()
        api.destroy_stream(stream)
    finally:
        api.close()


def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((8, 7)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 7])],
        [w, fc],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.gpu
@pytest.mark.tensorrt
@pytest.mark.skipif(bool(TRT_REASON or CUDA_REASON), reason=f"needs TensorRT and a GPU: {TRT_REASON or CUDA_REASON}")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_fp32_engine_matches_onnxruntime(tmp_path, cuda_graph):
    import onnxruntime as ort

    from runtime.backends.trt import TrtBackend

    onnx_path = tmp_path / "tiny.onnx"
    _tiny_onnx(onnx_path)
    x = np.random.default_rng(1).random((4, 1, 32, 32), dtype=np.float32)
    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with TrtBackend(
        onnx_path,
        precision="fp32",
        batch="1:4:8",
        cuda_graph=cuda_graph,
        build={"timing_cache": tmp_path / "t.cache", "min_precision_share": 0.0},
    ) as b:
        out = b.infer({"input": x})["logits"]
        assert b.bench_fn(4)() > 0.0
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=1e-3)


@pytest.mark.tensorrt
def test_lean_runtime_creation_in_a_child_process():
    reason = tensorrt_unavailable_reason(lean=True)
    if reason:
        pytest.skip(reason)
    # Without a driver TensorRT logs "CUDA initialization failure" (and may crash at exit): child process.
    code = (
        "from runtime.trt.compat import Trt; t = Trt.load(lean=True); "
        "r = t.get('Runtime')(t.logger()); print('branch', t.branch, 'runtime', r is not None)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "branch 11" in proc.stdout or "branch 10" in proc.stdout, proc.stderr
    if CUDA_REASON:
        assert "CUDA initialization failure" in proc.stderr + proc.stdout or "runtime True" in proc.stdout
