"""The pipeline: which steps rerun after which change, stage selection, errors, and one real tiny run.

Most tests replace the stage functions with stand-ins that write small files derived from their
inputs and config (milliseconds, no torch), so they check exactly the reuse logic: a second run
reuses everything; a changed config or input reruns the steps that depend on it and no other.
`test_real_tiny_pipeline_and_rerun` runs the real stages on a tiny LANMSFF.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from pathlib import Path

import pytest
import yaml

import pipeline as P
import pipeline.report as PR
import pipeline.runner as R
import pipeline.stages as S
from runtime import errors as E
from runtime.configs import to_dict
from runtime.errors import ConfigError

ALL_STEPS = [
    "train",
    "export",
    "quantize.fp16",
    "quantize.int8-nncf",
    "quantize.int8-ort",
    "quantize.int8-nncf-cpu",
    "parity",
    "bench",
    "report",
]
QUANTIZE = [s for s in ALL_STEPS if s.startswith("quantize.")]


def base_config(out: Path) -> dict:
    return {
        "fit": {
            "out": str(out),
            "model": {"name": "lanmsff_tiny", "num_classes": 7},
            "data": {"kind": "synthetic", "val_fraction": 0.25, "seed": 0, "options": {"count": 70}},
            "train": {"epochs": 1, "batch_size": 8, "num_threads": 1},
        },
        "quantize": {"methods": ["nncf", "ort"], "cpu_methods": ["nncf"]},
        "bench": {"batches": [1, 2], "seconds": 0.1},
        "parity": {"limit": 10},
    }


def _digest(*parts: object) -> bytes:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest().encode()


def _read(p: Path) -> str:
    return p.read_bytes().decode()


@pytest.fixture()
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Stage functions that write outputs derived from (inputs, config); counts calls per step."""
    calls: dict[str, int] = {}

    def count(name: str) -> None:
        calls[name] = calls.get(name, 0) + 1

    def train(ctx):
        count("train")
        L = ctx.layout
        L.out.mkdir(parents=True, exist_ok=True)
        L.checkpoint.write_bytes(_digest("ckpt", to_dict(ctx.fit_config)["train"], to_dict(ctx.fit_config)["model"]))
        L.checkpoint_json.write_text(json.dumps({"metrics": {"val_accuracy": 0.5}}))
        return {"val_accuracy": 0.5}

    def export(ctx):
        count("export")
        L = ctx.layout
        body = _digest("onnx", _read(L.checkpoint), to_dict(ctx.cfg.export))
        L.onnx.write_bytes(body)
        L.onnx_sidecar.write_text("{}")
        L.preflight.write_text("{}")
        return {}

    def quantize(ctx, v):
        count(f"quantize.{v.name}")
        ctx.layout.quantized(v).write_bytes(
            _digest(
                v.file,
                _read(ctx.layout.onnx),
                {k: x for k, x in to_dict(S.quantize_config(ctx, v)).items() if k not in ("onnx", "out")},
            )
        )
        return {}

    def models(ctx) -> list[str]:  # what a real parity/bench result depends on: every model's bytes
        return [_read(p) for p in sorted(ctx.layout.out.glob("model*.onnx"))]

    def parity(ctx, reference, use_trt):
        count("parity")
        d = ctx.layout.parity_dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "parity.json").write_text(json.dumps([to_dict(ctx.cfg.parity), models(ctx)]))
        (d / "parity.md").write_text("parity")
        return {"passed": True}

    def bench(ctx, use_trt):
        count("bench")
        d = ctx.layout.bench_dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "bench.json").write_text(json.dumps([to_dict(ctx.cfg.bench), models(ctx)]))
        (d / "bench.md").write_text("bench")
        return {}

    def report(ctx, trt_ok, trt_reason):
        count("report")
        ctx.layout.report_md.write_text("# report")
        ctx.layout.report_json.write_text("{}")
        return {}

    monkeypatch.setattr(S, "run_train", train)
    monkeypatch.setattr(S, "run_export", export)
    monkeypatch.setattr(S, "run_quantize", quantize)
    monkeypatch.setattr(S, "run_parity", parity)
    monkeypatch.setattr(S, "run_bench", bench)
    monkeypatch.setattr(S, "run_report", report)
    monkeypatch.setattr(S, "tensorrt_status", lambda cfg: (False, "no TensorRT in tests", ("TensorRT: not in tests",)))
    monkeypatch.setattr(S, "tensorrt_build_status", lambda cfg: (False, "TensorRT: not in tests"))
    monkeypatch.setattr(S, "_torch_available", lambda: True)
    return calls


