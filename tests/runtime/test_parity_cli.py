"""Parity matrix and the `python -m runtime parity|bench` CLIs: planted faults, precision, bad inputs."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from harness_util import CLASSES, biased_model, linear_model, swapped_model, write_sidecar

from runtime.__main__ import VERBS, main, register_verb
from runtime.backends.ort import OrtBackend
from runtime.compare import Precision
from runtime.errors import ArtifactError, ConfigError, DataError
from runtime.parity import ParityConfig, detect_precision, load_labelled_set, run_logits, run_parity

REPO = Path(__file__).resolve().parents[2]
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    good = linear_model(d / "good" / "model.onnx")
    copy = d / "copy" / "model.onnx"
    copy.parent.mkdir()
    shutil.copy(good, copy)
    return {
        "good": good,
        "copy": copy,
        "swapped": swapped_model(d / "swapped.onnx"),
        "biased": biased_model(d / "biased.onnx"),
        "fp16": linear_model(d / "model.fp16.onnx", fp16=True),
        "int8": linear_model(d / "model.int8.onnx", qdq=True),
    }


class Planted(OrtBackend):
    """A faulty backend: swaps two classes' logits, or favours one class by a small logit bias."""

    name = "planted"

    def __init__(self, path, *, fault: str, swap=(0, 3)):
        super().__init__(path)
        self.fault, self.swap = fault, swap

    def _infer(self, feeds):
        out = super()._infer(feeds)
        y = out["logits"].copy()
        if self.fault == "swap":
            a, b = self.swap
            y[:, [a, b]] = y[:, [b, a]]
        else:  # a per-class bias moves probabilities (a constant added to every logit would not)
            y[:, 0] += np.float32(5e-3)
        return {"logits": y}


def _ref_predictions(model: Path) -> np.ndarray:
    from runtime.contract import read_contract
    from runtime.preprocess import preprocess

    c = read_contract(model)
    data = load_labelled_set(c.dataset, c.class_names)
    with OrtBackend(model) as be:
        return run_logits(be, preprocess(data.images, c.preprocess)).argmax(1), data


def test_planted_faulty_backends_fail_the_right_rows(models):
    pred, data = _ref_predictions(models["good"])
    counts = np.bincount(pred, minlength=7)
    a, b = (int(i) for i in np.argsort(-counts)[:2])  # swap the two most predicted classes

    def factory(name, path):
        return OrtBackend(path) if name == "ort" else Planted(path, fault=name, swap=(a, b))

    cfg = ParityConfig(
        reference=str(models["good"]),
        candidates=(str(models["copy"]), str(models["fp16"])),
        backends=("ort", "swap", "bias"),
    )
    run = run_parity(cfg, factory=factory)
    rows = {(Path(r.model).parent.name if r.precision is Precision.FP32 else "fp16", r.backend): r for r in run.rows}
    assert rows[("good", "ort")].is_reference and rows[("good", "ort")].passed
    # FP32 candidate: the honest backend passes, both planted faults fail.
    assert rows[("copy", "ort")].passed and rows[("copy", "ort")].result.max_abs_diff == 0.0
    swap = rows[("copy", "swap")].result
    assert not swap.passed and any("top-1 agreement" in m for m in swap.reasons)
    assert swap.flipped_ids == tuple(data.ids[i] for i in np.flatnonzero(np.isin(pred, [a, b])))
    delta = np.asarray(swap.confusion_delta)
    assert delta[:, [a, b]].any() and not np.delete(delta, [a, b], axis=1).any()
    bias = rows[("copy", "bias")].result
    assert (
        not bias.passed
        and bias.top1_agreement == 1.0
        and bias.reasons == (f"class probabilities differ by up to {bias.max_prob_diff:.3g}, above the bound 0.0001",)
    )
    # FP16 candidate (detected from its float16 initializers): the bias is within Δp 1e-2, the swap is not.
    assert rows[("fp16", "ort")].passed and rows[("fp16", "bias")].passed
    assert not rows[("fp16", "swap")].passed
    assert {r.name for r in run.failing} == {
        "copy/model.onnx [swap, fp32]",
        "copy/model.onnx [bias, fp32]",
        f"{models['fp16'].parent.name}/model.fp16.onnx [swap, fp16]",
    }
    assert not run.passed and run.count == len(data) == 21


def test_precision_from_sidecar_then_graph(models, tmp_path):
    assert detect_precision(models["good"]) == (Precision.FP32, "graph", "")
    assert detect_precision(models["fp16"]) == (Precision.FP16, "graph", "")
    assert detect_precision(models["int8"]) == (Precision.INT8, "graph", "")
    m = shutil.copy(models["good"], tmp_path / "side.onnx")
    write_sidecar(Path(m), precision="int8", method="nncf")
    assert detect_precision(m) == (Precision.INT8, "sidecar", "nncf")
    write_sidecar(Path(m), artifact_sha256="x")  # an export sidecar without precision: the graph decides
    assert detect_precision(m)[:2] == (Precision.FP32, "graph")
    write_sidecar(Path(m), precision="int4")
    with pytest.raises(ArtifactError, match="int4"):
        detect_precision(m)


