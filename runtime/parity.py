"""The parity matrix: every candidate model × every available backend against one reference.

    python -m runtime parity --reference RUN/checkpoint.pt --candidates RUN/model.onnx RUN/model.int8.onnx

1. The reference (a ``checkpoint.pt`` run by PyTorch, or a ``model.onnx`` run by ONNX Runtime CPU)
   names the class order, the preprocessing contract and the dataset it was trained on.
2. The labelled set is that dataset's split, regenerated (``--data`` overrides it with an
   ImageFolder directory or a dataset YAML), decoded with `runtime.data.load_image` and preprocessed
   by `runtime.preprocess.preprocess` with each model's own contract — the same function training's
   evaluation uses, so the numbers are the device's numbers.
3. Each candidate's precision comes from its sidecar (``X.onnx.json`` ``"precision"``, written by
   quantize) or, failing that, from the graph (Q/DQ nodes -> int8, float16 initializers -> fp16,
   else fp32), and picks the bounds from `runtime.compare.TOLERANCES`.
4. Every (candidate, backend) row is `compare_outputs` of its logits against the reference's.

A row that cannot run (a backend error) is reported as failed with the error; missing or corrupt
input files raise before any work is done.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifacts import read_json, sha256_file, sidecar_path
from runtime.compare import ParityResult, Precision, Tolerance, as_precision, compare_outputs, ran_precision
from runtime.errors import ArtifactError, ConfigError, DataError, PipelineError
from runtime.preprocess import PreprocessSpec, preprocess

log = logging.getLogger(__name__)

LOGITS = "logits"
INT8_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
        "QLinearAdd",
        "QLinearMul",
    }
)


# --------------------------------------------------------------------------------------------
# Model descriptions (contract without running anything)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """What parity needs to know about a model file before running it.

    Attributes:
        path: The file.
        kind: ``onnx`` or ``checkpoint``.
        model_name: Registry name of the architecture.
        class_names: Class names in logit order.
        preprocess: The input contract.
        dataset: The dataset config (``load_dataset(**dataset)``).
        precision: Precision the file was prepared for.
        precision_source: ``sidecar``, ``graph`` or ``checkpoint``.
        method: Quantisation method from the sidecar ("" when unknown).
        sha256: Content hash of the file.
    """

    path: str
    kind: str
    model_name: str
    class_names: tuple[str, ...]
    preprocess: PreprocessSpec
    dataset: dict[str, Any] = field(default_factory=dict, hash=False)
    precision: Precision = Precision.FP32
    precision_source: str = "graph"
    method: str = ""
    sha256: str = ""

    @property
    def label(self) -> str:
        """Short display name: parent folder / file name."""
        p = Path(self.path)
        return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def detect_precision(path: str | os.PathLike) -> tuple[Precision, str, str]:
    """Precision of an ONNX file: (precision, source, method).

    The quantize stage's sidecar (``X.onnx.json`` with ``"precision"``, optionally ``"method"``)
    wins; otherwise the graph decides: any Q/DQ or integer op -> int8, any float16 initializer,
    graph input or Cast-to-float16 -> fp16, else fp32.

    Raises:
        ArtifactError: when the file is missing or not an ONNX model.
    """
    p = Path(path)
    side = sidecar_path(p)
    if side.is_file():
        try:
            body = read_json(side)
        except ArtifactError as exc:
            log.warning("ignoring unreadable sidecar: %s", exc)
            body = {}
        if isinstance(body, dict) and body.get("precision"):
            try:
                return as_precision(body["precision"]), "sidecar", str(body.get("method", "") or "")
            except ConfigError as exc:
                raise ArtifactError(f"{side}: {exc}") from exc
    return _graph_precision(p), "graph", ""


def _graph_precision(path: Path) -> Precision:
    import onnx

    if not path.is_file():
        raise ArtifactError(f"{path}: model file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise ArtifactError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    graphs = [model.graph]
    fp16 = onnx.TensorProto.FLOAT16
    seen_fp16 = False
    while graphs:
        g = graphs.pop()
        for node in g.node:
            if node.op_type in INT8_OPS:
                return Precision.INT8
            if node.op_type == "Cast" and any(a.name == "to" and a.i == fp16 for a in node.attribute):
                seen_fp16 = True
            for a in node.attribute:  # If/Loop bodies
                if a.type == onnx.AttributeProto.GRAPH:
                    graphs.append(a.g)
                graphs.extend(a.graphs)
        if any(t.data_type == fp16 for t in g.initializer):
            seen_fp16 = True
        if any(v.type.tensor_type.elem_type == fp16 for v in g.input):
            seen_fp16 = True
    return Precision.FP16 if seen_fp16 else Precision.FP32


def describe_model(path: str | os.PathLike) -> ModelInfo:
    """Read a model file's contract and precision without running it.

    Raises:
        ArtifactError / CheckpointError: for a missing, corrupt or contract-less file.
    """
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: model file not found")
    if p.suffix.lower() in (".pt", ".pth"):
        from runtime.backends import get_backend

        # The backend that runs checkpoints (train/backend.py, through the registry) reads them too.
        payload = get_backend("torch").read_model_info(p)
        return ModelInfo(
            path=str(p),
            kind="checkpoint",
            model_name=str(payload["model_name"]),
            class_names=tuple(payload["class_names"]),
            preprocess=PreprocessSpec.from_dict(payload["preprocess"]),
            dataset=dict(payload.get("dataset", {})),
            precision=Precision.FP32,
            precision_source="checkpoint",
            sha256=sha256_file(p),
        )
    if p.suffix.lower() != ".onnx":
        raise ConfigError(f"{p}: expected a .onnx model or a .pt checkpoint, got {p.suffix or 'no suffix'!r}")
    from runtime.contract import read_contract

    contract = read_contract(p)
    precision, source, method = detect_precision(p)
    return ModelInfo(
        path=str(p),
        kind="onnx",
        model_name=contract.model_name,
        class_names=contract.class_names,
        preprocess=contract.preprocess,
        dataset=dict(contract.dataset),
        precision=precision,
        precision_source=source,
        method=method,
        sha256=sha256_file(p),
    )


# --------------------------------------------------------------------------------------------
# The labelled set
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelledSet:
    """Decoded images with labels in the *model's* class order.

    Attributes:
        images: Decoded uint8 images (any size; each model's preprocessing resizes).
        labels: (N,) int64 class indices into ``class_names``.
        ids: Sample ids.
        class_names: Class order of ``labels``.
        source: Human-readable description of where the set came from.
        groups: Optional per-sample group (e.g. head-pose view), "" when unknown.
    """

    images: tuple[np.ndarray, ...]
    labels: np.ndarray | None  # None: unlabelled images (parity reports agreement, not accuracy)
    ids: tuple[str, ...]
    class_names: tuple[str, ...]
    source: str
    groups: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)


def _dataset_config(data: str | os.PathLike | None, default: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    if data is None:
        if not default:
            raise DataError(
                "the reference names no dataset (its contract's 'dataset' is empty); pass --data DIR_OR_YAML"
            )
        return dict(default), "reference contract"
    p = Path(data)
    if p.is_dir():
        return {"kind": "folder", "root": str(p)}, f"ImageFolder {p}"
    if p.is_file() and p.suffix.lower() in (".yaml", ".yml"):
        from runtime.configs import load_yaml

        raw = load_yaml(p)
        # Accept a bare dataset mapping, {data: {...}}, or a training config {fit: {data: {...}}}.
        if "fit" in raw and isinstance(raw["fit"], Mapping):
            raw = raw["fit"]
        if "data" in raw and isinstance(raw["data"], Mapping):
            raw = raw["data"]
        if "kind" not in raw:
            raise ConfigError(
                f"{p}: no dataset mapping with a 'kind' (expected kind/root/options, data:, or fit.data:)"
            )
        cfg = dict(raw)
        options = cfg.pop("options", None) or {}
        cfg.update(options)
        return cfg, f"dataset config {p}"
    raise DataError(f"--data {p}: expected an ImageFolder directory or a dataset .yaml file, and it is neither")


def load_labelled_set(
    dataset: Mapping[str, Any],
    class_names: Sequence[str],
    *,
    split: str = "val",
    data: str | os.PathLike | None = None,
    limit: int | None = None,
) -> LabelledSet:
    """Regenerate/load the labelled split and map its labels onto ``class_names``' order.

    Raises:
        DataError: for an unknown dataset, an empty split, or classes the model does not have.
    """
    from runtime.data import load_dataset, load_image  # torch-free

    if data is not None and Path(data).is_dir():
        from runtime.images import is_class_folder_tree

        if not is_class_folder_tree(data):
            return load_image_folder(data, class_names, limit=limit)
    cfg, source = _dataset_config(data, dataset)
    index = load_dataset(**cfg)
    records = index.split(split)
    if not records:
        raise DataError(f"{source}: split {split!r} is empty; choose another with --split")
    if limit is not None and limit > 0:
        records = records[:limit]
    model_pos = {c: i for i, c in enumerate(class_names)}
    unknown = sorted({index.class_names[r.label] for r in records} - set(model_pos))
    if unknown:
        raise DataError(
            f"{source}: classes {unknown} are not among the model's classes {list(class_names)}; "
            "use a dataset with the model's label set"
        )
    labels = np.array([model_pos[index.class_names[r.label]] for r in records], dtype=np.int64)
    images = tuple(load_image(r) for r in records)
    groups = tuple(str(r.meta.get("view", "")) for r in records)
    return LabelledSet(
        images=images,
        labels=labels,
        ids=tuple(r.id for r in records),
        class_names=tuple(class_names),
        source=f"{source}, split {split}, {len(records)} samples",
        groups=groups,
    )


def load_image_folder(root: str | os.PathLike, class_names: Sequence[str], *, limit: int | None = None) -> LabelledSet:
    """Every readable image under ``root`` (any layout; `runtime.images`), labelled only when all are.

    Images under a folder named after a class carry that label; accuracy is computed only when
    every image has one (``labels`` is None otherwise, and parity reports agreement with the
    reference, probability deltas and flips).

    Raises:
        DataError: when the folder holds no image, or none can be decoded.
    """
    from runtime.images import load_images, scan_image_folder

    folder = scan_image_folder(root, class_names)
    if limit is not None and limit > 0:
        folder = folder.subset(range(min(limit, len(folder))))
    folder, images = load_images(folder)
    k, n = folder.labelled_count, len(folder)
    labels = folder.labels if k == n else None
    note = ""
    if 0 < k < n:
        note = (
            f"; {k} of {n} images sit in class folders, but accuracy needs every image labelled: "
            "agreement only (score the labelled sub-folder alone for accuracy)"
        )
    return LabelledSet(
        images=tuple(images),
        labels=labels,
        ids=folder.ids,
        class_names=tuple(class_names),
        source=folder.describe() + note,
        groups=tuple("" for _ in folder.ids),
    )


# --------------------------------------------------------------------------------------------
# Running backends
# --------------------------------------------------------------------------------------------
def run_logits(backend: Any, x: np.ndarray, *, batch_size: int = 32, output: str = LOGITS) -> np.ndarray:
    """Logits of a loaded backend on preprocessed ``x`` (N, C, H, W), in batches.

    The batch is cast to the backend's input dtype (an FP16-I/O model takes float16) and the
    output ``logits`` (or the first output) is returned as float32.
    """
    spec = backend.input_specs[0]
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None
    step = fixed or batch_size
    name = output if output in backend.output_names else backend.output_names[0]
    outs = []
    for s in range(0, len(x), step):
        xb = x[s : s + step]
        n = len(xb)
        if fixed and n < fixed:  # fixed-batch model: pad the last batch, drop the padding after
            xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - n, axis=0)])
        y = backend.infer({spec.name: np.ascontiguousarray(xb, dtype=spec.dtype)})[name]
        outs.append(np.asarray(y)[:n].astype(np.float32))
    return np.concatenate(outs)


BackendFactory = Callable[[str, str], Any]  # (backend name, path) -> unloaded Backend


def _default_factory(threads: int | None) -> BackendFactory:
    from runtime.backends import get_backend

    def make(name: str, path: str) -> Any:
        cls = get_backend(name)
        opts = {"threads": threads} if threads and name in ("ort", "torch", "openvino") else {}
        return cls(path, **opts)

    return make


def backends_for(path: str, names: Sequence[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Backends (available here) that run ``path``, and the skipped ones with reasons."""
    from runtime.backends import available_backends, backend_names, get_backend

    unknown = sorted(set(names or ()) - set(backend_names()))
    if unknown:
        raise ConfigError(f"unknown backend(s) {unknown}; valid: {sorted(backend_names())}")
    chosen, skipped = [], {}
    for name, reason in available_backends(tuple(names) if names else None).items():
        if reason:
            skipped[name] = reason
            continue
        if not names and not get_backend(name).default_sweep:
            continue  # opt-in backends (openvino) run only when named
        if get_backend(name).accepts(path):
            chosen.append(name)
    return chosen, skipped


# --------------------------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParityConfig:
    """Options of one parity run (the CLI builds it).

    Attributes:
        reference: ``checkpoint.pt`` (PyTorch) or ``model.onnx`` (ONNX Runtime CPU).
        candidates: Model files to compare with it.
        data: ImageFolder directory or dataset YAML; None = the reference's dataset.
        split: Dataset split to score.
        backends: Backend names to try (None = every registered one available here).
        reference_backend: Backend of the reference (None = ``torch`` for .pt, ``ort`` for .onnx).
        batch_size: Inference batch.
        threads: Intra-op threads for CPU backends (None = OMP_NUM_THREADS or 1).
        limit: Score at most this many samples (None = all).
        tolerances: Per-precision overrides of `runtime.compare.TOLERANCES`.
    """

    reference: str
    candidates: tuple[str, ...]
    data: str | None = None
    split: str = "val"
    backends: tuple[str, ...] | None = None
    reference_backend: str | None = None
    batch_size: int = 32
    threads: int | None = None
    limit: int | None = None
    tolerances: Mapping[Precision, Tolerance] | None = None

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ConfigError("parity needs at least one candidate model (--candidates A.onnx ...)")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class ParityRow:
    """One (model, backend) row of the matrix.

    Attributes:
        model: File path.
        label: Short display name.
        backend: Backend name.
        precision: Precision judged with.
        precision_source: Where the precision came from.
        method: Quantisation method ("" when unknown).
        sha256: File content hash.
        result: The comparison (None when the row could not run).
        error: Why the row could not run ("" when it ran).
        is_reference: True for the reference's own row (reference vs itself).
        backend_info: What the backend ran with (provider, threads, versions).
        infer_s: Wall time of the row's inference over the whole set.
    """

    model: str
    label: str
    backend: str
    precision: Precision
    precision_source: str
    method: str
    sha256: str
    result: ParityResult | None
    error: str = ""
    is_reference: bool = False
    backend_info: dict[str, Any] = field(default_factory=dict, hash=False)
    infer_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.result is not None and self.result.passed and not self.error

    @property
    def name(self) -> str:
        return f"{self.label} [{self.backend}, {self.precision.value}]"


@dataclass(frozen=True)
class ParityRun:
    """The whole matrix (the report layer turns it into JSON/Markdown/PNG)."""

    reference: ModelInfo
    reference_backend: str
    dataset: str
    count: int
    class_names: tuple[str, ...]
    rows: tuple[ParityRow, ...]
    skipped: dict[str, str] = field(default_factory=dict, hash=False)
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def failing(self) -> tuple[ParityRow, ...]:
        return tuple(r for r in self.rows if not r.passed)


def run_parity(
    cfg: ParityConfig,
    *,
    factory: BackendFactory | None = None,
    labelled: LabelledSet | None = None,
    progress: bool = False,
) -> ParityRun:
    """Compute the parity matrix.

    Args:
        cfg: What to compare.
        factory: Builds an (unloaded) backend from (name, path); tests inject planted ones.
        labelled: A ready labelled set (skips dataset loading; tests use it).
        progress: Show a tqdm bar over rows.

    Raises:
        ArtifactError / CheckpointError: a model file is missing or corrupt (raised before any row runs).
        DataError: the dataset cannot be loaded or its classes do not match the models'.
    """
    t_start = time.perf_counter()
    make = factory or _default_factory(cfg.threads)
    ref_info = describe_model(cfg.reference)
    cand_infos = [describe_model(c) for c in cfg.candidates]  # fail fast on bad files
    for info in cand_infos:
        if info.class_names != ref_info.class_names:
            raise DataError(
                f"{info.path}: class order {list(info.class_names)} differs from the reference's "
                f"{list(ref_info.class_names)}; parity compares logits position by position"
            )
    ref_backend = cfg.reference_backend or ("torch" if ref_info.kind == "checkpoint" else "ort")
    if labelled is None:
        labelled = load_labelled_set(
            ref_info.dataset, ref_info.class_names, split=cfg.split, data=cfg.data, limit=cfg.limit
        )
    cache: dict[PreprocessSpec, np.ndarray] = {}

    def inputs(spec: PreprocessSpec) -> np.ndarray:
        if spec not in cache:
            cache[spec] = preprocess(labelled.images, spec)
        return cache[spec]

    tolerances = dict(cfg.tolerances or {})
    log.info("parity: reference %s on %s; %s", ref_info.path, ref_backend, labelled.source)
    t0 = time.perf_counter()
    with make(ref_backend, ref_info.path) as ref:
        ref_logits = run_logits(ref, inputs(ref_info.preprocess), batch_size=cfg.batch_size)
        ref_desc = ref.describe()
    ref_s = time.perf_counter() - t0
    ref_result = compare_outputs(
        ref_logits,
        ref_logits,
        labelled.labels,
        precision=Precision.FP32,
        class_names=ref_info.class_names,
        sample_ids=labelled.ids,
    )
    rows = [
        ParityRow(
            ref_info.path,
            ref_info.label,
            ref_backend,
            ref_info.precision,
            ref_info.precision_source,
            "",
            ref_info.sha256,
            ref_result,
            is_reference=True,
            backend_info=ref_desc,
            infer_s=ref_s,
        )
    ]

    plan: list[tuple[ModelInfo, str]] = []
    skipped: dict[str, str] = {}
    for info in cand_infos:
        names, skip = backends_for(info.path, cfg.backends) if factory is None else (list(cfg.backends or ("ort",)), {})
        skipped.update(skip)
        if not names:
            rows.append(
                ParityRow(
                    info.path,
                    info.label,
                    "-",
                    info.precision,
                    info.precision_source,
                    info.method,
                    info.sha256,
                    None,
                    error=f"no available backend runs {Path(info.path).suffix} files",
                )
            )
        plan.extend((info, n) for n in names)

    iterator: Any = plan
    if progress:
        from tqdm import tqdm

        iterator = tqdm(plan, desc="parity", unit="row")
    for info, name in iterator:
        t0 = time.perf_counter()
        try:
            with make(name, info.path) as be:
                logits = run_logits(be, inputs(info.preprocess), batch_size=cfg.batch_size)
                desc = be.describe()
        except PipelineError as exc:
            log.error("%s on %s: %s", info.path, name, exc)
            rows.append(
                ParityRow(
                    info.path,
                    info.label,
                    name,
                    info.precision,
                    info.precision_source,
                    info.method,
                    info.sha256,
                    None,
                    error=f"{type(exc).__name__}: {exc}",
                )
            )
            continue
        judged = ran_precision(info.precision, desc.get("inference_precision"))
        result = compare_outputs(
            ref_logits,
            logits,
            labelled.labels,
            precision=judged,
            class_names=ref_info.class_names,
            sample_ids=labelled.ids,
            tolerance=tolerances.get(judged),
        )
        rows.append(
            ParityRow(
                info.path,
                info.label,
                name,
                info.precision,
                info.precision_source,
                info.method,
                info.sha256,
                result,
                backend_info=desc,
                infer_s=time.perf_counter() - t0,
            )
        )
        acc = "n/a" if result.accuracy is None else f"{result.accuracy:.4f}"
        log.info(
            "%-48s %s acc %s agree %.4f max|dp| %.3g (%s)",
            rows[-1].name,
            result.verdict.value.upper(),
            acc,
            result.top1_agreement,
            result.max_prob_diff,
            result.bound_text(),
        )
    return ParityRun(
        reference=ref_info,
        reference_backend=ref_backend,
        dataset=labelled.source,
        count=len(labelled),
        class_names=ref_info.class_names,
        rows=tuple(rows),
        skipped=skipped,
        elapsed_s=time.perf_counter() - t_start,
    )