def run(raw: dict, **kw) -> P.PipelineResult:
    return P.run_pipeline(P.config_from_mapping(raw, "test.yaml"), progress=False, **kw)


def test_second_run_reuses_everything(tmp_path: Path, fake_stages: dict[str, int]) -> None:
    raw = base_config(tmp_path / "run")
    first = run(raw)
    assert first.ran() == ALL_STEPS
    assert [s.name for s in first.steps if s.status == "skipped"] == ["tensorrt"]
    second = run(raw)
    assert second.ran() == [] and second.reused() == ALL_STEPS
    assert all(n == 1 for n in fake_stages.values())
    log = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert {s["name"]: s["status"] for s in log["steps"]}["bench"] == "reused"
    assert (tmp_path / "run" / "stamps" / "quantize.int8-nncf.json").is_file()


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("bench", "seconds", 0.2, ["bench", "report"]),
        ("parity", "limit", 5, ["parity", "report"]),
        # A second CPU runtime reruns only the stage that lists it (each stage keys its own list).
        ("bench", "cpu_backends", ["ort", "openvino"], ["bench", "report"]),
        ("parity", "cpu_backends", ["ort", "openvino"], ["parity", "report"]),
        # int8 arguments change every INT8 file, not FP16; their consumers follow.
        (
            "quantize",
            "int8",
            {"calibration": {"size": 64}},
            ["quantize.int8-nncf", "quantize.int8-ort", "quantize.int8-nncf-cpu", "parity", "bench", "report"],
        ),
        ("export", "opset", 18, ALL_STEPS[1:]),
        ("fit", "train", {"epochs": 2, "batch_size": 8, "num_threads": 1}, ALL_STEPS),
    ],
)
def test_a_changed_config_reruns_exactly_its_dependents(
    tmp_path: Path, fake_stages, section, key, value, expected
) -> None:
    raw = base_config(tmp_path / "run")
    run(raw)
    raw[section] = {**raw.get(section, {}), key: value}
    again = run(raw)
    assert again.ran() == expected
    assert sorted(again.reused()) == sorted(set(ALL_STEPS) - set(expected))
    assert run(raw).ran() == []  # and then it is current again


def test_where_training_writes_does_not_retrain(tmp_path: Path, fake_stages) -> None:
    raw = base_config(tmp_path / "run")
    run(raw)
    raw["fit"]["out"] = "elsewhere"  # pipeline.out is unset, --out decides: only the fit.out string changed
    assert run(raw, out=tmp_path / "run").ran() == []


def test_a_changed_input_or_output_reruns_its_step(tmp_path: Path, fake_stages) -> None:
    raw = base_config(tmp_path / "run")
    run(raw)
    out = tmp_path / "run"
    # A hand-edited model.onnx: export reruns and writes the same bytes as before, so nothing
    # downstream reruns (the cascade stops at identical outputs).
    (out / "model.onnx").write_bytes(b"tampered")
    assert run(raw).ran() == ["export"]
    # A deleted quantized file: only its step, then its consumers.
    (out / "model.ort.int8.onnx").unlink()
    assert run(raw).ran() == ["quantize.int8-ort"]  # same bytes again -> parity/bench reused
    # An overwritten checkpoint: train's output no longer matches its stamp, so train reruns; it
    # writes the checkpoint its config describes (the same bytes), and nothing downstream reruns.
    (out / "checkpoint.pt").write_bytes(b"another model")
    assert run(raw).ran() == ["train"]


def test_checkpoint_replaced_reruns_downstream_only(tmp_path: Path, fake_stages) -> None:
    raw = base_config(tmp_path / "run")
    run(raw)
    out = tmp_path / "run"
    # A checkpoint trained elsewhere, with the train stage left out of the run: every step that
    # consumes it, directly or through the files made from it, reruns.
    (out / "checkpoint.pt").write_bytes(b"weights from elsewhere")
    again = run(raw, stages=P.parse_stages("export,quantize,parity,bench,report"))
    assert again.ran() == ALL_STEPS[1:]


def test_library_version_change_reruns_dependent_steps(tmp_path: Path, fake_stages, monkeypatch) -> None:
    raw = base_config(tmp_path / "run")
    run(raw)
    real = R.library_versions

    def newer_nncf():
        v = real()
        v["nncf"] = "99.0"
        return v

    monkeypatch.setattr(R, "library_versions", newer_nncf)
    # Only the quantize steps depend on nncf; the stand-ins write the same bytes again, so
    # parity and bench stay current (a real new NNCF would change the files and rerun them too).
    assert run(raw).ran() == QUANTIZE


