"""Torch-free runtime: preprocessing, artifacts and (later) backends, parity and latency.

Nothing here imports torch at module level: the Jetson side has numpy, onnxruntime, tensorrt and
cuda-python or pycuda only.
"""