def test_cli_parity_exit_code_names_failing_rows(models, tmp_path, caplog):
    out = tmp_path / "report"
    rc = main(
        [
            "parity",
            "--reference",
            str(models["good"]),
            "--candidates",
            str(models["copy"]),
            str(models["swapped"]),
            str(models["biased"]),
            str(models["fp16"]),
            str(models["int8"]),
            "--out",
            str(out),
            "--no-progress",
            "--no-plots",
            "--threads",
            "1",
        ]
    )
    assert rc == 1
    body = json.loads((out / "parity.json").read_text())
    verdict = {(r["label"].split("/")[-1], r["backend"]): r["passed"] for r in body["rows"]}
    assert verdict == {
        ("model.onnx", "ort"): True,
        ("swapped.onnx", "ort"): False,
        ("biased.onnx", "ort"): False,
        ("model.fp16.onnx", "ort"): True,
        ("model.int8.onnx", "ort"): True,
    }
    precisions = {r["label"].split("/")[-1]: r["precision"] for r in body["rows"]}
    assert precisions["model.fp16.onnx"] == "fp16" and precisions["model.int8.onnx"] == "int8"
    assert "swapped.onnx [ort, fp32]" in caplog.text and "biased.onnx [ort, fp32]" in caplog.text
    assert "FAIL" in (out / "parity.md").read_text()
    assert body["environment"]["versions"]["onnxruntime"]
    assert body["command"].startswith("python -m runtime parity --reference")


def test_cli_parity_passes_and_writes_plots(models, tmp_path):
    rc = main(
        [
            "parity",
            "--reference",
            str(models["good"]),
            "--candidates",
            str(models["copy"]),
            str(models["int8"]),
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert (tmp_path / "parity.confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in CLASSES[:3]:
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                cv2.imwrite(str(root / split / c / f"{i}.png"), rng.integers(0, 256, (12, 10), dtype=np.uint8))
    return root


def test_cli_parity_data_override(models, tmp_path):
    folder = _image_folder(tmp_path / "faces")
    rc = main(
        [
            "parity",
            "--reference",
            str(models["good"]),
            "--candidates",
            str(models["copy"]),
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "r1"),
            "--no-progress",
            "--no-plots",
        ]
    )
    assert rc == 0
    body = json.loads((tmp_path / "r1" / "parity.json").read_text())
    assert body["reference"]["count"] == 6 and "ImageFolder" in body["dataset"]
    cfg = tmp_path / "data.yaml"
    cfg.write_text(
        "fit:\n  data:\n    kind: synthetic\n    val_fraction: 0.5\n    seed: 1\n    options: {count: 28, size: 16}\n"
    )
    rc = main(
        [
            "parity",
            "--reference",
            str(models["good"]),
            "--candidates",
            str(models["copy"]),
            "--data",
            str(cfg),
            "--out",
            str(tmp_path / "r2"),
            "--no-progress",
            "--no-plots",
        ]
    )
    assert rc == 0
    assert json.loads((tmp_path / "r2" / "parity.json").read_text())["reference"]["count"] == 14


def test_labelled_set_rejects_foreign_classes(tmp_path):
    root = tmp_path / "f"
    (root / "val" / "zebra").mkdir(parents=True)
    cv2.imwrite(str(root / "val" / "zebra" / "0.png"), np.zeros((4, 4), np.uint8))
    # A folder whose sub-folders are not the model's classes is a folder of unlabelled images
    # (issue 15): parity then reports agreement, never accuracy against made-up labels.
    unlabelled = load_labelled_set({}, CLASSES, data=root)
    assert unlabelled.labels is None and unlabelled.ids == ("val/zebra/0.png",)
    with pytest.raises(DataError, match="--data"):
        load_labelled_set({}, CLASSES)


@pytest.mark.parametrize("case", ["missing", "corrupt", "no_contract", "bad_data", "pt_candidate_suffix"])
def test_cli_parity_bad_inputs_exit_nonzero(models, tmp_path, caplog, case):
    cand = str(models["copy"])
    extra: list[str] = []
    if case == "missing":
        cand, expect = str(tmp_path / "nope.onnx"), "not found"
    elif case == "corrupt":
        p = tmp_path / "corrupt.onnx"
        p.write_bytes(b"\x08\x07garbage" * 10)
        cand, expect = str(p), "not an ONNX model"
    elif case == "no_contract":
        cand, expect = str(linear_model(tmp_path / "bare.onnx", contract=False)), "deployment-contract"
    elif case == "bad_data":
        extra, expect = ["--data", str(tmp_path / "nowhere")], "neither"
    else:
        p = tmp_path / "weights.bin"
        p.write_bytes(b"x")
        cand, expect = str(p), "expected a .onnx"
    rc = main(
        [
            "parity",
            "--reference",
            str(models["good"]),
            "--candidates",
            cand,
            *extra,
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
            "--no-plots",
        ]
    )
    # A wrong kind of file on the command line is bad usage (2); a bad file's content is an error (1).
    assert rc == (2 if case == "pt_candidate_suffix" else 1) and expect in caplog.text
    assert not (tmp_path / "o" / "parity.json").exists()  # nothing half-written


def test_cli_usage_errors_exit_2(models, capsys):
    assert main(["parity", "--reference", str(models["good"])]) == 2  # --candidates missing
    assert main(["frobnicate"]) == 2
    assert "unknown verb" in capsys.readouterr().err
    assert main([]) == 2


def test_cli_bench_with_parity_join(models, tmp_path):
    main(
        [
            "parity",
            "--reference",
            str(models["good"]),
            "--candidates",
            str(models["copy"]),
            "--out",
            str(tmp_path / "p"),
            "--no-progress",
            "--no-plots",
        ]
    )
    rc = main(
        [
            "bench",
            "--models",
            str(models["copy"]),
            str(models["int8"]),
            "--batch",
            "1,4",
            "--seconds",
            "0",
            "--iterations",
            "5",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--repeat",
            "2",
            "--parity",
            str(tmp_path / "p" / "parity.json"),
            "--out",
            str(tmp_path / "b"),
            "--no-progress",
        ]
    )
    assert rc == 0
    body = json.loads((tmp_path / "b" / "bench.json").read_text())
    rows = {(r["label"].split("/")[-1], r["batch"]): r for r in body["rows"]}
    assert set(rows) == {("model.onnx", 1), ("model.onnx", 4), ("model.int8.onnx", 1), ("model.int8.onnx", 4)}
    assert rows[("model.onnx", 1)]["accuracy"] is not None and rows[("model.onnx", 1)]["top1_agreement"] == 1.0
    assert rows[("model.int8.onnx", 1)]["accuracy"] is None  # not in the parity report: left empty
    assert rows[("model.onnx", 4)]["latency_ms"]["count"] >= 5 and rows[("model.onnx", 4)]["throughput_ips"] > 0
    assert rows[("model.int8.onnx", 1)]["precision"] == "int8"
    assert len(body["overhead"]) == 2 and all(o["batch"] == 1 for o in body["overhead"])
    assert len(body["spread"]) == 4
    for name in ("pareto", "latency"):
        assert (tmp_path / "b" / f"bench.{name}.png").is_file()


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--batch", "1,x"], "comma-separated"),
        (["--batch", "0"], "positive"),
        (["--backends", "nosuch"], "unknown backend"),
    ],
)
def test_cli_bench_bad_options(models, tmp_path, caplog, args, expect):
    rc = main(
        [
            "bench",
            "--models",
            str(models["good"]),
            *args,
            "--seconds",
            "0",
            "--iterations",
            "2",
            "--warmup",
            "0",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--no-plots",
        ]
    )
    assert rc == 2 and expect in caplog.text  # bad usage (docs/errors.md)


