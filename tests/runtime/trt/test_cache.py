"""Engine cache keys, sidecars and rebuild decisions (no TensorRT needed)."""

from __future__ import annotations

import json

import pytest

from runtime.artifacts import sidecar_path
from runtime.errors import ArtifactError, ConfigError
from runtime.trt.cache import (
    SIDECAR_FORMAT,
    BatchProfile,
    EngineKey,
    decide,
    key_differences,
    read_engine_key,
    write_engine_sidecar,
)


def key(**changes) -> EngineKey:
    base = dict(
        onnx_sha256="a" * 64,
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="int8",
        profile="1:8:32",
        options={"typing": "auto", "opt_level": None, "dla_core": None},
    )
    base.update(changes)
    return EngineKey(**base)


@pytest.mark.parametrize("text,expected", [("1:8:32", (1, 8, 32)), ("4", (4, 4, 4)), (" 2:2:2 ", (2, 2, 2))])
def test_batch_profile_parse(text, expected):
    p = BatchProfile.parse(text)
    assert (p.min, p.opt, p.max) == expected
    assert str(p) == ":".join(map(str, expected))


@pytest.mark.parametrize(
    "text,match",
    [
        ("8:1:32", "min <= opt <= max"),
        ("1:8", "MIN:OPT:MAX"),
        ("a:b:c", "integers"),
        ("0:1:2", ">= 1"),
        ("1:64:32", "min <= opt <= max"),
    ],
)
def test_batch_profile_rejects(text, match):
    with pytest.raises(ConfigError, match=match):
        BatchProfile.parse(text)


def test_key_roundtrip_and_digest():
    k = key()
    assert EngineKey.from_dict(json.loads(json.dumps(k.to_dict()))) == k
    assert k.digest() == key().digest() and len(k.digest()) == 16
    assert k.digest() != key(options={"typing": "strong", "opt_level": None, "dla_core": None}).digest()
    with pytest.raises(ArtifactError, match="missing field"):
        EngineKey.from_dict({"onnx_sha256": "x"})


def test_key_differences_are_readable():
    diffs = key_differences(
        key(),
        key(
            tensorrt_version="11.4.0.106",
            gpu_name="NVIDIA H100 80GB HBM3",
            options={"typing": "auto", "opt_level": 5, "dla_core": None},
        ),
    )
    assert diffs == [
        "tensorrt_version: 10.3.0 -> 11.4.0.106",
        "gpu_name: Orin -> NVIDIA H100 80GB HBM3",
        "options.opt_level: None -> 5",
    ]


@pytest.fixture
def plan(tmp_path):
    path = tmp_path / "model.int8.engine"
    path.write_bytes(b"PLAN-bytes")
    write_engine_sidecar(path, key(), {"typing_used": "strong"})
    return path


def test_matching_sidecar_is_reused(plan):
    d = decide(plan, key())
    assert d.reuse and "matches" in d.reason
    side = json.loads(sidecar_path(plan).read_text())
    assert side["format"] == SIDECAR_FORMAT and side["key_digest"] == key().digest()
    assert side["artifact_sha256"] and side["typing_used"] == "strong" and "versions" in side
    assert read_engine_key(plan) == key()


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"tensorrt_version": "11.4.0.106"}, "tensorrt_version: 10.3.0 -> 11.4.0.106"),
        ({"gpu_name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}, "compute_capability: 8.7 -> 8.9"),
        ({"onnx_sha256": "b" * 64}, "onnx_sha256"),
        ({"precision": "fp16"}, "precision: int8 -> fp16"),
        ({"profile": "1:4:8"}, "profile: 1:8:32 -> 1:4:8"),
        ({"options": {"typing": "auto", "opt_level": 5, "dla_core": None}}, "options.opt_level: None -> 5"),
    ],
)
def test_any_key_difference_rebuilds(plan, change, reason):
    d = decide(plan, key(**change))
    assert not d.reuse and reason in d.reason


def test_missing_plan_or_sidecar_rebuilds(tmp_path, plan):
    assert "no engine at" in decide(tmp_path / "absent.engine", key()).reason
    sidecar_path(plan).unlink()
    d = decide(plan, key())
    assert not d.reuse and "has no sidecar" in d.reason


def test_corrupt_or_foreign_sidecar_rebuilds(plan):
    sidecar_path(plan).write_text("{not json")
    assert "sidecar unreadable" in decide(plan, key()).reason
    sidecar_path(plan).write_text(json.dumps({"format": "ferdeploy-onnx/1"}))
    assert "is not 'ferdeploy-trt-engine/1'" in decide(plan, key()).reason
    sidecar_path(plan).write_text(json.dumps({"format": SIDECAR_FORMAT, "key": {"precision": "int8"}}))
    assert "sidecar key invalid" in decide(plan, key()).reason
    with pytest.raises(ArtifactError):
        read_engine_key(plan)


def test_plan_changed_after_its_sidecar_rebuilds(plan):
    plan.write_bytes(b"another plan")
    d = decide(plan, key())
    assert not d.reuse and "sha256 mismatch" in d.reason
