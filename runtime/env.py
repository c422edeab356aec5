"""Environment capture for every report: CPU, threads, GPU, library versions, Jetson power mode.

A latency number without the machine it came from cannot be compared with anything, so every
parity and bench report embeds `capture_environment()`. Everything is best-effort: a probe that
fails records ``None`` (or the error) and never breaks a report. Nothing here imports torch
(its version comes from package metadata), and external tools run with a short timeout.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Distribution names whose versions decide results (absent ones are reported as None).
DISTRIBUTIONS: tuple[str, ...] = (
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxscript",
    "onnxslim",
    "torch",
    "nncf",
    "tensorrt",
    "tensorrt-cu12",
    "tensorrt-cu13",
    "cuda-python",
    "cuda-bindings",
    "pycuda",
    "opencv-python-headless",
    "opencv-python",
    "pillow",
    "scipy",
    "matplotlib",
    "pyyaml",
    "tqdm",
    "polygraphy",
)
THREAD_VARS: tuple[str, ...] = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "ORT_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)

Runner = Callable[[list[str]], str | None]


def _run(cmd: list[str], timeout_s: float = 5.0) -> str | None:
    """stdout of ``cmd`` or None when the tool is absent, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s failed: %s", cmd[0], exc)
        return None
    return res.stdout if res.returncode == 0 else None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def cpu_info(read: Callable[[str], str | None] = _read) -> dict[str, Any]:
    """CPU model, logical cores, cores usable by this process, physical cores, frequency governor."""
    text = read("/proc/cpuinfo") or ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.lower().startswith("model name")), None)
    if model is None:  # ARM (Jetson) reports no "model name" on older kernels
        model = (
            next(
                (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith(("Hardware", "CPU part"))),
                None,
            )
            or platform.processor()
            or platform.machine()
        )
    physical: set[tuple[str | None, str]] = set()
    for block in text.split("\n\n"):
        kv = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in block.splitlines() if ":" in ln)}
        if "core id" in kv:
            physical.add((kv.get("physical id"), kv["core id"]))
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    governor = read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "model": model,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "physical_cores": len(physical) or None,
        "governor": governor.strip() if governor else None,
        "loadavg": list(load) if load else None,
    }


def memory_bytes(read: Callable[[str], str | None] = _read) -> int | None:
    text = read("/proc/meminfo") or ""
    for ln in text.splitlines():
        if ln.startswith("MemTotal:"):
            return int(ln.split()[1]) * 1024
    return None


def gpu_info(run: Runner = _run) -> list[dict[str, Any]]:
    """One entry per NVIDIA GPU from nvidia-smi: name, driver, compute capability, memory, clocks."""
    fields = "name,driver_version,compute_cap,memory.total,clocks.sm,clocks.max.sm,power.limit,pstate"
    out = run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"])
    gpus: list[dict[str, Any]] = []
    if out:
        keys = fields.split(",")
        for line in out.strip().splitlines():
            vals = [v.strip() for v in line.split(",")]
            gpus.append(dict(zip(keys, vals)))
    cuda = run(["nvidia-smi"])
    if cuda and gpus:
        for tok in cuda.split("|"):
            if "CUDA Version" in tok:
                ver = tok.split("CUDA Version:")[-1].strip().split()[0]
                for g in gpus:
                    g["cuda_driver_version"] = ver
    return gpus


def jetson_info(run: Runner = _run, read: Callable[[str], str | None] = _read) -> dict[str, Any] | None:
    """L4T release, nvpmodel power mode, jetson_clocks state and GPU/EMC clocks; None off-Jetson."""
    release = read("/etc/nv_tegra_release")
    has_nvpmodel = shutil.which("nvpmodel") is not None
    if release is None and not has_nvpmodel:
        return None
    info: dict[str, Any] = {"l4t_release": release.strip().splitlines()[0] if release else None}
    mode = run(["nvpmodel", "-q"])
    info["power_mode"] = " ".join(mode.split()) if mode else None
    clocks = run(["jetson_clocks", "--show"])
    info["jetson_clocks"] = clocks.strip()[:2000] if clocks else None
    for name, path in (
        ("gpu_cur_freq", "/sys/devices/gpu.0/devfreq/17000000.ga10b/cur_freq"),
        ("gpu_max_freq", "/sys/devices/gpu.0/devfreq/17000000.ga10b/max_freq"),
        ("emc_rate", "/sys/kernel/debug/bpmp/debug/clk/emc/rate"),
    ):
        val = read(path)
        info[name] = val.strip() if val else None
    model = read("/proc/device-tree/model")
    info["model"] = model.strip("\x00\n ") if model else None
    return info


def library_versions(names: tuple[str, ...] = DISTRIBUTIONS) -> dict[str, str | None]:
    """Installed versions from package metadata (nothing is imported; torch stays unloaded)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    if out.get("tensorrt") is None and "tensorrt" in sys.modules:  # JetPack installs it without metadata
        out["tensorrt"] = getattr(sys.modules["tensorrt"], "__version__", None)
    return out


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def capture_environment(run: Runner = _run, read: Callable[[str], str | None] = _read) -> dict[str, Any]:
    """Everything a reader needs to reproduce or compare a report's numbers.

    Args:
        run: Command runner (injectable for tests): argv -> stdout or None.
        read: File reader (injectable for tests): path -> text or None.
    """
    return {
        "captured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "cpu": cpu_info(read),
        "memory_bytes": memory_bytes(read),
        "thread_env": {k: os.environ.get(k) for k in THREAD_VARS},
        "gpus": gpu_info(run),
        "jetson": jetson_info(run, read),
        "onnxruntime_providers": ort_providers(),
        "versions": library_versions(),
    }


def summary_line(env: dict[str, Any]) -> str:
    """One line for Markdown headers: CPU, cores, threads, GPU, key versions."""
    cpu = env.get("cpu", {})
    gpus = env.get("gpus") or []
    gpu = ", ".join(f"{g.get('name')} (driver {g.get('driver_version')}, sm {g.get('compute_cap')})" for g in gpus)
    v = env.get("versions", {})
    parts = [
        f"CPU {cpu.get('model')} ({cpu.get('usable_cores')}/{cpu.get('logical_cores')} cores usable)",
        f"OMP_NUM_THREADS={env.get('thread_env', {}).get('OMP_NUM_THREADS') or 'unset'}",
        f"GPU {gpu}" if gpu else "no GPU",
        f"onnxruntime {v.get('onnxruntime') or v.get('onnxruntime-gpu')}",
        f"numpy {v.get('numpy')}",
        f"python {env.get('python')}",
    ]
    if v.get("tensorrt"):
        parts.append(f"TensorRT {v['tensorrt']}")
    if env.get("jetson"):
        parts.append(f"Jetson power mode {env['jetson'].get('power_mode')}")
    return "; ".join(parts)