def test_changed_stage_code_reruns_that_stage_and_says_which_file(
    tmp_path: Path, fake_stages, monkeypatch, caplog
) -> None:
    raw = base_config(tmp_path / "run")
    run(raw)
    real = P.stage_code

    def edited(stage):
        code = dict(real(stage))
        if stage is P.Stage.QUANTIZE:
            code["quantize/methods/ort_ptq.py"] = "0" * 64  # an updated quantizer
        return code

    monkeypatch.setattr(R, "stage_code", edited)
    caplog.set_level(logging.INFO, logger="pipeline")
    assert run(raw).ran() == QUANTIZE
    assert "code changed: quantize/methods/ort_ptq.py" in caplog.text
    monkeypatch.setattr(R, "stage_code", real)
    assert set(run(raw).ran()) == set(QUANTIZE)  # and back: the stamps follow the code


def test_stage_code_covers_the_files_that_implement_each_stage() -> None:
    assert "quantize/methods/ort_ptq.py" in P.stage_code(P.Stage.QUANTIZE)
    assert "train/loop.py" in P.stage_code(P.Stage.TRAIN) and "runtime/preprocess.py" in P.stage_code(P.Stage.TRAIN)
    assert "runtime/report.py" in P.stage_code(P.Stage.REPORT)
    assert not any(f.startswith("quantize/") for f in P.stage_code(P.Stage.BENCH))
    assert all(len(d) == 64 for d in P.stage_code(P.Stage.PARITY).values())


def test_force_and_stage_selection(tmp_path: Path, fake_stages) -> None:
    raw = base_config(tmp_path / "run")
    run(raw)
    assert run(raw, stages=P.parse_stages("bench")).ran() == []
    assert run(raw, stages=P.parse_stages("export,quantize"), force=P.parse_stages("quantize")).ran() == QUANTIZE
    assert fake_stages["export"] == 1


def test_a_stage_alone_without_its_inputs_says_what_to_run(tmp_path: Path, fake_stages) -> None:
    raw = base_config(tmp_path / "empty")
    with pytest.raises(P.StageError, match=r"model.onnx not found .*run the stage that writes them"):
        run(raw, stages=P.parse_stages("quantize"))
    log = json.loads((tmp_path / "empty" / "pipeline.json").read_text())
    assert log["error"].startswith("StageError") and log["steps"][-1]["status"] == "failed"


def test_a_failing_step_keeps_what_finished(tmp_path: Path, fake_stages, monkeypatch) -> None:
    raw = base_config(tmp_path / "run")

    def broken(ctx, v):
        raise P.StageError(f"quantize.{v.name}: exited 1")

    monkeypatch.setattr(S, "run_quantize", broken)
    with pytest.raises(P.StageError, match="quantize.fp16: exited 1"):
        run(raw)
    stamps = tmp_path / "run" / "stamps"
    assert (stamps / "train.json").is_file() and (stamps / "export.json").is_file()
    assert not (stamps / "quantize.fp16.json").exists()
    log = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert [s["status"] for s in log["steps"]][-3:] == ["ran", "ran", "failed"]


def test_dry_run_says_what_would_run_and_writes_nothing(tmp_path: Path, fake_stages) -> None:
    raw = base_config(tmp_path / "run")
    run(raw)
    raw["bench"]["seconds"] = 0.3
    dry = run(raw, dry_run=True)
    would = {s.name: s.reason for s in dry.steps if s.status == "would-run"}
    assert list(would) == ["bench", "report"]  # report reads bench's output, which bench would rewrite
    assert "config changed: seconds" in would["bench"] and "bench/bench.json" in would["report"]
    assert fake_stages["bench"] == 1


