"""Per-target graph rewrites applied around a quantization method (`cpu`: x86 onnxruntime)."""
