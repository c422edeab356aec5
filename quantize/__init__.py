"""quantize stage: FP32 ONNX -> INT8 Q/DQ or FP16 ONNX, with its report.

Laid out by concern, after onnxruntime.quantization's own layout:

- `quantize.orchestrate`: `run_int8` / `run_fp16`, the stage API (config in, `StageResult` out)
  that ``python -m quantize`` and the pipeline call; the measured ignored-scope search.
- `quantize.methods`: how Q/DQ nodes are placed: `nncf_ptq` (NNCF) and `ort_ptq`
  (onnxruntime ``quantize_static``).
- `quantize.targets`: graph rewrites for one deployment target around a method (`cpu`: x86
  onnxruntime); the TensorRT form needs none.
- `quantize.fp16`, `quantize.calibration`, `quantize.config`, `quantize.report` (`QuantReport`,
  JSON and Markdown). The Q/DQ lint is `runtime.qdq_lint` (TensorRT builds use it too).
"""
