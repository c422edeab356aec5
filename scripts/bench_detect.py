"""Face detectors on real photos: recall, false boxes, latency per 640×480 frame, memory on huge inputs.

    .venv/bin/python scripts/bench_detect.py [--model runs/demo/model.onnx] [--threads 1,2] [--rounds 5]

1. Accuracy: every detector on the labelled photos of ``tests/data/photos`` (hand-marked boxes,
   IoU >= 0.4), at the stored size, upscaled 3×, and as one 2×4 collage of the eight face photos
   (several faces in one 1280-pixel image).
2. Latency: detect + classify per 640×480 frame (the eleven photos letterboxed to 640×480), per
   detector and thread count; ``--rounds`` passes over the frames, each summarised by its median;
   the median and range of those medians are printed. The classifier is ``--model`` (default: an
   untrained LANMSFF exported here: latency does not depend on the weights).
3. Spinning: MTCNN detect with 1 or 2 ORT threads, intra-op spin-waiting on (ORT's default) or off.
4. Huge input: ``python -m runtime infer`` on an 8000×6000 JPEG in a fresh process: wall time,
   peak resident memory, and the boxes against the same photo's 1280×960 copy.

``--int8`` adds the MTCNN networks quantized by ONNX Runtime (static, QDQ, per-channel, calibrated
on pyramid levels and crops of the photos) to the latency and accuracy tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402 - imported after sys.path / environment set-up at the top of the file
import numpy as np  # noqa: E402 - imported after sys.path / environment set-up at the top of the file

PHOTOS = REPO / "tests" / "data" / "photos"


def letterbox(img: np.ndarray, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    W, H = size
    s = min(W / img.shape[1], H / img.shape[0])
    r = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
    out = np.zeros((H, W, 3), np.uint8)
    y, x = (H - r.shape[0]) // 2, (W - r.shape[1]) // 2
    out[y : y + r.shape[0], x : x + r.shape[1]] = r
    return out


def export_lanmsff(path: Path) -> Path:
    """An untrained LANMSFF with its deployment contract (the latency is that of the trained one)."""
    import onnx
    import torch

    from runtime.contract import DeploymentContract
    from train.models import create_model, get_model_info

    info = get_model_info("lanmsff")
    m = create_model("lanmsff", num_classes=7).eval()
    h, w = info.preprocess.input_size
    x = torch.rand(1, 1 if info.preprocess.to_dict().get("color_mode", "gray") == "gray" else 3, h, w)
    import warnings

    warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
    torch.onnx.export(
        m,
        (x,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    model = onnx.load(str(path))
    c = DeploymentContract(
        model_name="lanmsff",
        class_names=("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
        preprocess=info.preprocess,
        checkpoint_sha256="0" * 64,
        exporter="bench_detect (untrained)",
    )
    for k, v in c.to_metadata().items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(model, str(path))
    return path


def quantize_mtcnn(out_dir: Path) -> Path:
    """MTCNN networks quantized to INT8 (QDQ, per-channel) with ONNX Runtime, calibrated on the photos."""
    import shutil

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from runtime.detectors import mtcnn as M

    out_dir.mkdir(parents=True, exist_ok=True)
    imgs = [cv2.cvtColor(letterbox(cv2.imread(str(p))), cv2.COLOR_BGR2RGB) for p in sorted(PHOTOS.glob("*.jpg"))]
    nets = M.MtcnnNets()
    feeds: dict[str, list[np.ndarray]] = {"pnet": [], "rnet": [], "onet": []}
    for rgb in imgs:
        for s in M.pyramid_scales(480, 19)[:4]:
            lvl = cv2.resize(rgb, (int(np.ceil(640 * s)), int(np.ceil(480 * s))), interpolation=cv2.INTER_AREA)
            feeds["pnet"].append(lvl.transpose(2, 0, 1)[None].astype(np.float32))
        found = nets.detect_rgb(rgb, 19)
        rng = np.random.default_rng(0)
        jitter = [b + rng.normal(0, 0.1 * (b[2] - b[0]), 4) for b in found[:, :4] for _ in range(8)]
        rand = [
            np.array([x, y, x + s, y + s])
            for x, y, s in zip(rng.uniform(0, 600, 8), rng.uniform(0, 440, 8), rng.uniform(20, 200, 8))
        ]
        boxes = np.array(jitter + rand, np.float64)
        feeds["rnet"].append(M.crops(rgb, boxes, 24))
        feeds["onet"].append(M.crops(rgb, boxes, 48))
    nets.close()

    class Reader(CalibrationDataReader):
        def __init__(self, xs: list[np.ndarray]) -> None:
            self.it = iter([{"input": x} for x in xs])

        def get_next(self):
            return next(self.it, None)

    for net in M.NETS:
        quantize_static(
            str(M.MODEL_DIR / f"{net}.onnx"),
            str(out_dir / f"{net}.onnx"),
            Reader(feeds[net]),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    shutil.copy(M.MODEL_DIR / "mtcnn.json", out_dir / "mtcnn.json")
    return out_dir


def accuracy(detectors: dict) -> dict:
    from runtime.detect import match_faces

    labels = json.loads((PHOTOS / "labels.json").read_text())["photos"]
    faces_photos = [n for n, e in labels.items() if e["faces"]]
    res = {}
    for name, det in detectors.items():
        row = {}
        for k in (1, 3):
            hit = false = total = 0
            for f, e in labels.items():
                img = cv2.imread(str(PHOTOS / f))
                if k != 1:
                    img = cv2.resize(img, None, fx=k, fy=k, interpolation=cv2.INTER_LINEAR)
                h, fa = match_faces(
                    det.detect(img),
                    [[v * k for v in b] for b in e["faces"]],
                    [[v * k for v in b] for b in e.get("ignore", [])],
                )
                hit, false, total = hit + h, false + fa, total + len(e["faces"])
            row[f"x{k}"] = {"found": hit, "faces": total, "false": false}
        # Collage: the eight face photos, each fitted into a 320×480 cell of a 1280×960 image.
        canvas = np.zeros((960, 1280, 3), np.uint8)
        faces, ignore = [], []
        for i, f in enumerate(faces_photos[:8]):
            img = cv2.imread(str(PHOTOS / f))
            s = min(320 / img.shape[1], 480 / img.shape[0])
            r = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
            x0, y0 = (i % 4) * 320, (i // 4) * 480
            canvas[y0 : y0 + r.shape[0], x0 : x0 + r.shape[1]] = r
            faces += [[x0 + v * s if j % 2 == 0 else y0 + v * s for j, v in enumerate(b)] for b in labels[f]["faces"]]
            ignore += [
                [x0 + v * s if j % 2 == 0 else y0 + v * s for j, v in enumerate(b)] for b in labels[f].get("ignore", [])
            ]
        h, fa = match_faces(det.detect(canvas), faces, ignore)
        row["collage"] = {"found": h, "faces": len(faces), "false": fa}
        res[name] = row
        print(
            f"{name:>10}: "
            + " | ".join(f"{k} {v['found']}/{v['faces']} found, {v['false']} false" for k, v in row.items()),
            flush=True,
        )
    return res


def latency(make, model: Path, threads: int, rounds: int) -> dict:
    from runtime.infer import Classifier

    frames = [letterbox(cv2.imread(str(p))) for p in sorted(PHOTOS.glob("*.jpg"))]
    det = make(threads)
    clf = Classifier(model, threads=threads)
    for f in frames[:3]:  # warm-up
        det.detect(f)
    det_med, tot_med = [], []
    for _ in range(rounds):
        d, t = [], []
        for f in frames:
            t0 = time.perf_counter()
            boxes = det.detect(f)
            t1 = time.perf_counter()
            crops = [cv2.cvtColor(b.expand(0.1, f.shape).crop(f), cv2.COLOR_BGR2RGB) for b in boxes]
            if crops:
                clf.classify(crops)
            t2 = time.perf_counter()
            d.append((t1 - t0) * 1e3)
            t.append((t2 - t0) * 1e3)
        det_med.append(statistics.median(d))
        tot_med.append(statistics.median(t))
    clf.close()
    if hasattr(det, "close"):
        det.close()
    return {
        "detect_ms": [statistics.median(det_med), min(det_med), max(det_med)],
        "detect_classify_ms": [statistics.median(tot_med), min(tot_med), max(tot_med)],
    }


def spinning(rounds: int = 15) -> dict:
    """MTCNN detect on one 640×480 photo with ORT sessions built here: 1 or 2 threads, spin-waiting on or off.

    Each of the three networks has its own ORT thread pool; with spinning on (ORT's default), a pool
    that just finished keeps its threads busy-waiting while the next network runs.
    """
    from runtime.backends.ort import make_session
    from runtime.detectors import mtcnn as M

    class Bare:
        def __init__(self, path: Path, threads: int, spin: bool) -> None:
            self.sess = make_session(path, threads=threads, spinning=spin)
            self.names = [o.name for o in self.sess.get_outputs()]

        def infer(self, feeds):
            return dict(zip(self.names, self.sess.run(None, feeds)))

        def close(self) -> None:
            pass

    img = cv2.cvtColor(letterbox(cv2.imread(str(PHOTOS / "obama.jpg"))), cv2.COLOR_BGR2RGB)
    res = {}
    for threads in (1, 2):
        for spin in (True, False):
            nets = M.MtcnnNets(threads=1)
            nets.nets = {k: Bare(M.MODEL_DIR / f"{k}.onnx", threads, spin) for k in M.NETS}
            nets.detect_rgb(img, 19)
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                nets.detect_rgb(img, 19)
                times.append((time.perf_counter() - t0) * 1e3)
            key = f"threads {threads} spinning {'on' if spin else 'off'}"
            res[key] = [statistics.median(times), min(times), max(times)]
            print(f"  {key}: detect {res[key][0]:.1f} ms [{res[key][1]:.1f}, {res[key][2]:.1f}]", flush=True)
    return res


_HUGE = r"""
import json, resource, sys, time, cv2, numpy as np
sys.path.insert(0, {repo!r})
from runtime.infer import infer_main


def hwm():  # this process's peak resident memory (ru_maxrss would carry the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


t = time.perf_counter()
rc = infer_main(["--model", {model!r}, "--source", {src!r}, "--out", {out!r}, "--no-progress"] + {extra!r})
print(json.dumps({{"rc": rc, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": hwm()}}))
"""


def huge(model: Path, tmp: Path) -> dict:
    base = cv2.imread(str(PHOTOS / "astronaut.jpg"))
    small = cv2.resize(base, (1280, 960), interpolation=cv2.INTER_LINEAR)
    big = cv2.resize(small, (8000, 6000), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(tmp / "huge.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(
        str(tmp / "copy.jpg"),
        cv2.resize(big, (1280, 960), interpolation=cv2.INTER_AREA),
        [cv2.IMWRITE_JPEG_QUALITY, 95],
    )
    del big
    res = {}
    for name, src, extra in (
        ("8000x6000", "huge.jpg", []),
        ("8000x6000 --no-annotate", "huge.jpg", ["--no-annotate"]),
        ("1280x960 copy", "copy.jpg", []),
    ):
        out = tmp / name.replace(" ", "_")
        code = _HUGE.format(repo=str(REPO), model=str(model), src=str(tmp / src), out=str(out), extra=extra)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
        r = json.loads(p.stdout.strip().splitlines()[-1])
        body = json.loads((out / "predictions.json").read_text())
        r["boxes"] = [p["box"] for p in body["predictions"]]
        res[name] = r
        print(
            f"{name}: rc {r['rc']}, {r['wall_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB, boxes "
            f"{[(b['x'], b['y'], b['w'], b['h']) for b in r['boxes']]}",
            flush=True,
        )
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="classifier ONNX (default: an untrained LANMSFF exported here)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--int8", action="store_true", help="also the MTCNN networks quantized to INT8")
    p.add_argument("--skip", default="", help="comma list of sections to skip: accuracy,latency,spinning,huge")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    import logging

    from runtime.cli import parse_int_list, setup_logging

    setup_logging(level=logging.ERROR)
    from runtime.detect import HaarDetector, MtcnnDetector, haar_unavailable_reason

    skip = set(args.skip.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench_detect_"))
    model = Path(args.model) if args.model else export_lanmsff(tmp / "lanmsff.onnx")
    makers = {"mtcnn": lambda t: MtcnnDetector(threads=t)}
    if args.int8:
        qdir = quantize_mtcnn(tmp / "mtcnn_int8")
        makers["mtcnn-int8"] = lambda t: MtcnnDetector(qdir, threads=t)
    if not haar_unavailable_reason():
        makers["haar"] = lambda t: HaarDetector()
    results: dict = {
        "machine": f"{os.cpu_count()}-core CPU",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": os.getloadavg(),
    }
    if "accuracy" not in skip:
        print("accuracy (found/faces, false boxes):")
        results["accuracy"] = accuracy({k: m(1) for k, m in makers.items()})
    if "latency" not in skip:
        print(f"latency per 640×480 frame, median [range] of {args.rounds} rounds' medians:")
        results["latency"] = {}
        for t in parse_int_list(args.threads, "--threads"):
            for name, make in makers.items():
                r = latency(make, model, t, args.rounds)
                results["latency"][f"{name} threads {t}"] = r
                print(
                    f"  {name:>10} threads {t}: detect {r['detect_ms'][0]:.1f} ms [{r['detect_ms'][1]:.1f}, "
                    f"{r['detect_ms'][2]:.1f}], detect+classify {r['detect_classify_ms'][0]:.1f} ms "
                    f"[{r['detect_classify_ms'][1]:.1f}, {r['detect_classify_ms'][2]:.1f}]",
                    flush=True,
                )
    if "spinning" not in skip:
        print("MTCNN detect per 640×480 frame, ORT intra-op spin-waiting on/off (median [min, max] of 15 calls):")
        results["spinning"] = spinning()
    if "huge" not in skip:
        results["huge"] = huge(model, tmp)
    results["load_after"] = os.getloadavg()
    print(f"load average before {results['load_before']}, after {results['load_after']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
