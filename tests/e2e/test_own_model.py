"""Issue 15 end to end: an outside model and a folder of unlabelled face crops through every stage.

A plain ``torch.onnx.export`` of an architecture the project does not define -> ``export adopt``
-> ``quantize int8`` (nncf, ort, ort --target cpu) and ``quantize fp16`` calibrated on an unlabelled
image folder -> ``runtime parity --data FOLDER`` -> ``runtime bench``. Every written model must pass
``onnx.checker``; bad folders fail clearly and write nothing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import own_archs as A
import pytest

from export.__main__ import main as export_cli
from quantize.__main__ import main as quantize_cli
from runtime.__main__ import bench_main, parity_main

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

QUANT = {
    "int8.nncf": ["int8", "--method", "nncf", "--target", "tensorrt"],
    "int8.ort": ["int8", "--method", "ort", "--target", "tensorrt"],
    "int8.cpu": ["int8", "--method", "ort", "--target", "cpu"],
    "fp16": ["fp16"],
}
SMALL = ["--no-latency", "--calib-size", "24", "--min-calib-size", "16"]


def _adopt(tmp: Path, arch: str) -> tuple[Path, Path]:
    plain = A.plain_onnx(arch, tmp / "outside" / f"{arch}.onnx", batch=1)
    contract = A.write_contract(arch, tmp / "outside" / f"{arch}.contract.yaml")
    model = tmp / "run" / "model.onnx"
    assert export_cli(["adopt", "--onnx", str(plain), "--contract", str(contract), "--out", str(model)]) == 0
    return plain, model


def _quantize_all(model: Path, faces: Path, which=QUANT, int8_extra=()) -> dict[str, Path]:
    outs = {}
    for tag, verb in which.items():
        out = model.with_name(f"model.{tag}.onnx")
        extra = [*SMALL, *int8_extra] if verb[0] == "int8" else ["--no-latency"]
        assert quantize_cli([*verb, "--onnx", str(model), "--out", str(out), "--data", str(faces), *extra]) == 0, tag
        outs[tag] = out
    return outs


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(A.ARCHS))
def test_outside_onnx_and_unlabelled_faces_through_every_stage(tmp_path, arch):
    faces = A.face_folder(tmp_path / "my_photos", 30, seed=5)
    _, model = _adopt(tmp_path, arch)
    outs = _quantize_all(model, faces)

    for path in [model, *outs.values()]:
        onnx.checker.check_model(str(path), full_check=True)
    manifest = json.loads(model.with_name("model.int8.nncf.calibration.json").read_text())
    assert manifest["dataset"] == {"kind": "images", "root": str(faces)}
    assert manifest["size"] == 24 and manifest["class_counts"] == {**{c: 0 for c in A.CLASSES}, "(unlabelled)": 24}
    assert "seeded subset (seed 0)" in manifest["source"]
    side = json.loads(model.with_name("model.int8.ort.onnx.json").read_text())
    assert "unlabelled" in side["parity"] or side["parity"]["top1_agreement"] is not None

    report = tmp_path / "parity"
    code = parity_main(
        [
            "--reference",
            str(model),
            "--candidates",
            *map(str, outs.values()),
            "--data",
            str(faces),
            "--out",
            str(report),
            "--no-progress",
            "--no-plots",
        ]
    )
    body = json.loads((report / "parity.json").read_text())
    rows = [r for r in body["rows"] if not r.get("is_reference")]
    assert len(rows) == len(outs)
    for r in rows:  # agreement per candidate, never an accuracy without labels
        assert 0.0 <= r["top1_agreement"] <= 1.0 and r["accuracy"] is None and r["max_prob_diff"] is not None
    assert "30 images, unlabelled" in body["dataset"]
    assert code == (0 if all(r["passed"] for r in rows) else 1)

    bench = tmp_path / "bench"
    assert (
        bench_main(
            [
                "--models",
                str(model),
                str(outs["int8.cpu"]),
                "--batch",
                "1,4",
                "--seconds",
                "0.05",
                "--iterations",
                "3",
                "--out",
                str(bench),
                "--no-progress",
                "--no-plots",
                "--backends",
                "ort",
            ]
        )
        == 0
    )


def test_unlabelled_folder_quick_path(tmp_path):
    """The fast (non-slow) slice: adopt, ort-cpu INT8 on unlabelled crops, parity with labels on some."""
    faces = A.face_folder(tmp_path / "photos", 20, seed=1)
    _, model = _adopt(tmp_path, "mobilenet_gray")
    outs = _quantize_all(model, faces, {"int8.cpu": QUANT["int8.cpu"]})
    onnx.checker.check_model(str(outs["int8.cpu"]), full_check=True)
    q = json.loads(outs["int8.cpu"].with_name("model.int8.cpu.onnx.json").read_text())
    assert q["calibration"]["source"].startswith(f"image folder {faces} (20 images, unlabelled)")

    # A folder with a class sub-folder for every image: accuracy is computed again.
    labelled = tmp_path / "labelled"
    for i, p in enumerate(sorted(faces.rglob("*.png"))):
        cls = A.CLASSES[i % 2]
        (labelled / cls).mkdir(parents=True, exist_ok=True)
        p.replace(labelled / cls / p.name)
    from runtime.parity import load_labelled_set

    s = load_labelled_set({}, A.CLASSES, data=labelled)  # an ImageFolder: its (stratified) val split, labelled
    assert s.labels is not None and set(s.labels.tolist()) <= {0, 1} and "split val" in s.source


def test_bench_runs_a_plain_onnx_without_contract(tmp_path, caplog):
    plain = A.plain_onnx("mobilenet_gray", tmp_path / "plain.onnx", batch=None)
    with caplog.at_level(logging.WARNING):
        assert (
            bench_main(
                [
                    "--models",
                    str(plain),
                    "--batch",
                    "1,2",
                    "--seconds",
                    "0.05",
                    "--iterations",
                    "3",
                    "--out",
                    str(tmp_path / "bench"),
                    "--no-progress",
                    "--no-plots",
                    "--backends",
                    "ort",
                ]
            )
            == 0
        )
    assert "has no deployment contract: benchmarking it on random inputs" in caplog.text
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    assert sorted(r["batch"] for r in rows) == [1, 2] and all(r["latency_ms"] for r in rows)


@pytest.mark.parametrize("bad", ["empty", "corrupt", "missing"])
def test_folder_without_readable_image_fails_and_writes_nothing(tmp_path, caplog, bad):
    _, model = _adopt(tmp_path, "mobilenet_gray")
    folder = tmp_path / "photos"
    if bad != "missing":
        (folder / "sub").mkdir(parents=True)
        (folder / "notes.txt").write_text("not an image")
    if bad == "corrupt":
        (folder / "a.jpg").write_bytes(b"\xff\xd8 truncated")
        (folder / "sub" / "b.png").write_bytes(b"")
    before = sorted(p.name for p in model.parent.iterdir())
    with caplog.at_level(logging.ERROR):
        q = quantize_cli(
            [
                "int8",
                "--method",
                "ort",
                "--target",
                "cpu",
                "--onnx",
                str(model),
                "--out",
                str(model.with_name("model.int8.onnx")),
                "--data",
                str(folder),
                *SMALL,
            ]
        )
        p = parity_main(
            [
                "--reference",
                str(model),
                "--candidates",
                str(model),
                "--data",
                str(folder),
                "--out",
                str(tmp_path / "parity"),
                "--no-progress",
                "--no-plots",
            ]
        )
    assert q != 0 and p != 0
    expect = {
        "empty": "no image files found",
        "corrupt": "none of its 2 image file(s) can be decoded",
        "missing": "no such file or folder",
    }[bad]
    assert expect in caplog.text, caplog.text
    assert sorted(p.name for p in model.parent.iterdir()) == before
    assert not (tmp_path / "parity" / "parity.json").exists()


@pytest.mark.slow
def test_manet_through_the_same_route(tmp_path):
    """MA-Net (tiny) as an outsider would bring it: plain export, adopt, INT8 on unlabelled crops, parity."""
    import torch

    from train.models import create_model, get_model_info

    spec = get_model_info("manet_tiny").preprocess
    torch.manual_seed(0)
    plain = tmp_path / "outside" / "manet.onnx"
    plain.parent.mkdir()
    torch.onnx.export(
        create_model("manet_tiny").eval(),
        (torch.rand(1, *spec.input_shape),),
        str(plain),
        input_names=["x"],
        output_names=["y"],
        opset_version=17,
        dynamo=False,
    )
    contract = plain.with_suffix(".yaml")
    contract.write_text(
        f"classes: {list(A.CLASSES)}\ninput_size: {list(spec.input_size)}\ncolor_mode: {spec.color_mode.value}\n"
        f"scale: {spec.scale}\nmean: {list(spec.mean)}\nstd: {list(spec.std)}\n"
    )
    model = tmp_path / "run" / "model.onnx"
    assert export_cli(["adopt", "--onnx", str(plain), "--contract", str(contract), "--out", str(model)]) == 0
    faces = A.face_folder(tmp_path / "photos", 20, seed=2, size=(spec.input_size[0] + 8, spec.input_size[1]))
    outs = _quantize_all(model, faces, {"int8.cpu": QUANT["int8.cpu"], "fp16": QUANT["fp16"]}, ("--ignore", "none"))
    for path in outs.values():
        onnx.checker.check_model(str(path), full_check=True)
    parity_main(
        [
            "--reference",
            str(model),
            "--candidates",
            *map(str, outs.values()),
            "--data",
            str(faces),
            "--out",
            str(tmp_path / "parity"),
            "--no-progress",
            "--no-plots",
        ]
    )
    rows = json.loads((tmp_path / "parity" / "parity.json").read_text())["rows"]
    assert len(rows) == 3 and all(np.isfinite(r["top1_agreement"]) for r in rows)


def test_detect_crops_faces_from_whole_photos_first(tmp_path):
    """--detect (runtime.detect's detector, as `runtime infer` uses it): real photos -> face crops -> parity/int8."""
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "photos", photos)
    _, model = _adopt(tmp_path, "mobilenet_gray")
    report = tmp_path / "parity"
    parity_main(
        [
            "--reference",
            str(model),
            "--candidates",
            str(model),
            "--data",
            str(photos),
            "--detect",
            "--out",
            str(report),
            "--no-progress",
            "--no-plots",
        ]
    )
    faces = json.loads((report / "faces" / "faces.json").read_text())
    assert faces["faces"] >= 6 and faces["images_without_face"] >= 2 and faces["source"] == str(photos)
    body = json.loads((report / "parity.json").read_text())
    assert f"({faces['faces']} images, unlabelled)" in body["dataset"]
    out = model.with_name("model.int8.onnx")
    assert (
        quantize_cli(
            [
                "int8",
                "--method",
                "ort",
                "--target",
                "cpu",
                "--onnx",
                str(model),
                "--out",
                str(out),
                "--data",
                str(photos),
                "--detect",
                "--no-latency",
                "--calib-size",
                "8",
                "--min-calib-size",
                "4",
            ]
        )
        == 0
    )
    manifest = json.loads(model.with_name("model.int8.calibration.json").read_text())
    assert manifest["dataset"]["root"] == str(model.with_name("model.int8.faces"))
    # No face anywhere: a clear error, no crops folder left behind.
    empty = tmp_path / "no_faces"
    empty.mkdir()
    import cv2

    cv2.imwrite(str(empty / "flat.png"), np.full((120, 160, 3), 128, np.uint8))
    assert (
        parity_main(
            [
                "--reference",
                str(model),
                "--candidates",
                str(model),
                "--data",
                str(empty),
                "--detect",
                "--out",
                str(tmp_path / "p2"),
                "--no-progress",
                "--no-plots",
            ]
        )
        != 0
    )
    assert not (tmp_path / "p2" / "faces").exists() and not (tmp_path / "p2" / "parity.json").exists()
