"""runtime.artifacts: atomic writes, hashes, JSON and sidecars."""

from __future__ import annotations

import enum
import hashlib
from pathlib import Path

import numpy as np
import pytest

from runtime.artifacts import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    library_versions,
    read_json,
    read_sidecar,
    sha256_bytes,
    sha256_file,
    sidecar_path,
    write_sidecar,
)
from runtime.errors import ArtifactError


class Color(str, enum.Enum):
    RED = "red"


def test_atomic_write_bytes_and_text(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"  # parents are created
    assert atomic_write_bytes(target, b"\x00\x01hello") == target
    assert target.read_bytes() == b"\x00\x01hello"
    atomic_write_text(target, "héllo\n")
    assert target.read_bytes() == "héllo\n".encode()
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_failed_writer_keeps_previous_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"good")

    def writer(p: Path) -> None:
        p.write_bytes(b"half-writ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, writer)
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_interrupted_writer_without_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "new.json"

    def writer(p: Path) -> None:
        p.write_text("{")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, writer)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_receives_a_temp_path_in_the_same_folder(tmp_path: Path) -> None:
    seen: list[Path] = []
    atomic_write(tmp_path / "x.txt", lambda p: (seen.append(p), p.write_text("1")))
    assert seen[0].parent == tmp_path
    assert seen[0] != tmp_path / "x.txt"
    assert seen[0].name.startswith(".x.txt.") and seen[0].name.endswith(".tmp")
    assert not seen[0].exists()
    assert (tmp_path / "x.txt").read_text() == "1"


def test_atomic_write_json_format_and_defaults(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(
        target,
        {"b": np.float32(0.5), "a": Path("x/y"), "c": Color.RED, "d": np.arange(3), "e": np.int64(7)},
    )
    text = target.read_text(encoding="utf-8")
    assert text == (
        '{\n  "a": "x/y",\n  "b": 0.5,\n  "c": "red",\n  "d": [\n    0,\n    1,\n    2\n  ],\n  "e": 7\n}\n'
    )
    assert read_json(target) == {"a": "x/y", "b": 0.5, "c": "red", "d": [0, 1, 2], "e": 7}


def test_atomic_write_json_unserialisable_keeps_previous(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError, match="cannot serialise object to JSON"):
        atomic_write_json(target, {"bad": object()})
    assert read_json(target) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_read_json_missing_and_corrupt_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(ArtifactError) as exc:
        read_json(missing)
    assert str(exc.value) == f"{missing}: file not found"

    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"a": 1', encoding="utf-8")
    with pytest.raises(ArtifactError) as exc:
        read_json(corrupt)
    assert str(exc.value).startswith(f"{corrupt}: not valid JSON (")
    assert "delete it and rerun the stage that writes it" in str(exc.value)

    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_json(binary)

    folder = tmp_path / "dir.json"
    folder.mkdir()
    with pytest.raises(ArtifactError, match="file not found"):
        read_json(folder)


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 41 + b"tail"
    f = tmp_path / "blob"
    f.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(f) == expected
    assert sha256_file(f, chunk_bytes=7) == expected  # many chunks, last one partial
    assert sha256_bytes(data) == expected
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_sidecar_round_trip(tmp_path: Path) -> None:
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"onnx bytes")
    assert sidecar_path(artifact) == tmp_path / "model.onnx.json"
    assert sidecar_path("a/b.int8.onnx") == Path("a/b.int8.onnx.json")
    written = write_sidecar(artifact, {"opset": 17, "classes": ["a", "b"]})
    assert written == tmp_path / "model.onnx.json"
    side = read_sidecar(artifact)
    assert side["opset"] == 17 and side["classes"] == ["a", "b"]
    assert side["artifact_sha256"] == hashlib.sha256(b"onnx bytes").hexdigest()
    assert side["versions"]["numpy"] == np.__version__
    # A caller-given versions entry is kept.
    write_sidecar(artifact, {"versions": {"x": "1"}})
    assert read_sidecar(artifact)["versions"] == {"x": "1"}


def test_sidecar_of_missing_artifact(tmp_path: Path) -> None:
    artifact = tmp_path / "engine.plan"
    write_sidecar(artifact, {"k": 1})
    side = read_sidecar(artifact)
    assert "artifact_sha256" not in side and side["k"] == 1
    with pytest.raises(ArtifactError) as exc:
        read_sidecar(tmp_path / "other.onnx")
    assert str(tmp_path / "other.onnx.json") in str(exc.value)


def test_library_versions_keys() -> None:
    v = library_versions()
    assert set(v) == {
        "python",
        "numpy",
        "torch",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "onnxslim",
        "nncf",
        "tensorrt",
        "cv2",
        "PIL",
    }
    import cv2
    import onnx

    assert v["numpy"] == np.__version__
    assert v["onnx"] == onnx.__version__
    assert v["cv2"] is not None and v["cv2"].split(".")[:2] == cv2.__version__.split(".")[:2]
