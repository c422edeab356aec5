"""Face detectors that run on the project backends (no torch): MTCNN, see `runtime.detectors.mtcnn`."""
