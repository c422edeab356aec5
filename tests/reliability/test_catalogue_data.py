"""Reliability catalogue, data and config cases: bad inputs fed to the real commands.

Every case runs the real CLI (in-process ``main(argv)``; a few through ``python -m`` in a subprocess
to prove the process exit code) and checks three things: the exit code, that the message names what
was received, what was expected and how to fix it, and that what the output folder held before is
still there, byte for byte, with nothing half-written beside it. The table of these cases is
``docs/errors-data.partial.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CLASSES7 = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
CLASSES8 = (*CLASSES7, "contempt")
# Exit codes (runtime/errors.py): pipeline error 1, config or usage 2. `infer` has two of its own
# (its --help): 4 done but some inputs unreadable, 5 nothing classified.
EXIT_ERROR, EXIT_USAGE = 1, 2
INFER_PARTIAL, INFER_NOTHING = 4, 5


# --- helpers -------------------------------------------------------------------------------------


def write_png(path: Path, value: int, size: int = 24, seed: int = 0) -> Path:
    """A small gray PNG whose brightness depends on ``value`` (so classes differ a little)."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(30 + 30 * value, 25, (size, size)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


def write_faces(root: Path, classes: Sequence[str] = CLASSES7, per_split: dict[str, int] | None = None) -> Path:
    """An ImageFolder ``root/<split>/<class>/*.png``."""
    for split, n in (per_split or {"train": 4, "val": 2}).items():
        for c, cls in enumerate(classes):
            for i in range(n):
                write_png(root / split / cls / f"{i}.png", c, seed=zlib.crc32(f"{split}/{cls}/{i}".encode()))
    return root


