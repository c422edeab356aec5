"""``ferdeploy <verb> ...``: the one console command (``[project.scripts]`` in pyproject.toml).

Each verb is the command users know from its ``python -m`` form, which keeps working::

    ferdeploy train fit --config configs/demo.yaml          python -m train fit ...
    ferdeploy export onnx|check|adopt|deploy ...            python -m export ...
    ferdeploy quantize int8|fp16 ...                         python -m quantize ...
    ferdeploy build|selftest|parity|bench|infer ...          python -m runtime build|... ...
    ferdeploy pipeline --config configs/demo.yaml            python -m pipeline ... (or python -m runtime pipeline)

Verbs are resolved from ``"module:function"`` strings and imported only when they run, so a
missing optional dependency (torch on a Jetson, TensorRT on a laptop) breaks only its own verb.
Every target is already wrapped by `runtime.cli.cli_entry` (one error paragraph, documented exit
codes, ``--debug`` for the traceback).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from runtime.errors import EXIT_MISSING, EXIT_OK, EXIT_USAGE, exit_codes_help

# verb -> ("module:function(argv) -> int", help)
VERBS: dict[str, tuple[str, str]] = {
    "train": (
        "train.__main__:main",
        "train a model (fit), list models, render the synthetic set (needs the train extra)",
    ),
    "export": (
        "export.__main__:main",
        "checkpoint/module/plain ONNX -> model.onnx with its contract; check; deploy configs",
    ),
    "quantize": ("quantize.__main__:main", "model.onnx -> INT8 Q/DQ (nncf, ort; tensorrt or cpu form) or FP16"),
    "build": ("runtime.trt.cli:build_main", "ONNX -> TensorRT engine (+ sidecar, per-layer precision), cached"),
    "parity": ("runtime.__main__:parity_main", "accuracy parity of candidate models x backends against a reference"),
    "bench": ("runtime.__main__:bench_main", "latency of models x backends x batch sizes"),
    "infer": ("runtime.infer:infer_main", "faces in images/folders/videos/a camera -> expressions"),
    "selftest": ("runtime.trt.cli:selftest_main", "TensorRT self-test on this device"),
    "pipeline": ("pipeline.cli:pipeline_main", "train -> export -> quantize -> TensorRT -> parity -> bench -> report"),
}


def usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: ferdeploy <verb> [options]   (ferdeploy <verb> --help for a verb's options)", "", "verbs:"]
    lines += [f"  {v:<{width}}  {h}" for v, (_, h) in VERBS.items()]
    lines += ["", exit_codes_help("all"), "Add --debug to any verb for the traceback of an error."]
    return "\n".join(lines)


def resolve(verb: str) -> Callable[[list[str]], int]:
    """The function registered for ``verb`` (imported now)."""
    module, fn = VERBS[verb][0].split(":")
    return getattr(importlib.import_module(module), fn)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return EXIT_OK if argv else EXIT_USAGE
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"ferdeploy: unknown verb {verb!r}; valid: {', '.join(VERBS)}\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    try:
        fn = resolve(verb)
    except ImportError as exc:
        print(
            f"ferdeploy {verb}: cannot load {VERBS[verb][0]} ({exc}); install the extra it needs, e.g. "
            "pip install '.[train,quantize]'",
            file=sys.stderr,
        )
        return EXIT_MISSING
    try:
        return int(fn(rest) or EXIT_OK)
    except SystemExit as exc:  # argparse usage errors exit 2; keep the code
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