def test_cli_bench_bad_model_files(tmp_path, caplog):
    p = tmp_path / "corrupt.onnx"
    p.write_bytes(b"not onnx at all")
    assert main(["bench", "--models", str(p), "--out", str(tmp_path), "--no-progress"]) == 1
    assert main(["bench", "--models", str(tmp_path / "missing.onnx"), "--out", str(tmp_path), "--no-progress"]) == 1
    assert "not found" in caplog.text


def test_verb_registry_is_open_to_other_modules():
    assert {"parity", "bench"} <= set(VERBS)
    with pytest.raises(ConfigError):
        register_verb("parity", "x:y")
    register_verb("selftest_demo", "json:dumps")
    try:
        from runtime.__main__ import resolve_verb

        assert resolve_verb("selftest_demo") is json.dumps
    finally:
        del VERBS["selftest_demo"]


def test_python_dash_m_runtime_help():
    res = subprocess.run(
        [sys.executable, "-m", "runtime", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "parity" in res.stdout and "bench" in res.stdout


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (the PyTorch reference needs the train extra)")
def test_cli_parity_pytorch_reference(tmp_path):
    import torch

    from export.config import ExportConfig
    from export.exporter import export_onnx
    from train.checkpoint import save_checkpoint
    from train.models import create_model, get_model_info

    torch.manual_seed(0)
    spec = get_model_info("lanmsff_tiny").preprocess
    ck = save_checkpoint(
        tmp_path / "checkpoint.pt",
        create_model("lanmsff_tiny"),
        model_name="lanmsff_tiny",
        class_names=CLASSES,
        preprocess=spec,
        dataset={"kind": "synthetic", "count": 42, "size": 64, "seed": 0, "val_fraction": 0.3},
    )
    onnx_path = export_onnx(
        ExportConfig(checkpoint=str(ck), out=str(tmp_path / "model.onnx"), parity_batches="1")
    ).model
    rc = main(
        [
            "parity",
            "--reference",
            str(ck),
            "--candidates",
            str(onnx_path),
            "--limit",
            "8",
            "--no-progress",
            "--no-plots",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    body = json.loads((tmp_path / "parity" / "parity.json").read_text())
    assert [(r["backend"], r["passed"]) for r in body["rows"]] == [("torch", True), ("ort", True)]
    assert body["rows"][1]["max_abs_diff"] < 1e-4 and body["reference"]["count"] == 8
