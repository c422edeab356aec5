"""``make bench``: reproduce every speed figure README.md quotes, with its spread.

For each model file beside ``model.onnx`` in the run folder (default ``runs/demo``, written by
``make demo``), times onnxruntime FP32 and that file in alternating rounds (`compare_latency`:
FP32, candidate, FP32, ... so both see the same machine load), at 1 and 2 intra-op threads and
batch 1 and 32. The whole interleaved measurement is repeated ``--repeats`` times (default 3) and
each cell reports the median speed-up (FP32 p50 / candidate p50) and its range over the repeats.
Top-1 agreement comes from the run's parity report (``parity/parity.json``).

Prints a Markdown table and writes ``<run>/headline/headline.{json,md}``. A headline figure in
README.md comes from this command's table: README and BENCHMARKS.md hold the same recorded run
between ``<!-- headline:start -->`` and ``<!-- headline:end -->``, and tests/test_readme_figures.py
fails on a speed-up written anywhere else in the README.

    python scripts/bench_headline.py [--run runs/demo] [--repeats 3] [--threads 1,2] [--batches 1,32] [--all]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADLINE_FILES = ("model.ort.cpu.int8.onnx", "model.nncf.cpu.int8.onnx")  # the x86 deployment rows
OTHER_FILES = ("model.fp16.onnx", "model.nncf.int8.onnx", "model.ort.int8.onnx")


def _machine() -> str:
    from runtime.env import cpu_info

    cpu = cpu_info()
    return f"{cpu.get('model')}, {cpu.get('logical_cores')} logical cores"


def _inputs(model: Path, count: int = 32) -> np.ndarray:
    """Real preprocessed validation images when the contract names a dataset, else seeded noise."""
    from runtime.contract import read_contract

    contract = read_contract(model)
    shape = (contract.preprocess.channels, *contract.preprocess.input_size)
    try:
        from quantize.calibration import build_validation_set

        return build_validation_set(contract, data=None, limit=count).tensors
    except Exception:  # noqa: BLE001 - latency does not depend on pixel values; say so below
        return np.random.default_rng(0).random((count, *shape), dtype=np.float32)


def _agreement(run: Path) -> dict[str, float]:
    p = run / "parity" / "parity.json"
    if not p.is_file():
        return {}
    body = json.loads(p.read_text())
    return {Path(r["model"]).name: r.get("top1_agreement") for r in body.get("rows", []) if r.get("backend") == "ort"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/demo", help="pipeline output folder (default runs/demo)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved measurements per cell (default 3)")
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts (default 1,2)")
    ap.add_argument("--batches", default="1,32", help="batch sizes (default 1,32)")
    ap.add_argument("--rounds", type=int, default=4, help="FP32/candidate alternations per measurement (default 4)")
    ap.add_argument("--seconds", type=float, default=0.4, help="timed seconds per model per round (default 0.4)")
    ap.add_argument("--all", action="store_true", help="also the FP16 and TensorRT-form INT8 files")
    args = ap.parse_args(argv)

    from quantize.config import LatencyConfig
    from quantize.orchestrate import compare_latency
    from runtime.cli import parse_int_list
    from runtime.errors import EXIT_ERROR

    run = Path(args.run)
    fp32 = run / "model.onnx"
    if not fp32.is_file():
        print(
            f"bench: {fp32} not found; run `make demo` first (it writes the models this benchmark times)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    names = HEADLINE_FILES + (OTHER_FILES if args.all else ())
    files = [run / n for n in names if (run / n).is_file()]
    if not files:
        print(f"bench: none of {list(names)} in {run}; run `make demo` first", file=sys.stderr)
        return EXIT_ERROR
    threads, batches = parse_int_list(args.threads, "--threads"), parse_int_list(args.batches, "--batches")
    x = _inputs(fp32)
    agree = _agreement(run)
    cells: dict[tuple[str, int, int], list[dict[str, float]]] = {}
    t0 = time.perf_counter()
    total = args.repeats * len(threads) * len(files)
    done = 0
    for rep in range(args.repeats):
        for th in threads:
            for f in files:
                done += 1
                print(
                    f"[{done}/{total}] repeat {rep + 1}: {f.name} vs FP32, {th} thread(s), batches {batches}",
                    file=sys.stderr,
                )
                cfg = LatencyConfig(
                    batches=tuple(batches), rounds=args.rounds, seconds_per_round=args.seconds, threads=th
                )
                comp = compare_latency(fp32, f, x, cfg)
                for row in comp.rows:
                    cells.setdefault((f.name, th, row.batch), []).append(
                        {
                            "speedup": row.speedup_p50,
                            "fp32_p50_ms": row.reference.p50_ms,
                            "p50_ms": row.candidate.p50_ms,
                        }
                    )

    def summary(vals: list[float]) -> dict[str, float]:
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

    rows = []
    for (name, th, b), reps in sorted(cells.items()):
        rows.append(
            {
                "file": name,
                "threads": th,
                "batch": b,
                "repeats": len(reps),
                "speedup": summary([r["speedup"] for r in reps]),
                "fp32_p50_ms": summary([r["fp32_p50_ms"] for r in reps]),
                "p50_ms": summary([r["p50_ms"] for r in reps]),
                "top1_agreement": agree.get(name),
            }
        )
    body = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "command": "make bench (python scripts/bench_headline.py " + " ".join(argv or sys.argv[1:]) + ")",
        "method": f"onnxruntime CPU, FP32 and candidate timed in {args.rounds} alternating rounds of >= {args.seconds} s "
        f"each; speed-up = FP32 p50 / candidate p50; {args.repeats} repeats per cell: median [min-max]",
        "rows": rows,
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }
    from runtime.report import md_table

    def _agree(r):
        return f"{100 * r['top1_agreement']:.2f}%" if r["top1_agreement"] is not None else "–"

    lines = [f"`make bench` ({body['date'][:10]}, {body['machine']}): {body['method']}.", ""]
    lines += md_table(
        [
            "file",
            "threads",
            "batch",
            "speed-up vs FP32, median [range]",
            "FP32 p50 ms",
            "file p50 ms",
            "top-1 agreement",
        ],
        [
            [
                f"`{r['file']}`",
                r["threads"],
                r["batch"],
                f"{r['speedup']['median']:.2f}× [{r['speedup']['min']:.2f}–{r['speedup']['max']:.2f}]",
                f"{r['fp32_p50_ms']['median']:.3f}",
                f"{r['p50_ms']['median']:.3f}",
                _agree(r),
            ]
            for r in rows
        ],
    )
    md = "\n".join(lines) + "\n"
    out = run / "headline"
    out.mkdir(parents=True, exist_ok=True)
    from runtime.artifacts import atomic_write_json, atomic_write_text

    atomic_write_json(out / "headline.json", body)
    atomic_write_text(out / "headline.md", md)
    print(md)
    print(f"written: {out / 'headline.json'}, {out / 'headline.md'} ({body['elapsed_s']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
