"""The training loop: data, optimisation, evaluation, checkpoints and exact resume.

Determinism: the shuffle order, augmentation draws and dropout masks of epoch ``e`` depend only
on ``(seed, e)``, and `state.pt` (written atomically after every epoch) holds the model, optimiser,
scheduler and early-stopping state. So ``--resume`` after a kill continues from the last
finished epoch and ends with the same metrics as an uninterrupted run (on the same device).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from runtime.artifacts import atomic_write, atomic_write_json, library_versions, sha256_file
from runtime.configs import to_dict
from runtime.data import DatasetIndex, Record, load_dataset, load_image
from runtime.errors import CheckpointError, ConfigError, DataError
from runtime.metrics import classification_metrics, grouped_accuracy
from runtime.preprocess import PreprocessSpec, preprocess, resize_image, to_color
from train.augment import NUM_VARIANTS, augment
from train.checkpoint import save_checkpoint
from train.config import Augment, FitConfig, Optimizer, Scheduler
from train.models import create_model, get_model_info

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
CHECKPOINT_FILE = "checkpoint.pt"
SIDECAR_FILE = "checkpoint.json"

# Test-only fault injection (tests/reliability/test_interrupt.py): ``FER_TRAIN_KILL_AT=WHERE[:SIG]``
# makes the process send itself a real signal (default SIGKILL: no cleanup, no `finally`, exactly
# what kill -9 or the OOM killer leaves on disk; TERM or INT to test the graceful paths) at one point:
#   step:N         right after global optimizer step N (1-based, counted from the run's first epoch)
#   state-write:E  while epoch E's state.pt is being written: half its bytes are in the temp file
#   checkpoint     after the last state.pt, just before checkpoint.pt is written
# Never set outside those tests; unset, it costs one environment lookup per run.
KILL_ENV = "FER_TRAIN_KILL_AT"


def _kill_point() -> tuple[str, int, int]:
    """(where, N, signal number) from `KILL_ENV`; ("", 0, 0) when unset."""
    parts = os.environ.get(KILL_ENV, "").split(":")
    where = parts[0]
    n = int(parts[1]) if len(parts) > 1 and parts[1] else 0
    sig = getattr(signal, "SIG" + parts[2]) if len(parts) > 2 else signal.SIGKILL
    return where, n, int(sig) if where else 0


def _die(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(5)  # SIGTERM/SIGINT: the handler runs here, before the next line of the caller


class ImageSet(torch.utils.data.Dataset):
    """Records -> (float32 C×H×W tensor, label), resized once and augmented per epoch.

    In-memory datasets (synthetic, FER-2013) are colour-converted and resized to the input size up
    front (cheap, and the epoch loop then costs only augmentation and scaling); file-backed ones
    are decoded lazily so large sets (AffectNet) need not fit in memory.
    """

    def __init__(self, records: list[Record], spec: PreprocessSpec, augment_mode: Augment, seed: int) -> None:
        self.records = records
        self.spec = spec
        self.augment_mode = augment_mode
        self.seed = seed
        self.epoch = 0
        self.labels = np.array([r.label for r in records], dtype=np.int64)
        self._cache: list[np.ndarray | None] = [self._resized(r) if r.pixels is not None else None for r in records]
        self.copies = NUM_VARIANTS if augment_mode is Augment.OFFLINE_X4 else 1

    def _resized(self, r: Record) -> np.ndarray:
        return resize_image(to_color(load_image(r), self.spec.color_mode), self.spec)

    def __len__(self) -> int:
        return len(self.records) * self.copies

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        i, copy = divmod(idx, self.copies) if self.copies > 1 else (idx, 0)
        img = self._cache[i]
        if img is None:
            img = self._resized(self.records[i])
        if self.augment_mode is not Augment.NONE:
            rng = np.random.default_rng([self.seed, self.epoch, idx])
            variant = copy if self.copies > 1 else int(rng.integers(NUM_VARIANTS))
            img = augment(img, variant, rng)
        x = preprocess([img], self.spec)[0]
        return torch.from_numpy(x), int(self.labels[i])


@dataclass
class EvalResult:
    loss: float
    metrics: dict[str, Any]
    per_view_accuracy: dict[str, float]
    predictions: np.ndarray


def preprocess_records(records: list[Record], spec: PreprocessSpec) -> np.ndarray:
    """The validation/test path: `load_image` + `runtime.preprocess`, exactly as on the device."""
    return preprocess([load_image(r) for r in records], spec)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: np.ndarray,
    records: list[Record],
    class_names: tuple[str, ...],
    batch_size: int,
    device: torch.device,
) -> EvalResult:
    """Loss, accuracy, macro-F1, confusion matrix and per-view accuracy on preprocessed ``x``."""
    model.eval()
    labels = np.array([r.label for r in records], dtype=np.int64)
    logits = []
    for s in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[s : s + batch_size]).to(device)
        logits.append(model(xb).float().cpu())
    out = torch.cat(logits)
    loss = float(F.cross_entropy(out, torch.from_numpy(labels)))
    pred = out.argmax(1).numpy()
    m = classification_metrics(labels, pred, len(class_names))
    per_view = _per_group(labels, pred, records, "view")
    metrics = m.to_dict(class_names)
    occ = _per_group(labels, pred, records, "occluded")
    if occ:
        metrics["per_occlusion_accuracy"] = {("occluded" if k == "True" else "clear"): v for k, v in occ.items()}
    return EvalResult(loss, metrics, per_view, pred)


def _per_group(labels: np.ndarray, pred: np.ndarray, records: list[Record], key: str) -> dict[str, float]:
    """Accuracy per value of ``meta[key]`` when every record has it, else {}."""
    groups = [str(r.meta[key]) for r in records if key in r.meta]
    return grouped_accuracy(labels, pred, groups) if records and len(groups) == len(records) else {}


class _Heads(nn.Module):
    """Makes ``forward`` return every head, so DistributedDataParallel sees the real forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.forward_heads(x)


