"""Quantization configs: frozen dataclasses, loadable from YAML (unknown keys are an error).

The resolved config is saved in every artifact's sidecar; a run whose sidecar holds the same
config, input sha256 and library versions is skipped (``--force`` redoes it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from quantize.calibration import DEFAULT_CALIB_SIZE, DEFAULT_MIN_SIZE
from quantize.runtime_pick import RuntimePickConfig
from runtime.configs import from_mapping, load_yaml
from runtime.errors import ConfigError


class Method(str, enum.Enum):
    NNCF = "nncf"  # NNCF post-training quantization (optionally accuracy-controlled)
    ORT = "ort"  # onnxruntime.quantization.quantize_static (the baseline)


class Target(str, enum.Enum):
    TENSORRT = "tensorrt"  # S8S8: symmetric INT8 activations and weights, zero points 0, float bias
    CPU = "cpu"  # U8S8: unsigned asymmetric activations, signed weights (fast on x86 onnxruntime)


FORMS = {
    Target.TENSORRT: "S8S8 (TensorRT): symmetric signed INT8 activations per tensor, zero points 0; "
    "symmetric per-channel INT8 weights; float biases",
    Target.CPU: "U8S8 (x86 onnxruntime): asymmetric unsigned INT8 activations per tensor; "
    "symmetric per-channel INT8 weights",
}


@dataclass(frozen=True)
class CalibrationConfig:
    """Calibration subset of the training split.

    Attributes:
        size: Samples wanted (class-balanced).
        seed: Selection seed.
        min_size: Smaller sets are refused.
    """

    size: int = DEFAULT_CALIB_SIZE
    seed: int = 0
    min_size: int = DEFAULT_MIN_SIZE

    def __post_init__(self) -> None:
        if self.min_size < 1:
            raise ConfigError(f"calibration.min_size must be >= 1, got {self.min_size}")


@dataclass(frozen=True)
class LatencyConfig:
    """Side-by-side onnxruntime CPU latency, FP32 vs the new model.

    The two sessions are timed in alternating rounds (FP32, candidate, FP32, ...) so both see the
    same machine load; the rounds' samples are pooled per model.

    Attributes:
        enabled: Measure at all.
        batches: Batch sizes.
        rounds: Alternations per batch size.
        seconds_per_round: Minimum timed seconds per model per round.
        min_iterations_per_round: Minimum timed calls per model per round.
        warmup_s: Warm-up before the first round of each model.
        threads: intra-op threads (0: OMP_NUM_THREADS, else onnxruntime's default).
    """

    enabled: bool = True
    batches: tuple[int, ...] = (1, 32)
    rounds: int = 6
    seconds_per_round: float = 0.5
    min_iterations_per_round: int = 5
    warmup_s: float = 0.5
    threads: int = 0

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"latency.batches must be positive integers, got {self.batches}")
        if self.rounds < 1 or self.min_iterations_per_round < 1:
            raise ConfigError("latency.rounds and latency.min_iterations_per_round must be >= 1")


@dataclass(frozen=True)
class ExplainSettings:
    """``quantize.int8.explain``: run `quantize.explain` on the new file and put its ranking in the report.

    Off by default: it scores the INT8 file once per quantized node (43 s for the demo's x86 file,
    133 s for its NNCF file on 2 threads, BENCHMARKS.md).

    Attributes:
        enabled: Run it.
        target_agreement: Top-1 agreement with FP32 the recommended float set must reach.
        limit: Score at most N validation samples (0: all).
        max_float: Most nodes the recommendation may return to float.
    """

    enabled: bool = False
    target_agreement: float = 0.99
    limit: int = 0
    max_float: int = 12

    def __post_init__(self) -> None:
        if not 0.0 < self.target_agreement <= 1.0:
            raise ConfigError(f"explain.target_agreement must be in (0, 1], got {self.target_agreement}")
        if self.limit < 0 or self.max_float < 1:
            raise ConfigError(
                f"explain.limit must be >= 0 and explain.max_float >= 1, got {self.limit}, {self.max_float}"
            )


@dataclass(frozen=True)
class Int8Config:
    """``python -m quantize int8``.

    Attributes:
        onnx: The FP32 model (with its deployment contract).
        out: The Q/DQ model to write.
        method: nncf or ort.
        target: tensorrt (S8S8) or cpu (U8S8).
        max_drop_pts: accuracy control: top-1 drop bound in percentage points (None: off). NNCF: its
            accuracy-aware quantization; onnxruntime: nodes back to float in `quantize.explain`'s ranking.
        data: Another dataset (YAML or ImageFolder) for calibration and validation.
        ignore: ``auto`` (keep sensitive groups in float where it measurably helps), ``none``, or
            tokens: groups (gates, pwfs, heads, stem), ``type:OpType`` or node names.
        auto_min_gain: ``auto`` keeps a group in float when it cuts the mean |Δlogit| on held-out
            samples by at least this fraction without lowering top-1 agreement.
        bias_correction: NNCF fast bias correction (off by default: it tripled the logit error on
            the LANMSFF dev model).
        val_limit: Score on at most this many validation samples (0: all).
        calibration: Calibration subset settings.
        latency: Latency settings.
        runtime_pick: cpu target: time the file on each installed x86 runtime and name the fastest
            at equal accuracy (`quantize.runtime_pick`).
        explain: Rank the nodes whose quantization costs agreement (`quantize.explain`) and put
            the table and plot in the report (off by default).
    """

    onnx: Path
    out: Path
    method: Method = Method.NNCF
    target: Target = Target.TENSORRT
    max_drop_pts: float | None = None
    data: str | None = None
    ignore: tuple[str, ...] = ("auto",)
    auto_min_gain: float = 0.05
    bias_correction: bool = False
    val_limit: int = 0
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    runtime_pick: RuntimePickConfig = field(default_factory=RuntimePickConfig)
    explain: ExplainSettings = field(default_factory=ExplainSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "onnx", Path(self.onnx))
        object.__setattr__(self, "out", Path(self.out))
        try:
            object.__setattr__(self, "method", Method(self.method))
            object.__setattr__(self, "target", Target(self.target))
        except ValueError as exc:
            raise ConfigError(
                f"{exc}; method: {[m.value for m in Method]}, target: {[t.value for t in Target]}"
            ) from None
        ignore = tuple(t.strip() for tok in self.ignore for t in str(tok).split(",") if t.strip())
        object.__setattr__(self, "ignore", ignore or ("none",))
        if ("auto" in self.ignore or "none" in self.ignore) and len(self.ignore) > 1:
            raise ConfigError(f"--ignore auto/none cannot be combined with other tokens, got {list(self.ignore)}")
        if self.max_drop_pts is not None:
            if self.max_drop_pts < 0:
                raise ConfigError(f"--max-drop must be >= 0 percentage points, got {self.max_drop_pts}")
        if self.onnx.resolve() == self.out.resolve():
            raise ConfigError(f"--out {self.out} would overwrite the input model; pick another path")
        if self.out.suffix != ".onnx":
            raise ConfigError(f"--out must end in .onnx, got {self.out}")
        if not 0.0 <= self.auto_min_gain < 1.0:
            raise ConfigError(f"auto_min_gain must be in [0, 1), got {self.auto_min_gain}")

    @property
    def form(self) -> str:
        return FORMS[self.target]


@dataclass(frozen=True)
class Fp16Config:
    """``python -m quantize fp16``.

    Attributes:
        onnx: The FP32 model.
        out: The FP16 model to write.
        keep_fp32: Op types kept in float32 (empty tuple: the module default).
        data: Another dataset for the parity check.
        val_limit: Score on at most this many validation samples (0: all).
        latency: Latency settings (FP16 on onnxruntime CPU is emulated: informative only).
    """

    onnx: Path
    out: Path
    keep_fp32: tuple[str, ...] = ()
    data: str | None = None
    val_limit: int = 0
    latency: LatencyConfig = field(default_factory=lambda: LatencyConfig(enabled=False))

    def __post_init__(self) -> None:
        object.__setattr__(self, "onnx", Path(self.onnx))
        object.__setattr__(self, "out", Path(self.out))
        if self.onnx.resolve() == self.out.resolve():
            raise ConfigError(f"--out {self.out} would overwrite the input model; pick another path")
        if self.out.suffix != ".onnx":
            raise ConfigError(f"--out must end in .onnx, got {self.out}")


def load_int8_config(path: str | Path, **overrides) -> Int8Config:
    """An `Int8Config` from a YAML file (top-level keys, or an ``int8:`` section), with overrides."""
    raw = load_yaml(path)
    section = raw.get("int8", raw)
    section = {**section, **{k: v for k, v in overrides.items() if v is not None}}
    return from_mapping(Int8Config, section, where=f"{path}:int8")
