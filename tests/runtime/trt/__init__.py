"""Tests of runtime/trt and runtime/backends/trt.py (a package so its module names stay unique)."""
