"""``python -m pipeline --config configs/demo.yaml`` (the same as ``ferdeploy pipeline``)."""

import sys

from pipeline.cli import pipeline_main

if __name__ == "__main__":
    sys.exit(pipeline_main(sys.argv[1:]))
