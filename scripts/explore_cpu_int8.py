"""Explore the ``cpu`` INT8 form (onnxruntime static QDQ, U8S8) against FP32 on onnxruntime CPU.

For each variant: quantize the FP32 model, count what the optimized CPU session actually runs
(QLinear ops, stand-alone Q/DQ, Transposes, float ops), score top-1 agreement with FP32 on the
validation split, and time FP32 and every variant interleaved in one process (rounds x sessions,
rotating order; throughput = 1 / p50 latency; ratio = FP32 p50 / variant p50 per round, then the
median and the range over rounds).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/explore_cpu_int8.py [--model runs/demo/model.onnx]
        [--variants baseline,rewrite,...] [--threads 1,2] [--batches 1,32] [--rounds 7] [--seconds 0.6]
        [--profile]

Without --model: runs/demo/model.onnx, else runs/qdev15/model.onnx, else a randomly initialised
``lanmsff`` exported into a temporary folder (speed does not depend on the weights; agreement
then means little).
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantize.methods import ort_ptq  # noqa: E402 - imported after sys.path / environment set-up at the top of the file
from quantize.targets import cpu  # noqa: E402 - imported after sys.path / environment set-up at the top of the file
from runtime.backends.ort import make_session, predict  # noqa: E402 - imported after sys.path / environment set-up at the top of the file
from runtime.latency import tile_batch  # noqa: E402 - imported after sys.path / environment set-up at the top of the file

QDQ = {"QuantizeLinear", "DequantizeLinear"}
LAYOUT = {"Transpose", "ReorderInput", "ReorderOutput"}


# --- variants --------------------------------------------------------------------------------------


def _quantize(model, calib, *, op_types=None, exclude=(), extra=None, rewrite=False, input_name="input"):
    """quantize_static in the cpu form with overrides; returns (ModelProto, what the rewrite did)."""
    settings = ort_ptq.ort_settings("cpu")
    src = copy.deepcopy(model)
    done = {}
    if rewrite:
        done = cpu.rewrite_for_cpu(
            src, calib[:16], rewrites=rewrite if isinstance(rewrite, tuple) else cpu.CPU_REWRITES
        )
    opts = dict(settings.extra_options)
    opts.update(extra or {})
    s = ort_ptq.OrtSettings(
        settings.quant_format,
        settings.activation_type,
        settings.weight_type,
        settings.per_channel,
        tuple(op_types) if op_types is not None else settings.op_types,
        opts,
        settings.calibrate_method,
    )
    with tempfile.TemporaryDirectory() as tmp:
        q = ort_ptq._quantize_static_file(src, tmp, calib, s, list(exclude), input_name, "cpu")
    ort_ptq.strip_output_qdq(q)
    return q, done


def default_op_types() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def stem_nodes(model) -> list[str]:
    inp = model.graph.input[0].name
    return [n.name for n in model.graph.node if inp in n.input and n.op_type == "Conv"]


def variants(model, calib):
    """name -> zero-argument builder of (quantized model or the FP32 model, notes)."""
    no_convt = [t for t in default_op_types() if t != "ConvTranspose"]
    stem = stem_nodes(model)
    head = [
        n.name for n in model.graph.node if n.op_type == "Gemm" and any(o.name in n.output for o in model.graph.output)
    ]
    # after pwfs_into_head, the classifier's Concat keeps its name: keep it in float too
    head_concat = head + [
        n.name
        for n in model.graph.node
        if n.op_type == "Concat" and n.output[0] in {i for g in model.graph.node if g.name in head for i in g.input}
    ]
    v = {
        # what the cpu target wrote before the rewrites: onnxruntime's default op list, graph as exported
        "baseline": lambda: _quantize(model, calib, op_types=default_op_types()),
        "no_convT": lambda: _quantize(model, calib, op_types=no_convt),
        "relu_pool": lambda: _quantize(model, calib, op_types=default_op_types(), rewrite=("relu_before_maxpool",)),
        "pwfs_head": lambda: _quantize(model, calib, op_types=default_op_types(), rewrite=("pwfs_into_head",)),
        "rewrite2": lambda: _quantize(
            model, calib, op_types=default_op_types(), rewrite=("relu_before_maxpool", "pwfs_into_head")
        ),
        "rewrite2+no_convT+float_head2": lambda: _quantize(
            model, calib, rewrite=("relu_before_maxpool", "pwfs_into_head"), op_types=no_convt, exclude=head_concat
        ),
        "rewrite": lambda: _quantize(model, calib, op_types=default_op_types(), rewrite=True),
        "rewrite+no_convT": lambda: _quantize(model, calib, rewrite=True, op_types=no_convt),
        "rewrite+no_convT+float_stem": lambda: _quantize(model, calib, rewrite=True, op_types=no_convt, exclude=stem),
        "rewrite+no_convT+float_head": lambda: _quantize(model, calib, rewrite=True, op_types=no_convt, exclude=head),
        "rewrite+no_convT+float_head2": lambda: _quantize(
            model, calib, rewrite=True, op_types=no_convt, exclude=head_concat
        ),
        "rewrite+no_convT+float_head2+float_stem": lambda: _quantize(
            model, calib, rewrite=True, op_types=no_convt, exclude=head_concat + stem
        ),
        # the cpu target before reduce_mean_as_pool_and_conv (session 11's first version)
        "rewrite3+no_convT+float_head2": lambda: _quantize(
            model,
            calib,
            rewrite=("relu_before_maxpool", "pwfs_into_head", "fold_channel_shuffle"),
            op_types=no_convt,
            exclude=head_concat,
        ),
        # what quantize_ort's cpu target (quantize/targets/cpu.py) does now (= rewrite+no_convT+float_head2)
        "cpu_target": lambda: (lambda qi: (qi[0], qi[1].get("cpu_rewrites", {})))(
            ort_ptq.quantize_ort(model, calib, target="cpu")
        ),
    }
    return v


# --- structure -------------------------------------------------------------------------------------


def optimized_graph(model, threads=1):
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "opt.onnx")
        make_session(model, threads=threads, optimized_model_path=path)
        return onnx.load(path)


def structure(model) -> dict[str, int]:
    opt = optimized_graph(model)
    c = collections.Counter(n.op_type for n in opt.graph.node)
    return {
        "nodes": len(opt.graph.node),
        "qlinear": sum(v for k, v in c.items() if k.startswith("QLinear") or k in ("QGemm", "NhwcMaxPool")),
        "Q": c["QuantizeLinear"],
        "DQ": c["DequantizeLinear"],
        "layout": sum(c[k] for k in LAYOUT),
        "float_conv": c["Conv"] + c["FusedConv"] + c["ConvTranspose"],
        "float_MaxPool": c["MaxPool"],
    }


def profile(model, x, runs=200, threads=1) -> list[tuple[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        s = make_session(model, threads=threads, profile_prefix=os.path.join(tmp, "p"))
        name = s.get_inputs()[0].name
        for _ in range(runs):
            s.run(None, {name: x})
        events = json.load(open(s.end_profiling()))
    t = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            t[e["args"]["op_name"]] += e["dur"] / runs
    return sorted(t.items(), key=lambda kv: -kv[1])


# --- timing ----------------------------------------------------------------------------------------


def time_interleaved(
    models: dict, x: np.ndarray, *, threads: int, rounds: int, seconds: float, clock=time.perf_counter
) -> dict[str, list[float]]:
    """p50 latency (ms) per round for every model; sessions alternate inside each round.

    ``clock=time.thread_time`` measures the CPU time of the calling thread instead of wall time:
    with 1 intra-op thread onnxruntime runs every kernel on the caller, so this drops the time the
    process spent descheduled by other jobs (a less noisy figure on a shared machine).
    """
    sessions = {k: make_session(m, threads=threads) for k, m in models.items()}
    name = next(iter(sessions.values())).get_inputs()[0].name
    feed = {name: x}
    for s in sessions.values():  # warm-up
        for _ in range(5):
            s.run(None, feed)
    p50 = {k: [] for k in sessions}
    keys = list(sessions)
    for r in range(rounds):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]
        for k in order:
            s, samples, t_end = sessions[k], [], time.perf_counter() + seconds
            while time.perf_counter() < t_end or len(samples) < 10:
                t0 = clock()
                s.run(None, feed)
                samples.append(clock() - t0)
            p50[k].append(1e3 * statistics.median(samples))
    return p50


# --- main ------------------------------------------------------------------------------------------


def load_model(path: str | None):
    import onnx

    for cand in [path] if path else ["runs/demo/model.onnx", "runs/qdev15/model.onnx"]:
        if cand and Path(cand).is_file():
            return Path(cand), onnx.load(cand)
    import torch

    from export.__main__ import main as export_cli
    from train.checkpoint import save_checkpoint
    from train.models import create_model, get_model_info

    tmp = Path(tempfile.mkdtemp(prefix="explore-cpu-int8-"))
    torch.manual_seed(0)
    spec = get_model_info("lanmsff").preprocess
    ckpt = save_checkpoint(
        tmp / "checkpoint.pt",
        create_model("lanmsff").eval(),
        model_name="lanmsff",
        class_names=("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
        preprocess=spec,
        dataset={"kind": "synthetic", "val_fraction": 0.2, "seed": 0, "options": {"count": 700}},
    )
    assert export_cli(["onnx", "--checkpoint", str(ckpt), "--out", str(tmp / "model.onnx")]) == 0
    return tmp / "model.onnx", onnx.load(str(tmp / "model.onnx"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument(
        "--variants", default="baseline,cpu_target", help="comma list (see variants()); default baseline,cpu_target"
    )
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=0.6, help="timed seconds per session per round")
    ap.add_argument("--calib-size", type=int, default=300)
    ap.add_argument(
        "--clock",
        choices=("wall", "thread"),
        default="wall",
        help="wall: perf_counter (default); thread: CPU time of the calling thread (1 thread only)",
    )
    ap.add_argument(
        "--profile", action="store_true", help="per-op-type kernel time at batch 1, at each --threads count"
    )
    ap.add_argument("--save", default=None, help="folder to save each variant's quantized model")
    args = ap.parse_args(argv)

    from quantize.calibration import build_calibration_set, build_validation_set
    from quantize.orchestrate import name_nodes
    from runtime.contract import read_contract

    path, model = load_model(args.model)
    name_nodes(model)
    contract = read_contract(path)
    calib = build_calibration_set(contract, size=args.calib_size, seed=0).tensors
    val = build_validation_set(contract)
    ref = predict(make_session(model, threads=2), val.tensors)
    print(
        f"model {path}; calibration {len(calib)}; validation {val.source}; FP32 accuracy {(ref.argmax(1) == val.labels).mean():.4f}"
    )
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}; cores {os.cpu_count()}; load average {os.getloadavg()}")

    builders = variants(model, calib)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in builders]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(builders)}")
    quantized = {}
    from runtime.cli import parse_int_list
    from runtime.report import md_table

    header = [
        "variant",
        "agreement",
        "flipped",
        "mean/max abs dlogit",
        "acc",
        "nodes",
        "QLinear",
        "Q",
        "DQ",
        "layout",
        "float conv",
        "float MaxPool",
        "rewrite",
    ]
    print("\n" + "\n".join(md_table(header, [])))  # rows follow as each variant finishes
    for n in names:
        q, done = builders[n]()
        quantized[n] = q
        if args.save:
            import onnx

            Path(args.save).mkdir(parents=True, exist_ok=True)
            onnx.save(q, str(Path(args.save) / f"{n}.onnx"))
        out = predict(make_session(q, threads=2), val.tensors)
        agree = (out.argmax(1) == ref.argmax(1)).mean()
        d = np.abs(out - ref)
        st = structure(q)
        row = [
            n,
            f"{100 * agree:.2f}%",
            int((out.argmax(1) != ref.argmax(1)).sum()),
            f"{d.mean():.4f} / {d.max():.3f}",
            f"{(out.argmax(1) == val.labels).mean():.4f}",
            st["nodes"],
            st["qlinear"],
            st["Q"],
            st["DQ"],
            st["layout"],
            st["float_conv"],
            st["float_MaxPool"],
            ", ".join(f"{k}: {len(v)}" for k, v in done.items()) or "-",
        ]
        print(md_table(header, [row])[-1], flush=True)

    if args.profile:  # batch 1, at each --threads count
        x1 = np.ascontiguousarray(val.tensors[:1])
        for threads in parse_int_list(args.threads, "--threads"):
            for n, m in [("FP32", model)] + list(quantized.items()):
                prof = profile(m, x1, threads=threads)
                total = sum(t for _, t in prof)
                top = ", ".join(f"{k} {t:.0f}" for k, t in prof[:9])
                print(f"\nprofile {n}, {threads} thread(s): kernel {total:.0f} us/run: {top}")

    models = {"FP32": model, **quantized}
    print("\nratio = FP32 p50 / variant p50 per round; median [min, max] over rounds; p50 ms = median over rounds")
    for threads in parse_int_list(args.threads, "--threads"):
        for batch in parse_int_list(args.batches, "--batches"):
            x = tile_batch(val.tensors, batch)
            clock = time.thread_time if args.clock == "thread" and threads == 1 else time.perf_counter
            p50 = time_interleaved(models, x, threads=threads, rounds=args.rounds, seconds=args.seconds, clock=clock)
            fp = p50["FP32"]
            cells = [f"FP32 {statistics.median(fp):.3f} ms"]
            for n in quantized:
                ratios = [a / b for a, b in zip(fp, p50[n])]
                cells.append(
                    f"{n} {statistics.median(p50[n]):.3f} ms {statistics.median(ratios):.2f}x "
                    f"[{min(ratios):.2f}, {max(ratios):.2f}]"
                )
            kind = "thread CPU time" if clock is time.thread_time else "wall"
            print(f"threads {threads} batch {batch:>2} ({kind}): " + " | ".join(cells), flush=True)
    print(f"load average at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