def test_dry_run_on_a_fresh_folder_prints_the_plan_and_exits_0(tmp_path: Path, fake_stages, capsys) -> None:
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(base_config(tmp_path / "fresh")))
    assert P.pipeline_main(["--config", str(cfg_path), "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    for step in ALL_STEPS:
        assert step in out
    assert sum(fake_stages.values()) == 0 and not (tmp_path / "fresh" / "checkpoint.pt").exists()
    dry = run(base_config(tmp_path / "fresh"), dry_run=True)
    assert [s.name for s in dry.steps if s.status == "would-run"] == ALL_STEPS
    # A stage selection that needs files no selected stage writes: the plan says so, still exit 0.
    assert P.pipeline_main(["--config", str(cfg_path), "--dry-run", "--stages", "parity", "--no-progress"]) == 0
    assert "blocked" in capsys.readouterr().out


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['bnech'\]"):
        P.config_from_mapping({"bnech": {}}, "x.yaml")
    with pytest.raises(ConfigError, match="unknown key"):
        P.config_from_mapping({"bench": {"secs": 1}}, "x.yaml")
    with pytest.raises(ConfigError, match="unknown INT8 method"):
        P.config_from_mapping({"quantize": {"methods": ["tensorrt"]}}, "x.yaml")
    with pytest.raises(ConfigError, match="unknown stage"):
        P.parse_stages("train,exprot")
    bad = tmp_path / "bad.yaml"
    bad.write_text("bench: {secs: 1}\n")
    assert P.pipeline_main(["--config", str(bad)]) == E.EXIT_USAGE
    assert P.pipeline_main(["--config", str(tmp_path / "missing.yaml")]) == E.EXIT_USAGE


def test_demo_config_is_valid_and_complete() -> None:
    cfg = P.load_pipeline_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    assert cfg.out == Path("runs/demo")
    assert {v.file for v in P.quantize_variants(cfg.quantize)} >= {
        "model.fp16.onnx",
        "model.nncf.int8.onnx",
        "model.ort.int8.onnx",
    }
    assert 1 in cfg.bench.batches and 32 in cfg.bench.batches and cfg.bench.torch


def test_join_rows_matches_file_and_backend() -> None:
    bench = [
        {"sha256": "a", "backend": "ort", "batch": 1},
        {"sha256": "a", "backend": "trt", "batch": 1},
        {"sha256": "b", "backend": "torch", "batch": 1},
    ]
    parity = [
        {"sha256": "a", "backend": "ort", "accuracy": 0.9, "passed": True},
        {"sha256": "b", "backend": "torch", "accuracy": 0.91, "passed": True, "is_reference": True},
    ]
    rows = PR.join_rows(bench, parity)
    assert rows[0]["accuracy"] == 0.9 and "accuracy" not in rows[1] and rows[2]["is_reference"]


# --------------------------------------------------------------------------------------------
# The real stages on a tiny model
# --------------------------------------------------------------------------------------------
HAS_QUANTIZE_CLI = importlib.util.find_spec("quantize.__main__") is not None
HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None and importlib.util.find_spec("tensorrt") is None


@pytest.mark.slow
def test_real_tiny_pipeline_and_rerun(tmp_path: Path) -> None:
    out = tmp_path / "run"
    raw = base_config(out)
    raw["fit"]["model"]["kwargs"] = {"bn_momentum": 0.1}
    raw["fit"]["data"]["options"] = {"count": 70, "size": 64}
    if not HAS_QUANTIZE_CLI:  # the quantize CLI lands separately; everything else is exercised
        raw["quantize"] = {"methods": [], "cpu_methods": [], "fp16": False}
    else:
        raw["quantize"] = {"methods": ["nncf", "ort"], "cpu_methods": [], "fp16": True}
    raw["bench"] = {"batches": [1, 2], "seconds": 0.05, "iterations": 2, "warmup_s": 0.0, "warmup_iterations": 1}
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    assert P.pipeline_main(["--config", str(cfg_path), "--no-progress"]) == 0
    body = json.loads((out / "report.json").read_text())
    assert body["kind"] == "pipeline" and body["schema"] == "ferdeploy-report/1"
    have = {(r["file"], r["backend"], r["batch"]) for r in body["rows"]}
    want_files = ["checkpoint.pt", "model.onnx"] + (
        ["model.fp16.onnx", "model.nncf.int8.onnx", "model.ort.int8.onnx"] if HAS_QUANTIZE_CLI else []
    )
    for f in want_files:
        for b in (1, 2):
            assert (f, "torch" if f.endswith(".pt") else "ort", b) in have, (f, b)
    torch_row = next(r for r in body["rows"] if r["backend"] == "torch")
    assert torch_row["is_reference"] and torch_row["accuracy"] is not None and torch_row["latency_ms"]["p50"] > 0
    assert body["tensorrt"]["available"] is False and body["tensorrt"]["reason"]
    md = (out / "report.md").read_text()
    assert "## Accuracy and latency" in md and "](report.latency.png)" in md
    if HAS_RTX:  # TensorRT for RTX builds the engines without a GPU; they are listed but not run
        engines = {Path(e["engine"]).name: e for e in body["tensorrt"]["engines"]}
        assert set(engines) == {"model.fp32.engine"} | (
            {"model.fp16.engine", "model.nncf.int8.engine", "model.ort.int8.engine"} if HAS_QUANTIZE_CLI else set()
        )
        for name, e in engines.items():
            assert e["flavour"] == "rtx" and e["targets"] and e["realized"]["passed"], (name, e)
            assert (out / name).stat().st_size == e["size_bytes"] > 0 and (out / e["layers_md"]).is_file()
        assert "not run" in md and "model.nncf.int8.engine" in md
    else:
        assert "no engines built here" in md
    for png in ("report.latency.png", "report.pareto.b1.png", "report.training.png"):
        assert (out / png).stat().st_size > 5000, png

    t0 = time.perf_counter()
    assert P.pipeline_main(["--config", str(cfg_path), "--no-progress"]) == 0
    assert time.perf_counter() - t0 < 15
    log = json.loads((out / "pipeline.json").read_text())
    assert {s["status"] for s in log["steps"] if not s["name"].startswith("tensorrt")} == {"reused"}
    # Engine steps defer to the engine cache: they "run" and reuse every engine.
    assert all(s["info"].get("reused") for s in log["steps"] if s["name"].startswith("tensorrt."))

    # A changed bench setting reruns bench and the report, nothing else.
    raw["bench"]["batches"] = [1]
    cfg_path.write_text(yaml.safe_dump(raw))
    assert P.pipeline_main(["--config", str(cfg_path), "--no-progress"]) == 0
    log = json.loads((out / "pipeline.json").read_text())
    assert [s["name"] for s in log["steps"] if s["status"] == "ran" and not s["name"].startswith("tensorrt.")] == [
        "bench",
        "report",
    ]

    if HAS_RTX:  # other target compute capabilities rebuild every engine, and the report names them
        raw["tensorrt"] = {"compute_capabilities": ["8.6", "12.0"]}
        cfg_path.write_text(yaml.safe_dump(raw))
        assert P.pipeline_main(["--config", str(cfg_path), "--no-progress"]) == 0
        log = json.loads((out / "pipeline.json").read_text())
        trt_steps = [s for s in log["steps"] if s["name"].startswith("tensorrt.")]
        assert trt_steps and all(
            not s["info"]["reused"] and "targets: default -> 8.6,12.0" in s["info"]["reason"] for s in trt_steps
        )
        body = json.loads((out / "report.json").read_text())
        assert {tuple(e["targets"]) for e in body["tensorrt"]["engines"]} == {("8.6", "12.0")}


def test_every_shipped_pipeline_config_loads() -> None:
    root = Path(__file__).resolve().parents[2] / "configs"
    loaded = []
    for path in sorted(root.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if not {"pipeline", "source", "quantize", "parity", "bench"} & set(raw):
            continue  # a training recipe or a contract
        cfg = P.load_pipeline_config(path)
        assert cfg.out
        loaded.append(path.name)
    assert {"demo.yaml", "own_onnx.yaml", "folder.yaml"} <= set(loaded)


def test_deploy_stage_runs_only_when_targets_are_named(tmp_path: Path, fake_stages, monkeypatch) -> None:
    from export.deploy import pipeline_report_path

    calls: list[str] = []

    def deploy(ctx, target):
        calls.append(target)
        d = ctx.cfg.deploy
        rep = pipeline_report_path(ctx.layout.out / d.out, target, d.options.get("name"))
        rep.parent.mkdir(parents=True, exist_ok=True)
        rep.write_text(json.dumps({"target": target, "options": dict(d.options), "model": _read(ctx.layout.onnx)}))
        return {}

    monkeypatch.setattr(S, "run_deploy", deploy)
    raw = base_config(tmp_path / "run")
    assert run(raw).ran() == ALL_STEPS and calls == []  # no deploy: section, no deploy step
    raw["deploy"] = {"targets": ["triton", "deepstream"]}
    assert run(raw).ran() == ["deploy.triton", "deploy.deepstream", "report"]
    raw["deploy"]["options"] = {"samples": 8}  # a deploy option reruns deploy and the report only
    assert run(raw).ran() == ["deploy.triton", "deploy.deepstream", "report"]
    assert run(raw).ran() == []
    with pytest.raises(ConfigError, match="unknown target"):
        P.config_from_mapping({"deploy": {"targets": ["kserve"]}}, "x.yaml")
    with pytest.raises(ConfigError, match="inside the output folder"):
        P.config_from_mapping({"deploy": {"targets": ["triton"], "model": "../elsewhere.onnx"}}, "x.yaml")
