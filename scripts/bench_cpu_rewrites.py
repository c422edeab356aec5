"""Which cpu-form graph rewrites pay: an ablation, one process, interleaved rounds (issue 17).

    python scripts/bench_cpu_rewrites.py --fp32 runs/demo/model.onnx --threads 1 --batches 1,32 --repeats 3
    python scripts/bench_cpu_rewrites.py --fp32 M/model.onnx --calib-size 32 --min-calib-size 16 ...

For the FP32 model given, the x86 INT8 file (`--method ort --target cpu`, ``--ignore none``) is
made once per rewrite set: all of `quantize.targets.cpu.CPU_REWRITES`, none of them, and all but
one (each in turn). Every file is timed on onnxruntime and on OpenVINO (when installed; it reads
the Q/DQ file as it is, fixed batch) in interleaved rounds (a set whose left-out rewrite
matches nothing in this model gives the same graph as another and is not timed again): a round times every file once per
runtime and batch, a repeat is ``--rounds`` rounds and gives one p50 per cell; the table shows the
median [min-max] over ``--repeats`` and the ratio "p50 without the rewrite / p50 with all of them"
(> 1: the rewrite pays). Each row also says how many nodes the rewrite matched in this model (0:
it does not apply) and the file's top-1 agreement with FP32 on the validation split.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quantize.calibration import build_calibration_set, build_validation_set  # noqa: E402 - after sys.path
from quantize.methods.ort_ptq import quantize_ort  # noqa: E402 - after sys.path
from quantize.targets import cpu  # noqa: E402 - after sys.path
from runtime.backends.ort import make_session  # noqa: E402 - after sys.path
from runtime.cli import parse_int_list  # noqa: E402 - after sys.path
from runtime.contract import read_contract  # noqa: E402 - after sys.path
from runtime.env import cpu_info  # noqa: E402 - after sys.path
from runtime.latency import measure_latency, tile_batch  # noqa: E402 - after sys.path
from runtime.report import md_table  # noqa: E402 - after sys.path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp32", type=Path, required=True, help="FP32 ONNX with its contract")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", default="1,32")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds-per-round", type=float, default=0.25)
    p.add_argument("--calib-size", type=int, default=300)
    p.add_argument("--min-calib-size", type=int, default=32)
    p.add_argument("--no-openvino", action="store_true", help="onnxruntime only")
    p.add_argument("--out", type=Path, help="write the Markdown here too")
    return p


def quantize_with(model, calib: np.ndarray, rewrites: tuple[str, ...]):
    """The cpu-form INT8 of ``model`` with only ``rewrites`` applied; (model, rewrite info)."""
    q, info = quantize_ort(model, calib, target="cpu", cpu_rewrites=rewrites)
    return q, info.get("cpu_rewrites", {})


def main(argv: list[str] | None = None) -> int:
    import onnx

    args = build_parser().parse_args(argv)
    batches = parse_int_list(args.batches)
    contract = read_contract(args.fp32)
    calib = build_calibration_set(contract, size=args.calib_size, seed=0, min_size=args.min_calib_size).tensors
    val = build_validation_set(contract)
    fp32 = onnx.load(str(args.fp32))
    name = fp32.graph.input[0].name
    ref_top1 = make_session(fp32, threads=args.threads).run(None, {name: val.tensors})[0].argmax(1)

    all_r = tuple(cpu.CPU_REWRITES)
    variants = {"all rewrites": all_r, "no rewrites": ()}
    variants.update({f"all but {r}": tuple(x for x in all_r if x != r) for r in all_r})
    files, matched, agreement, same_as = {}, {}, {}, {}
    for label, subset in variants.items():
        q, done = quantize_with(fp32, calib, subset)
        matched[label] = {k: len(v) for k, v in done.items()}
        twin = next((k for k in files if matched[k] == matched[label]), None)
        if twin is not None:  # the left-out rewrite does not apply here: the same graph, not timed again
            same_as[label] = twin
            agreement[label] = agreement[twin]
            print(f"{label}: same rewrites applied as '{twin}' (not timed again)", file=sys.stderr)
            continue
        files[label] = q.SerializeToString()
        top1 = make_session(q, threads=args.threads).run(None, {name: val.tensors})[0].argmax(1)
        agreement[label] = float(np.mean(top1 == ref_top1))
        print(f"{label}: {matched[label]}, agreement {agreement[label]:.2%}", file=sys.stderr)

    runners = {}  # (variant, runtime, batch) -> callable
    for label, blob in files.items():
        sess = make_session(blob, threads=args.threads)
        for b in batches:
            x = tile_batch(val.tensors, b)
            runners[(label, "onnxruntime", b)] = functools.partial(sess.run, None, {name: x})
    runtimes = ["onnxruntime"]
    if not args.no_openvino:
        try:
            import openvino as ov
        except ImportError:
            print("OpenVINO not installed: onnxruntime only (pip install '.[openvino]')", file=sys.stderr)
        else:
            runtimes.append("openvino")
            core = ov.Core()
            props = {"INFERENCE_NUM_THREADS": args.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
            for label, blob in files.items():
                for b in batches:
                    m = core.read_model(blob)
                    m.reshape([b, *val.tensors.shape[1:]])
                    req = core.compile_model(m, "CPU", props).create_infer_request()
                    x = tile_batch(val.tensors, b)
                    runners[(label, "openvino", b)] = functools.partial(req.infer, [x])

    p50 = {k: [] for k in runners}  # one p50 per repeat
    for _ in range(args.repeats):
        rounds = {k: [] for k in runners}
        for r in range(args.rounds):
            for k, fn in runners.items():
                st = measure_latency(
                    fn,
                    batch=k[2],
                    warmup_s=0.2 if r == 0 else 0.0,
                    warmup_iterations=2,
                    min_iterations=3,
                    min_seconds=args.seconds_per_round,
                )
                rounds[k].extend(st.samples_ms)
        for k, v in rounds.items():
            p50[k].append(float(np.median(v)))

    cols = [(rt, b) for rt in runtimes for b in batches]
    rows = []
    for label in variants:
        if label in same_as:
            rows.append([label, f"same graph as {same_as[label]}", f"{agreement[label]:.2%}"] + ["-"] * len(cols))
            continue
        cells = []
        for rt, b in cols:
            mine = np.array(p50[(label, rt, b)])
            ratio = mine / np.array(p50[("all rewrites", rt, b)])
            cells.append(f"{np.median(mine):.3f} ({np.median(ratio):.3f}× [{ratio.min():.3f}–{ratio.max():.3f}])")
        m = matched[label]
        rows.append([label, ", ".join(f"{k} {v}" for k, v in m.items()) or "none", f"{agreement[label]:.2%}", *cells])
    head = ["INT8 file", "rewrites applied (nodes)", "agreement", *(f"{rt} b{b} p50 ms (÷ all)" for rt, b in cols)]
    text = "\n".join(
        [
            f"{args.fp32}: {cpu_info()}, {args.threads} thread(s), {args.repeats} repeats × {args.rounds} rounds",
            "",
            *md_table(head, rows),
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
