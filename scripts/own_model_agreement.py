"""Agreement of INT8/FP16 files with FP32 for an outside model, on the calibration distribution vs another one.

What a new user does (issue 15), end to end, with the README's commands:

1. train an outside architecture (tests/e2e/own_archs.py's MobileNet-style 1×64×64 gray CNN) with a
   plain PyTorch loop on the synthetic set (seed 0), and export it with a plain ``torch.onnx.export``;
2. ``export adopt`` it with a contract file;
3. ``quantize int8`` (nncf, ort, ort --target cpu) and ``quantize fp16``, calibrated on a folder of
   unlabelled images A (synthetic seed 0 training images, written as PNG files without class folders);
4. ``runtime parity --data FOLDER`` on held-out images of A, on folder B: "photo-like" images of
   another distribution (synthetic seed 7, rendered 96×96 RGB with more noise, more occlusion and
   weaker expressions), unlabelled, and on folder C: 80 crops of the 8 real faces hand-marked in
   tests/data/photos (10 jittered crops each); the INT8 files calibrated on part of B are compared too.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/own_model_agreement.py --out runs/own_model [--epochs 6]

Prints one table (agreement with FP32 per candidate and folder) and the commands it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

COMMANDS: list[str] = []


def sh(*argv: str) -> None:
    cmd = [sys.executable, "-m", *argv]
    COMMANDS.append(".venv/bin/python -m " + shlex.join(argv))
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode not in (0, 1):  # parity exits 1 when a row fails its bound: still a measurement
        sys.stderr.write(res.stdout[-3000:] + res.stderr[-3000:])
        raise SystemExit(f"failed ({res.returncode}): {COMMANDS[-1]}")
    print(f"  {time.perf_counter() - t:5.1f} s  {COMMANDS[-1]}", flush=True)


def dump(records, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for r in records:
        img = r.pixels if r.pixels.ndim == 2 else r.pixels[:, :, ::-1]
        cv2.imwrite(str(folder / f"{r.id.replace('/', '_').replace(':', '_')}.png"), img)
    return folder


def real_crops(folder: Path, per_face: int = 10, seed: int = 0) -> Path:
    """C: the hand-marked faces of tests/data/photos (8 real faces), each cropped ``per_face`` times with
    the box jittered (shift and size up to ±10 %, every other crop mirrored): 80 real-photo crops."""
    rng = np.random.default_rng(seed)
    labels = json.loads((REPO / "tests" / "data" / "photos" / "labels.json").read_text())["photos"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, entry in sorted(labels.items()):
        img = cv2.imread(str(REPO / "tests" / "data" / "photos" / name))
        for f, (x0, y0, x1, y1) in enumerate(entry["faces"]):
            w, h = x1 - x0, y1 - y0
            for k in range(per_face):
                dx, dy, ds = rng.uniform(-0.1, 0.1, 3)
                cx, cy, s = x0 + w / 2 + dx * w, y0 + h / 2 + dy * h, 1 + ds
                a, b = int(max(0, cx - s * w / 2)), int(max(0, cy - s * h / 2))
                c, d = int(min(img.shape[1], cx + s * w / 2)), int(min(img.shape[0], cy + s * h / 2))
                crop = img[b:d, a:c]
                cv2.imwrite(str(folder / f"{Path(name).stem}_{f}_{k}.png"), crop[:, ::-1] if k % 2 else crop)
    return folder


def train(records, epochs: int, seed: int):
    import own_archs as A
    import torch

    from runtime.preprocess import PreprocessSpec, preprocess

    torch.manual_seed(seed)
    spec = PreprocessSpec(input_size=(64, 64), color_mode="gray", mean=(0.5,), std=(0.5,))
    x = torch.from_numpy(preprocess([r.pixels for r in records], spec))
    y = torch.tensor([r.label for r in records])
    model = A.MobileNetGray()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = epochs * (len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        for s in range(0, len(x) - 63, 64):
            idx = perm[s : s + 64]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}", flush=True)
    return model.eval()


def fp32_accuracy(model: Path, sets: dict) -> dict[str, float]:
    """Top-1 accuracy of the adopted FP32 model (onnxruntime) on labelled records, preprocessed by its contract."""
    from runtime.backends.ort import make_session
    from runtime.contract import read_contract
    from runtime.preprocess import preprocess

    spec = read_contract(model).preprocess
    sess = make_session(model, threads=0, log_severity=2)  # onnxruntime's defaults
    out = {}
    for name, recs in sets.items():
        x = preprocess([r.pixels for r in recs], spec)
        pred = sess.run(None, {"input": x})[0].argmax(1)
        out[name] = float((pred == np.array([r.label for r in recs])).mean())
        print(f"  FP32 accuracy on {name} ({len(recs)} labelled images): {100 * out[name]:.1f}%", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/own_model")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--count", type=int, default=2100, help="synthetic seed-0 images (train + held out)")
    args = ap.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    import own_archs as A
    import torch

    from runtime.data import load_dataset

    t0 = time.perf_counter()
    a = load_dataset("synthetic", seed=0, val_fraction=0.2, count=args.count, size=64, mode="gray")
    b = load_dataset(
        "synthetic",
        seed=7,
        val_fraction=0.5,
        count=700,
        size=96,
        mode="rgb",
        noise_std=20.0,
        occlusion_prob=0.4,
        min_intensity=0.3,
    )
    train_a, held_a = a.split("train"), a.split("val")
    calib_a = dump(train_a[:300], out / "photos_A_calib")
    eval_a = dump(held_a[:300], out / "photos_A_heldout")
    calib_b = dump(b.split("train")[:300], out / "photos_B_calib")
    eval_b = dump(b.split("val")[:300], out / "photos_B_eval")
    eval_c = real_crops(out / "photos_C_real")
    print(f"data written in {time.perf_counter() - t0:.1f} s", flush=True)

    t0 = time.perf_counter()
    model = train(train_a, args.epochs, 0)
    print(f"trained in {time.perf_counter() - t0:.1f} s", flush=True)
    torch.save(model.state_dict(), out / "mobilenet_gray.pt")
    plain = out / "outside" / "mobilenet_gray.onnx"
    plain.parent.mkdir(exist_ok=True)
    torch.onnx.export(
        model,
        (torch.rand(1, 1, 64, 64),),
        str(plain),
        input_names=["image"],
        output_names=["scores"],
        opset_version=17,
        dynamo=False,
    )
    contract = A.write_contract("mobilenet_gray", out / "outside" / "mobilenet_gray.contract.yaml")

    m = out / "model.onnx"
    sh("export", "adopt", "--onnx", str(plain), "--contract", str(contract), "--out", str(m))
    fp32_accuracy(m, {"A held-out": held_a[:300], "B": b.split("val")[:300]})
    variants = {
        "int8.nncf": ["--method", "nncf", "--target", "tensorrt"],
        "int8.ort": ["--method", "ort", "--target", "tensorrt"],
        "int8.cpu": ["--method", "ort", "--target", "cpu"],
    }
    files: dict[str, dict[str, Path]] = {"A": {}, "B": {}}
    for calib_name, folder in (("A", calib_a), ("B", calib_b)):
        for tag, extra in variants.items():
            q = out / f"model.{tag}.calib{calib_name}.onnx"
            sh("quantize", "int8", "--onnx", str(m), "--out", str(q), *extra, "--data", str(folder), "--no-latency")
            files[calib_name][tag] = q
    fp16 = out / "model.fp16.onnx"
    sh("quantize", "fp16", "--onnx", str(m), "--out", str(fp16), "--data", str(calib_a), "--no-latency")

    table: dict[tuple[str, str], float] = {}
    for eval_name, folder in (("A held-out", eval_a), ("B", eval_b), ("C", eval_c)):
        cands = [fp16, *files["A"].values(), *files["B"].values()]
        rep = out / f"parity_{eval_name.split()[0]}"
        sh(
            "runtime",
            "parity",
            "--reference",
            str(m),
            "--candidates",
            *map(str, cands),
            "--data",
            str(folder),
            "--out",
            str(rep),
            "--no-progress",
            "--no-plots",
        )
        for row in json.loads((rep / "parity.json").read_text())["rows"]:
            table[(Path(row["model"]).name, eval_name)] = row["top1_agreement"]
    sh(
        "runtime",
        "bench",
        "--models",
        str(plain),
        str(m),
        str(files["A"]["int8.cpu"]),
        "--batch",
        "1",
        "--seconds",
        "1",
        "--out",
        str(out / "bench"),
        "--no-progress",
        "--no-plots",
        "--backends",
        "ort",
    )

    from runtime.report import md_table

    n_c = len(list(eval_c.glob("*.png")))
    names = [fp16.name] + [p.name for d in files.values() for p in d.values()]
    rows = [
        [
            name,
            "—" if "fp16" in name else ("A" if "calibA" in name else "B (other 300 images)"),
            *(f"{100 * table[(name, e)]:.1f}%" for e in ("A held-out", "B", "C")),
        ]
        for name in names
    ]
    print(
        "\n"
        + "\n".join(
            md_table(
                [
                    "file",
                    "calibrated on",
                    "agreement on A held-out (300)",
                    "agreement on B (300)",
                    f"agreement on C ({n_c})",
                ],
                rows,
            )
        )
    )
    print("\ncommands:\n" + "\n".join(COMMANDS))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
