"""TensorRT engines for TensorRT 10.x (JetPack 6), 11.x (pip) and TensorRT for RTX 1.x (pip; builds
ahead of time without a GPU), without importing TensorRT here.

- `runtime.trt.compat`: the one module where the flavours and versions differ; `Trt` gates every TensorRT name
  through the declared surface in `runtime.trt.api_surface`.
- `runtime.trt.build`: ONNX -> plan (strongly typed, profile, timing cache, DLA, version-compatible),
  with the engine cache of `runtime.trt.cache` and the realized-precision check of `runtime.trt.engine_layers`
  (engine inspector on 10/11, the build's per-layer log on TensorRT for RTX).
- `runtime.trt.cuda`: device memory, streams, events and CUDA graphs via cuda-python or pycuda.
- `runtime.trt.cli`: the ``build`` and ``selftest`` verbs of ``python -m runtime``.

The engine runner is `runtime.backends.trt.TrtBackend`. See docs/tensorrt.md for what has and has
not run on real TensorRT.
"""