def _loss(train_module: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = train_module(x)
    if isinstance(out, dict):  # multi-head models (MA-Net): 0.6 local / 0.4 global
        return sum(w * F.cross_entropy(out[k], y) for k, w in model.loss_weights.items())
    return F.cross_entropy(out, y)


def _optimizer(cfg: FitConfig, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer is Optimizer.ADAM:
        return torch.optim.Adam(model.parameters(), lr=t.lr, eps=t.adam_eps, weight_decay=t.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def _scheduler(cfg: FitConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    t = cfg.train
    if t.scheduler is Scheduler.PLATEAU:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=t.plateau_factor, patience=t.plateau_patience)
    if t.scheduler is Scheduler.STEP:
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t.step_size, gamma=t.step_gamma)
    if t.scheduler is Scheduler.ONECYCLE:
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=t.lr, total_steps=t.epochs * steps_per_epoch, pct_start=0.25
        )
    return None


def _dist() -> tuple[int, int]:
    """(rank, world size) under torchrun, (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclass(frozen=True)
class FitResult:
    out: Path
    checkpoint: Path
    metrics: dict[str, Any]
    epochs_run: int
    train_seconds: float


def fit(cfg: FitConfig, out: str | Path | None = None, resume: bool = False, progress: bool = True) -> FitResult:
    """Train ``cfg.model`` on ``cfg.data``; write ``checkpoint.pt``/``checkpoint.json`` to ``out``.

    Args:
        cfg: The resolved configuration.
        out: Output folder (defaults to ``cfg.out``).
        resume: Continue from ``out/state.pt`` (must have been written by the same config).
        progress: Show a progress bar.
    """
    out = Path(out or cfg.out)
    t = cfg.train
    rank, world = _dist()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)

    info = get_model_info(cfg.model.name)
    spec = info.preprocess
    index = load_dataset(**cfg.data.loader_kwargs())
    _check_dataset(index, cfg, spec)
    train_recs, val_recs = index.split("train"), index.split("val")
    class_names = index.class_names
    log.info(
        "dataset %s: %d train, %d val, classes %s", index.name, len(train_recs), len(val_recs), ",".join(class_names)
    )

    torch.manual_seed(t.seed)
    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, **cfg.model.kwargs)
    if cfg.model.pretrained and not resume:
        _load_pretrained(model, info.family, cfg.model.pretrained)
    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp_model: nn.Module = _Heads(model) if hasattr(model, "forward_heads") else model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            ddp_model, device_ids=[device.index] if device.type == "cuda" else None
        )

    train_set = ImageSet(train_recs, spec, t.augment, t.seed)
    sampler = torch.utils.data.distributed.DistributedSampler(train_set, seed=t.seed) if world > 1 else None
    steps_per_epoch = math.ceil(len(train_set) / world / t.batch_size)
    opt = _optimizer(cfg, model)
    sched = _scheduler(cfg, opt, steps_per_epoch)
    use_amp = t.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    x_val = preprocess_records(val_recs, spec)

    config_dict = to_dict(cfg)
    state = {"epoch": 0, "best_acc": -1.0, "best_val_loss": math.inf, "stale": 0, "history": [], "train_seconds": 0.0}
    state_path = out / STATE_FILE
    if resume:
        state = _load_state(state_path, config_dict, model, opt, sched, scaler)
        log.info("resuming after epoch %d", state["epoch"])
    elif state_path.exists():
        raise ConfigError(
            f"{out} already holds a training run ({STATE_FILE}); pass --resume to continue it or choose another --out"
        )

    kill_what, kill_n, kill_sig = _kill_point()
    best_state = None
    stop_reason = "epochs"
    epoch = state["epoch"]
    while epoch < t.epochs:
        if t.time_budget_s and epoch > 0:
            # Stop before an epoch that would cross the budget (judged by the mean epoch so far).
            per_epoch = state["train_seconds"] / max(1, len(state["history"]))
            if state["train_seconds"] + per_epoch > t.time_budget_s * 1.05:
                stop_reason = "time_budget"
                log.warning(
                    "stopping after epoch %d: the next epoch would pass time_budget_s=%.0f", epoch, t.time_budget_s
                )
                break
        if t.early_stop_patience and state["stale"] >= t.early_stop_patience:
            stop_reason = "early_stop"
            break
        train_set.epoch = epoch
        torch.manual_seed(t.seed * 100_003 + epoch)  # dropout masks of this epoch
        if sampler is not None:
            sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(train_set, batch_size=t.batch_size, sampler=sampler)
        else:
            gen = torch.Generator().manual_seed(t.seed * 1_000_003 + epoch)
            loader = torch.utils.data.DataLoader(train_set, batch_size=t.batch_size, shuffle=True, generator=gen)
        ddp_model.train()
        t0 = time.perf_counter()
        seen, loss_sum = 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not progress or rank != 0, leave=False)
        for step, (xb, yb) in enumerate(bar, start=epoch * steps_per_epoch + 1):
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            if t.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = _loss(ddp_model, model, xb, yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if t.scheduler is Scheduler.ONECYCLE:
                sched.step()
            seen += len(yb)
            loss_sum += float(loss.detach()) * len(yb)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", ips=f"{seen / (time.perf_counter() - t0):.0f}")
            if kill_what == "step" and step == kill_n:
                _die(kill_sig)
        train_s = time.perf_counter() - t0
        ev = evaluate(model, x_val, val_recs, class_names, t.eval_batch_size, device)
        if t.scheduler is Scheduler.PLATEAU:
            sched.step(ev.loss)
        elif t.scheduler is Scheduler.STEP:
            sched.step()
        epoch += 1
        state["train_seconds"] += train_s
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / max(seen, 1),
            "val_loss": ev.loss,
            "val_accuracy": ev.metrics["accuracy"],
            "val_macro_f1": ev.metrics["macro_f1"],
            "per_view_accuracy": ev.per_view_accuracy,
            "lr": opt.param_groups[0]["lr"],
            "train_seconds": train_s,
            "train_images_per_s": seen / train_s,
        }
        state["history"].append(row)
        log.info(
            "epoch %d: loss %.4f, val loss %.4f, val acc %.4f, macro-F1 %.4f, %.0f img/s",
            epoch,
            row["train_loss"],
            ev.loss,
            row["val_accuracy"],
            row["val_macro_f1"],
            row["train_images_per_s"],
        )
        state["stale"] = 0 if ev.loss < state["best_val_loss"] else state["stale"] + 1
        state["best_val_loss"] = min(state["best_val_loss"], ev.loss)
        state["epoch"] = epoch
        if ev.metrics["accuracy"] > state["best_acc"]:
            state["best_acc"] = ev.metrics["accuracy"]
            state["best"] = {"epoch": epoch, "metrics": ev.metrics, "per_view_accuracy": ev.per_view_accuracy}
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            state["best_state_dict"] = best_state
        if rank == 0:
            _save_state(
                state_path,
                config_dict,
                state,
                model,
                opt,
                sched,
                scaler,
                die_midway=kill_sig if kill_what == "state-write" and epoch == kill_n else 0,
            )

    if world > 1:
        torch.distributed.barrier()
    best_state = state.get("best_state_dict")
    if best_state is None:
        raise CheckpointError(f"{out}: no epoch finished; nothing to save")
    model.load_state_dict(best_state)
    ckpt = out / CHECKPOINT_FILE
    best = state["best"]
    metrics = {
        "val_accuracy": best["metrics"]["accuracy"],
        "val_macro_f1": best["metrics"]["macro_f1"],
        "per_view_accuracy": best["per_view_accuracy"],
        "per_class_accuracy": best["metrics"]["per_class_accuracy"],
        "per_occlusion_accuracy": best["metrics"].get("per_occlusion_accuracy", {}),
        "confusion": best["metrics"]["confusion"],
        "val_count": best["metrics"]["count"],
        "best_epoch": best["epoch"],
    }
    if kill_what == "checkpoint":
        _die(kill_sig)
    if rank == 0:
        save_checkpoint(
            ckpt,
            model,
            model_name=cfg.model.name,
            class_names=class_names,
            preprocess=spec,
            model_kwargs=cfg.model.kwargs,
            dataset=cfg.data.loader_kwargs(),
            extra={"metrics": metrics},
        )
        sidecar = {
            "config": config_dict,
            "model": {
                "name": cfg.model.name,
                "family": info.family,
                "num_classes": len(class_names),
                "kwargs": cfg.model.kwargs,
            },
            "class_names": list(class_names),
            "input_contract": spec.to_dict(),
            "dataset": {"name": index.name, "train": len(train_recs), "val": len(val_recs), **index.info},
            "metrics": metrics,
            "history": [{k: v for k, v in r.items()} for r in state["history"]],
            "epochs_run": state["epoch"],
            "stop_reason": stop_reason,
            "train_seconds": state["train_seconds"],
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "versions": library_versions(),
            "checkpoint_sha256": sha256_file(ckpt),
        }
        atomic_write_json(out / SIDECAR_FILE, sidecar)
    return FitResult(out, ckpt, metrics, state["epoch"], state["train_seconds"])


def _load_pretrained(model: nn.Module, family: str, path: str) -> None:
    if family != "manet":
        raise ConfigError(f"model.pretrained is supported for MA-Net (MS-Celeb layout), not for family {family!r}")
    from train.models.manet import load_msceleb_pretrained

    report = load_msceleb_pretrained(model, path)
    log.info("loaded pre-trained weights from %s: %s", path, report)


def _check_dataset(index: DatasetIndex, cfg: FitConfig, spec: PreprocessSpec) -> None:
    if len(index.class_names) != cfg.model.num_classes:
        raise ConfigError(
            f"dataset {index.name!r} has {len(index.class_names)} classes but model.num_classes is "
            f"{cfg.model.num_classes}; set model.num_classes: {len(index.class_names)}"
        )
    if not index.split("train"):
        raise DataError(f"dataset {index.name!r} has no training samples")
    counts = index.class_counts("train")
    absent = [c for c, n in counts.items() if n == 0]
    if absent:
        where = f" under {cfg.data.root}" if cfg.data.root else ""
        raise DataError(
            f"dataset {index.name!r}{where} has no training samples of class(es) {absent} (training samples per "
            f"class: {counts}); a {len(index.class_names)}-class model cannot learn a class it never sees. Add "
            "training images of those classes (an ImageFolder needs a non-empty folder per class)"
        )
    if not index.split("val"):
        raise DataError(f"dataset {index.name!r} has no validation samples; set data.val_fraction > 0")


def _save_state(path: Path, config: dict, state: dict, model, opt, sched, scaler, die_midway: int = 0) -> None:
    import io

    payload = {
        "config": config,
        "state": {k: v for k, v in state.items() if k != "best_state_dict"},
        "best_state_dict": state.get("best_state_dict"),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else None,
        "scaler": scaler.state_dict(),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)

    def write(tmp: Path) -> None:
        data = buf.getvalue()
        if die_midway:  # test-only (KILL_ENV): a signal half-way through the write
            tmp.write_bytes(data[: len(data) // 2])
            _die(die_midway)
        tmp.write_bytes(data)

    atomic_write(path, write)


def _load_state(path: Path, config: dict, model, opt, sched, scaler) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: nothing to resume (no {STATE_FILE}); run without --resume to start")
    fix = f"delete {path} and rerun without --resume to start the run over, or train into another --out"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{path}: cannot read training state ({type(exc).__name__}: {first}); the file is corrupt or truncated: {fix}"
        ) from exc
    keys = set(payload) if isinstance(payload, dict) else set()
    missing = sorted({"config", "state", "model", "optimizer", "scheduler", "scaler"} - keys)
    if missing:
        raise CheckpointError(f"{path}: not a training state written by train.loop (missing {missing}): {fix}")
    saved = payload.get("config", {})
    changed = sorted(k for k in set(saved) | set(config) if k != "out" and saved.get(k) != config.get(k))
    if changed:
        raise ConfigError(
            f"{path}: the run was started with a different config (sections differ: {changed}); use the same config to resume"
        )
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["optimizer"])
    if sched is not None and payload["scheduler"] is not None:
        sched.load_state_dict(payload["scheduler"])
    scaler.load_state_dict(payload["scaler"])
    state = dict(payload["state"])
    state["best_state_dict"] = payload.get("best_state_dict")
    return state
