"""Plan (validate options, nothing written) and write (into the staging folder) each deploy target."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from export.deploy import emulate
from export.deploy.deepstream import (
    CONFIG_NAME,
    LABELS_NAME,
    NETWORK_MODE,
    NvinferSettings,
    ParsedNvinfer,
    engine_file_name,
    label_line,
    map_contract,
    softmax_model,
)
from export.deploy.deepstream import (
    config_text as nvinfer_text,
)
from export.deploy.deepstream import (
    parse_config as parse_nvinfer,
)
from export.deploy.model import ModelSource, check_engine_gpu
from export.deploy.report import base_report
from runtime.errors import ConfigError, ExportError

log = logging.getLogger(__name__)
DEFAULT_DS_BATCH = 16  # faces per nvinfer call (DeepStream's secondary-classifier samples use 16)


def _copy_onnx(src: Path, dst: Path) -> None:
    """Copy an ONNX model and the external-data files it references (paths relative to the model)."""
    import onnx

    shutil.copy2(src, dst)
    model = onnx.load(str(src), load_external_data=False)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in init.external_data if e.key == "location"), None)
            if loc and not (dst.parent / loc).exists():
                (dst.parent / loc).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src.parent / loc, dst.parent / loc)


# ---- Triton ---------------------------------------------------------------------------------------
def plan_triton(src: ModelSource, cfg: Any, name: str) -> dict[str, Any]:
    from export.deploy.triton import TritonSettings, model_config_pb2
    from runtime.trt.cache import BatchProfile

    model_config_pb2()  # the schema the config is checked with: a missing one stops before anything is written
    if cfg.precision:
        raise ConfigError(
            "--precision is a DeepStream option (nvinfer builds the engine); for Triton deploy the file "
            "of that precision (model.fp16.onnx, model.int8.onnx or an engine)"
        )
    check = ""
    if src.engine is not None:
        e = src.engine
        if "rtx" in e.flavour:
            raise ConfigError(
                f"{src.path} is a TensorRT-for-RTX plan ({e.flavour} {e.tensorrt_version}); Triton's "
                "tensorrt_plan backend loads plans of the standard TensorRT runtime only. Deploy the "
                "ONNX (platform onnxruntime_onnx) or an engine built by standard TensorRT"
            )
        if cfg.instance == "cpu":
            raise ConfigError("--instance cpu: a TensorRT plan runs on the GPU only; deploy the ONNX for a CPU server")
        if cfg.batch:
            raise ConfigError(
                f"--batch: the plan's batch profile was fixed when it was built "
                f"({':'.join(map(str, e.profile)) if e.profile else 'not recorded'}); rebuild it with "
                "python -m runtime build --batch MIN:OPT:MAX to change it"
            )
        check = check_engine_gpu(e, cfg.gpu)
        platform = "tensorrt_plan"
        profile = e.profile
        if src.input.dynamic_batch and profile is None:
            raise ConfigError(
                f"{e.sidecar}: the sidecar records no batch profile, so max_batch_size is unknown; "
                "rebuild the engine with python -m runtime build"
            )
        if src.input.dynamic_batch and profile[0] > 1:  # type: ignore[index]
            raise ConfigError(
                f"the plan's batch profile {':'.join(map(str, profile))} starts at {profile[0]}: Triton "  # type: ignore[arg-type]
                "would fail every request smaller than that; rebuild it with python -m runtime build "
                "--batch 1:OPT:MAX"
            )
    else:
        if cfg.gpu:
            log.info("--gpu %s ignored: it checks a TensorRT plan, and %s is an ONNX model", cfg.gpu, src.path.name)
        platform = "onnxruntime_onnx"
        from runtime.trt.build import DEFAULT_BATCH

        p = BatchProfile.parse(cfg.batch) if cfg.batch else DEFAULT_BATCH
        profile = (p.min, p.opt, p.max)
    if src.input.dynamic_batch:
        mbs = int(profile[2])  # type: ignore[index]
        preferred = tuple(sorted({int(profile[1]), mbs}))  # type: ignore[index]
    else:
        if cfg.batch:
            raise ConfigError(f"--batch: {src.path.name} has a fixed batch of {src.input.shape[0]}; it cannot change")
        mbs, preferred = 0, ()
    settings = TritonSettings(
        name=name,
        platform=platform,
        max_batch_size=mbs,
        preferred_batch_sizes=preferred,
        instance_kind="KIND_CPU" if cfg.instance == "cpu" else "KIND_GPU",
    )
    return {"settings": settings, "gpu_check": check}


def write_triton(src: ModelSource, cfg: Any, name: str, planned: dict[str, Any], stage: Path) -> dict[str, Any]:
    from export.deploy.triton import LABELS_NAME as T_LABELS
    from export.deploy.triton import check_config, config_text, parse_config, readme_text

    s = planned["settings"]
    c = src.contract
    version = stage / "1"
    version.mkdir()
    if src.engine is not None:
        shutil.copy2(src.path, version / "model.plan")
        shutil.copy2(src.engine.sidecar, version / "model.plan.json")
        run_onnx = src.onnx
    else:
        _copy_onnx(src.path, version / "model.onnx")
        run_onnx = version / "model.onnx"
    (stage / T_LABELS).write_text("".join(f"{n}\n" for n in c.class_names), encoding="utf-8")
    header = [
        f"Written by python -m export deploy from {src.path.name} (sha256 {src.sha256[:16]}...), contract of "
        f"{c.model_name}; see deploy_report.md"
    ]
    (stage / "config.pbtxt").write_text(config_text(src, s, header), encoding="utf-8")
    parsed = parse_config(
        (stage / "config.pbtxt").read_text(encoding="utf-8")
    )  # Triton's schema: ParseError on any typo

    problems = check_config(parsed, src, s, stage, folder_name=name)
    if problems:
        raise ExportError("the written config.pbtxt does not describe the model: " + "; ".join(problems))
    (stage / "README.md").write_text(readme_text(src, s, planned["gpu_check"]), encoding="utf-8")
    sets = emulate.sample_sets(c.preprocess, cfg.samples)
    rows = emulate.check_triton(
        stage, parsed, sets, spec=c.preprocess, reference_onnx=src.onnx, run_onnx=run_onnx, class_names=c.class_names
    )
    tol = 1e-6 if src.input.dtype == np.float32 else float(np.finfo(src.input.dtype).eps) * 4
    verdict = emulate.verdict(rows, tol)
    if not verdict["matches"]:
        raise ExportError(
            f"the Triton request built from the written config does not reproduce the contract: max "
            f"|input diff| {verdict['max_abs_input_diff']:.3g}, top-1 agreement "
            f"{100 * verdict['top1_agreement']:.2f}% (rows: {rows}); nothing was written"
        )
    report = base_report(src, cfg, name, "triton")
    report.update(
        {
            "exact": True,
            "platform": s.platform,
            "config": {
                "max_batch_size": s.max_batch_size,
                "preferred_batch_size": list(s.preferred_batch_sizes),
                "instance_group": s.instance_kind,
                "input": src.input.name,
                "outputs": [o.name for o in src.outputs],
                "label_filename": f"{T_LABELS} on {src.logits.name}",
            },
            "schema": "config.pbtxt parsed with Triton's model_config.proto (tritonclient's model_config_pb2) and checked "
            "against the model: name, platform, input/output names, data types, dims, labels, batching",
            "gpu_check": planned["gpu_check"],
            "emulation": {
                "method": "the request a client sends (the contract's preprocess, cast to the config's "
                "data_type, checked against its dims) run through onnxruntime with the config's "
                "tensor names; labels from label_filename",
                "sets": rows,
                "verdict": verdict,
            },
            "needs_device": _triton_device_items(src, s),
        }
    )
    return report


def _triton_device_items(src: ModelSource, s: Any) -> list[str]:
    items = [
        "start tritonserver on the repository and query the model (README.md): the server's own config "
        "validation and auto-complete, and its answer, were not run here"
    ]
    if s.platform == "tensorrt_plan" and src.engine is not None:
        items.append(
            f"the plan itself: it loads only with TensorRT {src.engine.tensorrt_version} on the GPU it was "
            "built for; its outputs were not computed here (the emulation ran its source ONNX)"
        )
    else:
        items.append("onnxruntime inside Triton on the GPU (here: onnxruntime on the CPU)")
    return items


# ---- DeepStream -----------------------------------------------------------------------------------
def plan_deepstream(src: ModelSource, cfg: Any, name: str) -> dict[str, Any]:
    if src.engine is not None:
        raise ConfigError(
            f"--target deepstream takes the ONNX model, not an engine ({src.path.name}): nvinfer builds the "
            "engine from onnx-file on the device at the first start and reuses it after (model-engine-file "
            f"names it), and its classifier needs the Softmax output added to the ONNX. Deploy "
            f"{src.onnx.name} instead"
        )
    if src.input.dtype != np.float32:
        raise ExportError(
            f"{src.path}: input {src.input.name!r} is {src.input.dtype}; nvinfer feeds float32 (FP32 I/O). "
            "Deploy an FP32-I/O model (python -m quantize fp16 keeps FP32 inputs)"
        )
    if cfg.gpu:
        log.info("--gpu %s ignored: nvinfer builds the engine on the device it runs on", cfg.gpu)
    pre = map_contract(src.contract.preprocess)
    label_line(src.contract.class_names)  # class names nvinfer's label format cannot hold: refuse now
    file_prec = src.precision
    want = (cfg.precision or file_prec).lower()
    if want not in NETWORK_MODE:
        raise ConfigError(f"--precision must be one of {sorted(NETWORK_MODE)}, got {cfg.precision!r}")
    if want != file_prec and not (file_prec == "fp32" and want == "fp16"):
        raise ConfigError(
            f"--precision {want} for a {file_prec} model: nvinfer's INT8 needs a Q/DQ model (python -m "
            "quantize int8) and an FP16/INT8 file is built at its own precision; only fp32 -> fp16 is a "
            "build option"
        )
    fixed = None if src.input.dynamic_batch else int(src.input.shape[0])  # type: ignore[arg-type]
    if cfg.batch:
        try:
            batch = int(cfg.batch)
        except ValueError:
            raise ConfigError(
                f"--batch for DeepStream is one number (nvinfer's batch-size), got {cfg.batch!r}"
            ) from None
        if fixed is not None and batch != fixed:
            raise ConfigError(f"--batch {batch}: {src.path.name} has a fixed batch of {fixed}")
    else:
        batch = fixed or DEFAULT_DS_BATCH
    settings = NvinferSettings(
        onnx_file=f"{name}.onnx",
        batch_size=batch,
        network_mode=NETWORK_MODE[want],
        input_dims=src.contract.input_shape,
        gpu_id=cfg.gpu_id,
        gie_unique_id=cfg.gie_id,
        operate_on_gie_id=cfg.detector_gie_id,
        operate_on_class_ids=tuple(cfg.face_class_ids),
        classifier_threshold=float(cfg.classifier_threshold),
    )
    return {"pre": pre, "settings": settings, "precision": want}


def write_deepstream(src: ModelSource, cfg: Any, name: str, planned: dict[str, Any], stage: Path) -> dict[str, Any]:
    pre, s = planned["pre"], planned["settings"]
    c = src.contract
    changes = softmax_model(
        src.path,
        stage / s.onnx_file,
        src.logits.name,
        {"ferdeploy.deploy": json.dumps({"target": "deepstream", "source_sha256": src.sha256})},
    )
    (stage / LABELS_NAME).write_text(label_line(c.class_names), encoding="utf-8")
    header = [
        f"Gst-nvinfer secondary classifier written by python -m export deploy from {src.path.name}",
        f"(sha256 {src.sha256[:16]}...), contract of {c.model_name}; see deploy_report.md.",
        "Preprocessing "
        + (
            "reproduces the contract exactly."
            if pre.exact
            else "APPROXIMATES the contract: " + " | ".join(pre.approximations)
        ),
    ]
    (stage / CONFIG_NAME).write_text(nvinfer_text(pre, s, header=header), encoding="utf-8")
    props = parse_nvinfer((stage / CONFIG_NAME).read_text(encoding="utf-8"))
    back = ParsedNvinfer.from_config(props)
    if (back.net_scale_factor, back.offsets, back.color_format) != (
        pre.net_scale_factor,
        pre.offsets,
        pre.color_format,
    ):
        raise ExportError(f"the written config reads back as {back}, not {pre}; this is a bug")
    sets = emulate.sample_sets(c.preprocess, cfg.samples)
    rows = emulate.check_deepstream(
        stage / CONFIG_NAME,
        sets,
        spec=c.preprocess,
        reference_onnx=src.path,
        input_name=src.input.name,
        logits=src.logits.name,
        class_names=c.class_names,
    )
    verdict = emulate.verdict(rows)
    figures = (
        f"measured on {sum(r['images'] for r in rows if r['counts_for_verdict'])} synthetic face crops: max "
        f"|input diff| {verdict['max_abs_input_diff']:.4g}, top-1 agreement {100 * verdict['top1_agreement']:.2f}%"
    )
    if not pre.exact and not cfg.allow_approximate:
        raise ExportError(
            "nvinfer cannot reproduce this contract exactly: "
            + "; ".join(pre.approximations)
            + f". Worst-case input error from the single scale: {pre.worst_case_normalisation_error:.4g}; {figures}. "
            "Nothing was written. Pass --allow-approximate to write the config anyway (the deploy report then states "
            "these figures), or deploy to Triton, whose client sends the contract's tensor as is"
        )
    if pre.exact and not verdict["matches"]:
        raise ExportError(
            f"the emulated nvinfer input does not reproduce the contract although the mapping is exact "
            f"({figures}); this is a bug, nothing was written"
        )
    engine = engine_file_name(s.onnx_file, s.batch_size, s.gpu_id, s.network_mode)
    (stage / "README.md").write_text(_ds_readme(src, s, pre, engine), encoding="utf-8")
    report = base_report(src, cfg, name, "deepstream")
    report.update(
        {
            "exact": pre.exact,
            "allow_approximate": bool(cfg.allow_approximate),
            "config": props,
            "mapping": {
                "net_scale_factor": pre.net_scale_factor,
                "offsets": list(pre.offsets),
                "model_color_format": pre.color_format,
                "maintain_aspect_ratio": pre.maintain_aspect_ratio,
                "symmetric_padding": pre.symmetric_padding,
                "scaling_filter": pre.scaling_filter,
                "approximations": list(pre.approximations),
                "worst_case_normalisation_error": pre.worst_case_normalisation_error,
            },
            "network_mode": {
                "value": s.network_mode,
                "precision": planned["precision"],
                "file_precision": src.precision,
                "source": src.precision_source,
            },
            "engine_file": engine,
            "onnx_changes": changes,
            "emulation": {
                "method": "nvinfer's preprocessing redone in numpy from the config read back from disk "
                "(even crop size, colour format, scaling with the config's aspect/padding/filter, "
                "net-scale-factor * (x - offsets)), run through the written ONNX with onnxruntime; "
                "top-1 by nvinfer's classifier rule with the written label file",
                "sets": rows,
                "verdict": verdict,
            },
            "needs_device": [
                "the device scaler's resampling (VIC on Jetson, CUDA on a dGPU): emulated here with OpenCV; crops at "
                "the network size need no resampling",
                "the device's colour conversion from the decoded frames (NV12/RGBA -> GRAY8/RGB: its matrix and value "
                "range), emulated here as OpenCV's RGB->GRAY (BT.601, full range) on RGB crops",
                f"the engine build from {s.onnx_file} at the first start and its reuse from {engine} at the second",
                "a face detector as the primary GIE (operate-on-gie-id) and the labels on the OSD",
            ]
            + (
                [
                    "INT8: nvinfer releases that print 'INT8 calibration file not specified. Trying FP16 mode.' build the "
                    "Q/DQ graph with the FP16 flag and name the engine ..._fp16.engine: check the log"
                ]
                if s.network_mode == 1
                else []
            ),
        }
    )
    return report


def _ds_readme(src: ModelSource, s: NvinferSettings, pre: Any, engine: str) -> str:
    c = src.contract
    return "\n".join(
        [
            f"# DeepStream secondary classifier `{s.onnx_file}`",
            "",
            f"Written by `python -m export deploy --target deepstream` from `{src.path.name}` ({c.num_classes} classes: "
            f"{', '.join(c.class_names)}). It classifies the objects of the face detector whose gie-unique-id is "
            f"{s.operate_on_gie_id} (class ids {', '.join(map(str, s.operate_on_class_ids))}).",
            "",
            "```ini",
            "# deepstream-app config: the face detector is the primary GIE, this model a secondary one",
            "[primary-gie]",
            "enable=1",
            f"gie-unique-id={s.operate_on_gie_id}",
            "config-file=FACE_DETECTOR_nvinfer_config.txt",
            "",
            "[tracker]  # optional: nvinfer then classifies each tracked face once, not every frame",
            "enable=1",
            "",
            "[secondary-gie0]",
            "enable=1",
            f"gie-unique-id={s.gie_unique_id}",
            f"operate-on-gie-id={s.operate_on_gie_id}",
            f"config-file={CONFIG_NAME}",
            "```",
            "",
            f"The first start builds the TensorRT engine from `{s.onnx_file}` (minutes on a Jetson) and writes it as "
            f"`{engine}`, the name `model-engine-file` gives; later starts load it. The folder must be writable at the "
            "first start.",
            "",
            "Preprocessing: "
            + (
                "`net-scale-factor`, `offsets`, `model-color-format`, the resize keys reproduce the "
                "contract exactly (see deploy_report.md)."
                if pre.exact
                else "APPROXIMATE: " + "; ".join(pre.approximations) + " (deploy_report.md has the figures)."
            ),
            "",
        ]
    )
