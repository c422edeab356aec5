"""Quantization methods: NNCF (`nncf_ptq`) and onnxruntime quantize_static (`ort_ptq`), both writing Q/DQ ONNX."""