def encoded(ext: str) -> bytes:
    img = (np.random.default_rng(1).random((48, 48)) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


# name -> (file name, bytes, phrase the message must contain)
BAD_IMAGES: dict[str, tuple[str, bytes, str]] = {
    "text_named_jpg": ("notes.jpg", b"shopping list: eggs, milk\n" * 4, "not an image"),
    "truncated_jpeg": ("cut.jpg", encoded(".jpg")[: len(encoded(".jpg")) * 3 // 5], "truncated"),
    "truncated_png": ("cut.png", encoded(".png")[: len(encoded(".png")) * 3 // 5], "truncated"),
    "zero_byte": ("empty.jpg", b"", "empty file (0 bytes)"),
}


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder`` (the run lock file aside)."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def previous_outputs(folder: Path, files: dict[str, bytes | Path]) -> dict[str, str]:
    """Put earlier outputs into ``folder`` and return their snapshot."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    before = snapshot(folder)
    assert before, "the test must start from a non-empty output folder"
    return before


def run_cli(main: Callable, argv: Sequence[str], caplog, capsys) -> tuple[int, str]:
    """(exit code, everything logged and printed) of an in-process ``main(argv)``."""
    caplog.clear()
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out = capsys.readouterr()
    return int(rc), "\n".join([caplog.text, out.out, out.err])


def run_process(module: str, argv: Sequence[str]) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, argv)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


def assert_says(text: str, *patterns: str) -> None:
    """Every regex in ``patterns`` occurs in ``text``; no traceback was printed."""
    for pattern in patterns:
        assert re.search(pattern, text, re.S), f"{pattern!r} not in output:\n{text[-3000:]}"
    assert "Traceback (most recent call last)" not in text, text[-3000:]


def fit_yaml(path: Path, data: dict, out: Path, *, num_classes: int = 7, extra: str = "") -> Path:
    """A tiny `train fit` config: lanmsff_tiny, one epoch, one thread."""
    path.write_text(
        "fit:\n"
        f"  out: {json.dumps(str(out))}\n"
        f"  model: {{name: lanmsff_tiny, num_classes: {num_classes}}}\n"
        f"  data: {json.dumps(data)}\n"
        "  train: {epochs: 1, batch_size: 8, num_threads: 1, augment: none, scheduler: none, seed: 0}\n" + extra,
        encoding="utf-8",
    )
    return path


def train_main():
    from train.__main__ import main

    return main


def quantize_main():
    from quantize.__main__ import main

    return main


def runtime_main():
    from runtime.__main__ import main

    return main


# --- session fixtures: one tiny trained run, exported --------------------------------------------


@pytest.fixture(scope="session")
def faces7(tmp_path_factory) -> Path:
    return write_faces(tmp_path_factory.mktemp("faces7"))


@pytest.fixture(scope="session")
def faces8(tmp_path_factory) -> Path:
    """The same layout with contempt: eight classes."""
    return write_faces(tmp_path_factory.mktemp("faces8"), CLASSES8)


@pytest.fixture(scope="session")
def run7(tmp_path_factory, faces7) -> Path:
    """`train fit` (1 epoch of lanmsff_tiny on ``faces7``) then `export onnx`: a real 7-class run folder."""
    from export.__main__ import main as export_main

    base = tmp_path_factory.mktemp("run7")
    out = base / "run"
    cfg = fit_yaml(base / "fit.yaml", {"kind": "folder", "root": str(faces7)}, out)
    assert train_main()(["fit", "--config", str(cfg), "--no-progress"]) == 0
    assert (
        export_main(
            [
                "onnx",
                "--checkpoint",
                str(out / "checkpoint.pt"),
                "--out",
                str(out / "model.onnx"),
                "--parity-batches",
                "1,2",
            ]
        )
        == 0
    )
    for name in ("checkpoint.pt", "checkpoint.json", "state.pt", "model.onnx"):
        assert (out / name).is_file(), name
    return out


def copy_run(run7: Path, dst: Path, names: Sequence[str]) -> dict[str, str]:
    """Copy some of the trained run's files into ``dst`` (the earlier outputs a bad run must keep)."""
    return previous_outputs(dst, {n: run7 / n for n in names})


# --- images that are not images ------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_fit_bad_image_in_dataset(case, faces7, run7, tmp_path, caplog, capsys):
    name, data, phrase = BAD_IMAGES[case]
    root = shutil.copytree(faces7, tmp_path / "data")
    (root / "train" / "happy" / name).write_bytes(data)  # in train: decoded lazily, during the first epoch
    out = tmp_path / "out"
    before = copy_run(run7, out, ["checkpoint.pt", "checkpoint.json"])
    cfg = fit_yaml(tmp_path / "fit.yaml", {"kind": "folder", "root": str(root)}, out)
    rc, text = run_cli(train_main(), ["fit", "--config", cfg, "--no-progress"], caplog, capsys)
    assert rc == EXIT_ERROR, text
    assert_says(
        text,
        re.escape(f"train/happy/{name}"),
        re.escape(phrase),
        r"expected an image \(\.png",
        r"Remove the file or replace it",
    )
    assert snapshot(out) == before  # the earlier checkpoint is intact, and no state.pt was started


def test_infer_folder_with_bad_images_goes_on(run7, faces7, tmp_path, caplog, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(faces7 / "val" / "happy" / "0.png", src / "face.png")
    for name, data, _ in BAD_IMAGES.values():
        (src / name).write_bytes(data)
    out = tmp_path / "infer"
    before = previous_outputs(out, {"notes.md": b"kept: earlier notes\n", "old/report.json": b'{"old": 1}'})
    argv = ["infer", "--model", run7 / "model.onnx", "--source", src, "--out", out, "--no-detect", "--no-progress"]
    rc, text = run_cli(runtime_main(), argv, caplog, capsys)
    assert rc == INFER_PARTIAL, text
    bad_names = [name for name, _, _ in BAD_IMAGES.values()]
    assert_says(text, *(re.escape(n) + r".*unreadable" for n in bad_names), r"4 input\(s\) could not be read")
    status = {
        Path(s["source"]).name: s["status"] for s in json.loads((out / "predictions.json").read_text())["sources"]
    }
    assert status == {"face.png": "ok", **{n: "unreadable" for n in bad_names}}
    after = snapshot(out)
    assert {k: after[k] for k in before} == before  # earlier files untouched; predictions.* are new


def test_infer_single_bad_image_process_exit_code(run7, tmp_path):
    name, data, _ = BAD_IMAGES["truncated_jpeg"]
    bad = tmp_path / name
    bad.write_bytes(data)
    out = tmp_path / "infer"
    before = previous_outputs(out, {"notes.md": b"kept\n"})
    rc, text = run_process(
        "runtime",
        ["infer", "--model", run7 / "model.onnx", "--source", bad, "--out", out, "--no-detect", "--no-progress"],
    )
    assert rc == INFER_NOTHING, text
    assert_says(text, re.escape(name) + r".*unreadable.*cannot decode", r"nothing was classified.*unreadable: 1")
    assert {k: v for k, v in snapshot(out).items() if k in before} == before


# --- dataset folders: a missing class, an empty class, an unknown label --------------------------


def _fit_fails(
    data: dict, tmp_path: Path, caplog, capsys, *, num_classes: int = 7, resume: bool = False, out: Path | None = None
) -> tuple[int, str, dict, Path]:
    out = out or tmp_path / "out"
    before = snapshot(out) if out.exists() else previous_outputs(out, {"checkpoint.pt": b"earlier checkpoint bytes"})
    cfg = fit_yaml(tmp_path / "fit.yaml", data, out, num_classes=num_classes)
    argv = ["fit", "--config", cfg, "--no-progress", *(["--resume"] if resume else [])]
    rc, text = run_cli(train_main(), argv, caplog, capsys)
    return rc, text, before, out


def test_fit_missing_class_folder(faces7, tmp_path, caplog, capsys):
    root = shutil.copytree(faces7, tmp_path / "data")
    for split in ("train", "val"):
        shutil.rmtree(root / split / "disgust")
    rc, text, before, out = _fit_fails({"kind": "folder", "root": str(root)}, tmp_path, caplog, capsys)
    assert rc == EXIT_ERROR, text
    assert_says(
        text,
        r"no training samples of class\(es\) \['disgust'\]",
        r"'disgust': 0",
        r"'happy': 4",
        r"7-class model",
        r"Add training images of those classes",
    )
    assert snapshot(out) == before


def test_fit_empty_class_folder(faces7, tmp_path, caplog, capsys):
    root = shutil.copytree(faces7, tmp_path / "data")
    for p in (root / "train" / "fear").iterdir():
        p.unlink()
    rc, text, before, out = _fit_fails({"kind": "folder", "root": str(root)}, tmp_path, caplog, capsys)
    assert rc == EXIT_ERROR, text
    assert_says(
        text,
        r"train/fear: class folder contains no images \(suffixes \.png",
        r"add its images or delete the empty folder",
    )
    assert snapshot(out) == before


def test_fit_unknown_class_folder(faces7, tmp_path, caplog, capsys):
    root = shutil.copytree(faces7, tmp_path / "data")
    write_png(root / "train" / "joyful" / "0.png", 3)
    rc, text, before, out = _fit_fails({"kind": "folder", "root": str(root)}, tmp_path, caplog, capsys)
    assert rc == EXIT_ERROR, text
    assert_says(
        text,
        r"train/joyful: unknown class folder 'joyful'",
        r"valid names \(case-insensitive\): .*happiness",
        r"Rename the folder to one of them",
    )
    assert snapshot(out) == before


def fer_row(emotion: str, value: int = 90, usage: str = "Training", n: int = 2304) -> str:
    return f"{emotion},{' '.join([str(value)] * n)},{usage}\n"


def test_fit_unknown_csv_label(tmp_path, caplog, capsys):
    csv = tmp_path / "fer" / "fer2013.csv"
    csv.parent.mkdir()
    csv.write_text("emotion,pixels,Usage\n" + fer_row("3") + fer_row("9") + fer_row("0"))
    rc, text, before, out = _fit_fails({"kind": "fer2013", "root": str(csv.parent)}, tmp_path, caplog, capsys)
    assert rc == EXIT_ERROR, text
    assert_says(text, r"fer2013\.csv:3: emotion must be 0\.\.6, got 9", r"correct that line or delete it")
    assert snapshot(out) == before


# --- one malformed entry in every dataset format -------------------------------------------------


def _fer2013(root: Path) -> tuple[dict, str]:
    (root / "fer2013.csv").write_text("emotion,pixels,Usage\n" + fer_row("0") + fer_row("1", n=2303) + fer_row("2"))
    return {}, r"fer2013\.csv:3: expected 2304 pixel values, got 2303; correct that line"


FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"


def _ferplus_csv(root: Path) -> tuple[dict, str]:
    (root / "fer2013.csv").write_text("emotion,pixels,Usage\n" + fer_row("0") * 3)
    (root / "fer2013new.csv").write_text(
        FERPLUS_HEADER + "Training,fer0.png,10,0,0,0,0,0,0,0,0,0\n"
        "Training,fer1.png,0,x,0,0,0,0,0,0,0,0\nTraining,fer2.png,0,9,0,0,0,0,0,0,0,1\n"
    )
    return {}, r"fer2013new\.csv:3: vote count must be an integer, got 'x'; correct that line"


def _ferplus_folders(root: Path) -> tuple[dict, str]:
    folder = root / "FER2013Train"
    for i in range(2):
        write_png(folder / f"fer{i}.png", i, size=48)
    (folder / "label.csv").write_text(
        'fer0.png,"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0\nfer1.png,"(0, 0, 48)",0,10,0,0,0,0,0,0,0,0\n'
    )
    return {}, r"FER2013Train/label\.csv:2: face rectangle must look like \"\(0, 0, 48, 48\)\", got '\(0, 0, 48\)'"


def _rafdb(root: Path) -> tuple[dict, str]:
    labels = root / "EmoLabel" / "list_patition_label.txt"
    labels.parent.mkdir(parents=True)
    labels.write_text("train_00001.jpg 4\ntrain_00002.jpg 8\ntest_00001.jpg 1\n")
    for stem in ("train_00001", "train_00002", "test_00001"):
        write_png(root / "Image" / "aligned" / f"{stem}_aligned.jpg", 2)
    return {}, r"list_patition_label\.txt:2: label must be 1\.\.7, got 8; correct that line"


def _affectnet(root: Path) -> tuple[dict, str]:
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    (root / "Manually_Annotated_Images").mkdir()
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
    (lists / "training.csv").write_text(header + '1/a.jpg,0,0,20,20,"1;2",1,0.5,0.1\n1/b.jpg,0,0,20,"1;2",2,0.1,0.2\n')
    (lists / "validation.csv").write_text('1/c.jpg,0,0,20,20,"1;2",0,0.0,0.0\n')
    return {}, r"training\.csv:3: expected 9 fields \(subDirectory_filePath,.*\), got 8; correct that line"


def _kdef(root: Path) -> tuple[dict, str]:
    for name in ("AF01AFS", "AF01HAS", "AF01XXS"):
        write_png(root / "KDEF" / "AF01" / f"{name}.JPG", 1)
    return (
        {},
        r"AF01XXS\.JPG: not a KDEF file name \(e\.g\. AF01AFS\.JPG.*\)\. Rename or remove the file, .*on_bad_name: skip",
    )


def _caer_s(root: Path) -> tuple[dict, str]:
    write_faces(root, ("anger", "happy"), {"train": 1, "test": 1})
    write_png(root / "train" / "Contempt" / "0.png", 7)
    return {}, r"train/Contempt: unknown class folder 'Contempt'; valid names .*anger.*surprise\. Rename the folder"


def _sfew(root: Path) -> tuple[dict, str]:
    write_faces(root, ("Angry", "Happy"), {"Train": 1, "Val": 1})
    write_png(root / "Val" / "Happiness" / "0.png", 3)
    return {}, r"Val/Happiness: unknown class folder 'Happiness'; valid names .*happy.*\. Rename the folder"


def _folder(root: Path) -> tuple[dict, str]:
    write_faces(root, ("happy", "sad"), {"train": 1})
    write_png(root / "train" / "3" / "0.png", 3)
    return {}, r"train/3: unknown class folder '3'; .*numeric folders 0, 1, \.\.\. need the class_order option\. Rename"


FORMATS: dict[str, Callable[[Path], tuple[dict, str]]] = {
    "fer2013": _fer2013,
    "ferplus": _ferplus_csv,
    "ferplus_folders": _ferplus_folders,
    "rafdb": _rafdb,
    "affectnet": _affectnet,
    "kdef": _kdef,
    "caer_s": _caer_s,
    "sfew": _sfew,
    "folder": _folder,
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_fit_malformed_entry_in_each_format(fmt, tmp_path, caplog, capsys):
    root = tmp_path / "dataset"
    root.mkdir()
    options, message = FORMATS[fmt](root)
    kind = fmt.removesuffix("_folders")
    rc, text, before, out = _fit_fails({"kind": kind, "root": str(root), "options": options}, tmp_path, caplog, capsys)
    assert rc == EXIT_ERROR, text
    assert_says(text, re.escape(str(root)), message)
    assert snapshot(out) == before


# --- class lists that differ between the model and the data --------------------------------------


def test_quantize_int8_data_with_a_class_the_model_lacks(run7, faces8, tmp_path, caplog, capsys):
    out = tmp_path / "q"
    before = previous_outputs(
        out,
        {
            "model.onnx": run7 / "model.onnx",
            "model.int8.onnx": b"earlier int8 model",
            "model.int8.onnx.json": b'{"fingerprint": "earlier"}',
        },
    )
    argv = [
        "int8",
        "--onnx",
        out / "model.onnx",
        "--out",
        out / "model.int8.onnx",
        "--data",
        faces8,
        "--method",
        "ort",
        "--no-latency",
        "--ignore",
        "none",
        "--min-calib-size",
        "8",
    ]
    rc, text = run_cli(quantize_main(), argv, caplog, capsys)
    assert rc == EXIT_ERROR, text
    assert_says(
        text,
        r"class\(es\) \['contempt'\] the model does not predict",
        re.escape(f"model classes: {list(CLASSES7)}"),
        r"pick a dataset with the model's classes",
    )
    assert snapshot(out) == before


def test_parity_data_with_a_class_the_model_lacks(run7, faces8, tmp_path, caplog, capsys):
    out = tmp_path / "parity"
    before = previous_outputs(out, {"parity.json": b'{"earlier": true}', "parity.md": b"# earlier report\n"})
    argv = [
        "parity",
        "--reference",
        run7 / "model.onnx",
        "--candidates",
        run7 / "model.onnx",
        "--data",
        faces8,
        "--out",
        out,
        "--no-plots",
        "--no-progress",
    ]
    rc, text = run_cli(runtime_main(), argv, caplog, capsys)
    assert rc == EXIT_ERROR, text
    assert_says(text, r"classes \['contempt'\] are not among the model's classes", re.escape(str(list(CLASSES7))))
    assert snapshot(out) == before


def test_fit_data_has_more_classes_than_the_model(faces8, tmp_path, caplog, capsys):
    rc, text, before, out = _fit_fails({"kind": "folder", "root": str(faces8)}, tmp_path, caplog, capsys)
    assert rc == EXIT_USAGE, text
    assert_says(text, r"has 8 classes but model\.num_classes is 7", r"set model\.num_classes: 8")
    assert snapshot(out) == before


def test_fit_resume_with_changed_classes(run7, faces8, tmp_path, caplog, capsys):
    out = tmp_path / "run"
    copy_run(run7, out, ["checkpoint.pt", "checkpoint.json", "state.pt"])
    rc, text, before, _ = _fit_fails(
        {"kind": "folder", "root": str(faces8)}, tmp_path, caplog, capsys, num_classes=8, resume=True, out=out
    )
    assert rc == EXIT_USAGE, text
    assert_says(
        text,
        r"state\.pt: the run was started with a different config \(sections differ: \['data', 'model'\]\)",
        r"use the same config to resume",
    )
    assert snapshot(out) == before  # state.pt, checkpoint.pt and its sidecar untouched


# --- calibration sets for `quantize int8` --------------------------------------------------------


def _int8_fails(run7: Path, data: Path | None, tmp_path: Path, caplog, capsys, *extra: str) -> tuple[int, str]:
    out = tmp_path / "q"
    before = previous_outputs(
        out,
        {
            "model.onnx": run7 / "model.onnx",
            "model.int8.onnx": b"earlier int8 model",
            "model.int8.onnx.json": b'{"fingerprint": "earlier"}',
        },
    )
    argv = [
        "int8",
        "--onnx",
        out / "model.onnx",
        "--out",
        out / "model.int8.onnx",
        "--method",
        "ort",
        "--no-latency",
        "--ignore",
        "none",
        *(["--data", data] if data else []),
        *extra,
    ]
    rc, text = run_cli(quantize_main(), argv, caplog, capsys)
    assert snapshot(out) == before  # no model, sidecar, manifest or report written
    return rc, text


def test_calibration_set_empty(run7, tmp_path, caplog, capsys):
    data = write_faces(tmp_path / "only_val", per_split={"val": 2})
    rc, text = _int8_fails(run7, data, tmp_path, caplog, capsys)
    assert rc == EXIT_ERROR, text
    assert_says(
        text,
        r"the train split of dataset 'folder' \(.*only_val.*\) is empty: nothing to calibrate on",
        r"point --data at a dataset with training images",
    )


def test_calibration_set_below_the_minimum(run7, tmp_path, caplog, capsys):
    data = write_faces(tmp_path / "tiny", per_split={"train": 2, "val": 1})
    rc, text = _int8_fails(run7, data, tmp_path, caplog, capsys)
    assert rc == EXIT_ERROR, text
    assert_says(
        text,
        r"train split of dataset 'folder' has only 14 samples; calibration needs at least 32",
        r"add training images or point --data at a larger dataset",
    )


def test_calibration_set_single_class_process_exit_code(run7, tmp_path):
    data = write_faces(tmp_path / "one", ("happy",), per_split={"train": 5, "val": 2})
    out = tmp_path / "q"
    before = previous_outputs(out, {"model.int8.onnx": b"earlier int8 model"})
    rc, text = run_process(
        "quantize",
        [
            "int8",
            "--onnx",
            run7 / "model.onnx",
            "--out",
            out / "model.int8.onnx",
            "--data",
            data,
            "--method",
            "ort",
            "--no-latency",
            "--ignore",
            "none",
        ],
    )
    assert rc == EXIT_ERROR, text
    assert_says(text, r"holds a single class \('happy', 5 samples\)", r"use a dataset with every class")
    assert snapshot(out) == before


def test_calibration_size_below_the_minimum_is_usage(run7, faces7, tmp_path, caplog, capsys):
    rc, text = _int8_fails(run7, faces7, tmp_path, caplog, capsys, "--calib-size", "8")
    assert rc == EXIT_USAGE, text
    assert_says(text, r"calibration size 8 is below the minimum of 32", r"use --calib-size 300")


# --- configs: an unknown key, a wrong type -------------------------------------------------------

GOOD_FIT = (
    "fit:\n  model: {name: lanmsff_tiny, num_classes: 7}\n  data: {kind: synthetic, options: {count: 14, size: 32}}\n"
)


@pytest.mark.parametrize(
    "body, patterns",
    [
        (
            GOOD_FIT + "  train: {epochs: 1, learning_rate: 0.1}\n",
            [r"unknown key\(s\) \['learning_rate'\]", r"valid keys: \[.*'lr'.*\]"],
        ),
        (GOOD_FIT + "  train: {epochs: ten}\n", [r"fit\.yaml: fit\.train\.epochs: expected int, got 'ten' \(str\)"]),
        (
            GOOD_FIT.replace("num_classes: 7}", "num_classes: 7, kwargs: 5}"),
            [r"model\.kwargs: expected a mapping \(key: value, \.\.\.\), got 5 \(int\)"],
        ),
    ],
    ids=["unknown_key", "wrong_type", "wrong_type_mapping"],
)
def test_fit_config_unknown_key_or_wrong_type(body, patterns, tmp_path, caplog, capsys):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(body)
    out = tmp_path / "out"
    before = previous_outputs(out, {"checkpoint.pt": b"earlier checkpoint bytes"})
    rc, text = run_cli(train_main(), ["fit", "--config", cfg, "--out", out, "--no-progress"], caplog, capsys)
    assert rc == EXIT_USAGE, text
    assert_says(text, re.escape(str(cfg)), *patterns)
    assert snapshot(out) == before


def test_fit_config_unknown_key_process_exit_code(tmp_path):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(GOOD_FIT + "  trian: {epochs: 1}\n")
    rc, text = run_process("train", ["fit", "--config", cfg, "--out", tmp_path / "o"])
    assert rc == EXIT_USAGE, text
    assert_says(text, re.escape(f"{cfg}: fit: unknown key(s) ['trian']; valid keys: ['data', 'model', 'out', 'train']"))
    assert not (tmp_path / "o").exists()


def pipeline_yaml(tmp_path: Path, out: Path, extra: str) -> Path:
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(GOOD_FIT + f"pipeline:\n  out: {json.dumps(str(out))}\n" + extra)
    return cfg


PIPELINE_CASES = {
    "unknown_key": ("bench:\n  secs: 2\n", [r"bench: unknown key\(s\) \['secs'\]; valid keys: \[.*'seconds'.*\]"]),
    "unknown_section": (
        "benchmark:\n  seconds: 2\n",
        [r"unknown section\(s\) \['benchmark'\]; valid: \[.*'bench'.*\]"],
    ),
    "unknown_key_in_fit": ("", [r"fit\.train: unknown key\(s\) \['learning_rate'\]"]),
    "wrong_type": ("bench:\n  seconds: fast\n", [r"bench\.seconds: expected float, got 'fast' \(str\)"]),
    "wrong_type_list": ("bench:\n  batches: 32\n", [r"bench\.batches: expected a list, e\.g\. \[32\], got 32 \(int\)"]),
}


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_pipeline_config_unknown_key_or_wrong_type(case, tmp_path, caplog, capsys):
    extra, patterns = PIPELINE_CASES[case]
    out = tmp_path / "run"
    before = previous_outputs(out, {"report.md": b"# earlier report\n", "pipeline.json": b'{"earlier": true}'})
    cfg = pipeline_yaml(tmp_path, out, extra)
    if case == "unknown_key_in_fit":
        cfg.write_text(cfg.read_text().replace("data:", "train: {learning_rate: 0.1}\n  data:"))
    rc, text = run_cli(runtime_main(), ["pipeline", "--config", cfg, "--no-progress"], caplog, capsys)
    assert rc == EXIT_USAGE, text
    assert_says(text, re.escape(str(cfg)), *patterns)
    assert snapshot(out) == before


def test_pipeline_config_wrong_type_process_exit_code(tmp_path):
    out = tmp_path / "run"
    before = previous_outputs(out, {"report.md": b"# earlier report\n"})
    cfg = pipeline_yaml(tmp_path, out, "parity:\n  batch_size: big\n")
    rc, text = run_process("runtime", ["pipeline", "--config", cfg])
    assert rc == EXIT_USAGE, text
    assert_says(text, re.escape(str(cfg)), r"parity\.batch_size: expected int, got 'big' \(str\)")
    assert snapshot(out) == before
