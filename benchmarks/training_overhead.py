"""Per-step cost of the full training stack against a bare PyTorch loop, on the same model.

For the tiny CLIPSeg (``write_tiny_clipseg``, 96 px) and a real-size CLIPSeg (ViT-B/16 at
352 px, ``real_size_clipseg_config`` + ``fast_random_clipseg``) with VPT at prompt depth 11
(CPU, fp32), three variants run interleaved, ``--rounds`` times each, on one model object:

* ``stack``: the real ``tunevlseg.train.fit.fit`` (``SegmentationDataModule`` -> ``SegmentationModule``
  in the Lightning ``Trainer`` built by ``_make_trainer``: ModelCheckpoint, EarlyStopping,
  CSVLogger, AdamW + ReduceLROnPlateau, epoch-level logging), one epoch of
  ``warmup + steps`` batches (effective batch = batch, so one optimiser step per batch).
  A forward pre-hook on the model stamps every training forward; a step is the interval
  between two consecutive training forwards (data fetch, hooks, logging, backward, optimiser
  step, zero_grad: everything between them). Validation/test after the epoch are not timed.
* ``bare-loader``: a plain loop over the same data module's train loader doing the same
  forward (+ the module's resize to the mask size), ``dice_bce_loss``, backward, AdamW step on
  ``model.param_groups``, zero_grad.
* ``bare-fixed``: the same loop on one pre-collated batch (compute only: no data loading).

The first ``--warmup`` steps of every round are dropped; per variant the median step over all
rounds is reported, by wall clock and by this process's CPU time (``time.process_time``; with
one torch thread it is the steadier measure on a shared machine, as other processes' load does
not count), and the ratios stack / bare-loader (framework overhead) and stack / bare-fixed
(framework + data loading).

Reproduce::

    .venv/bin/python benchmarks/training_overhead.py            # both sizes (~10 min here)
    .venv/bin/python benchmarks/training_overhead.py --only tiny
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tunevlseg.catalog import IMAGENET_MEAN, IMAGENET_STD
from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.synthetic import write_synthetic_medvlsm
from tunevlseg.models.clipseg import build_prompted_clipseg
from tunevlseg.models.tiny import (
    fast_random_clipseg,
    real_size_clipseg_config,
    write_clip_tokenizer,
    write_preprocessor_config,
    write_tiny_clipseg,
)
from tunevlseg.train.fit import fit
from tunevlseg.train.loss import dice_bce_loss
from tunevlseg.train.settings import FitSettings


def write_real_size(folder: Path) -> Path:
    model = fast_random_clipseg(real_size_clipseg_config())
    model.save_pretrained(folder)
    write_clip_tokenizer(folder)
    write_preprocessor_config(folder, 352)
    return folder


class StepClock:
    """Stamps each grad-enabled (training) forward of the model (a forward pre-hook)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.stamps: list[float] = []
        self.cpu: list[float] = []
        self.active = False
        model.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any) -> None:
        if self.active and torch.is_grad_enabled():  # training forwards only (eval runs no_grad)
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())

    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]

    def cpu_intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.cpu, self.cpu[1:], strict=False)]


def bare_steps(
    model: Any, batches: Any, n: int, lr: float, wd: float, normalize: Any
) -> tuple[list[float], list[float]]:
    """The plain loop; returns the per-step wall and CPU times (one forward's start to the next).

    ``normalize`` is the data module's: the loader yields uint8 images, as in the stack.
    """
    optimizer = torch.optim.AdamW(model.param_groups(wd), lr=lr)
    stamps, cpu = [], []
    iterator = iter(batches)
    for _ in range(n):
        stamps.append(time.perf_counter())  # before the fetch, as the hook sees a step's start
        cpu.append(time.process_time())
        batch = normalize(next(iterator))
        logits = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        masks = batch["masks"]
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(
                logits, size=masks.shape[-2:], mode="bilinear", align_corners=False
            )
        loss = dice_bce_loss(logits, masks)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    # close the last step like the hook does: time to the would-be next forward
    stamps.append(time.perf_counter())
    cpu.append(time.process_time())
    return (
        [b - a for a, b in itertools.pairwise(stamps)],
        [b - a for a, b in itertools.pairwise(cpu)],
    )


def measure(
    label: str,
    folder: Path,
    image_size: int,
    learner_params: dict[str, Any],
    *,
    batch: int,
    warmup: int,
    steps: int,
    rounds: int,
    work: Path,
) -> dict[str, float]:
    n = warmup + steps
    data = write_synthetic_medvlsm(
        work / f"data-{label}", n_train=n * batch, n_val=batch, n_test=batch, image_size=image_size
    )
    t0 = time.perf_counter()
    model = build_prompted_clipseg(str(folder), "vpt", learner_params)
    build_s = time.perf_counter() - t0
    modes = {name: m.training for name, m in model.named_modules()}

    def restore_modes() -> None:
        for name, m in model.named_modules():
            m.training = modes[name]

    def datamodule() -> SegmentationDataModule:
        return SegmentationDataModule(
            root=data,
            format="medvlsm",
            prompt_key="p1",
            image_size=image_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            tokenize=model.tokenize,
            batch_size=batch,
            num_workers=0,
            seed=0,
        )

    settings = FitSettings(
        max_epochs=1,
        patience=3,
        batch_size=batch,
        effective_batch_size=batch,
        lr=1e-3,
        weight_decay=1e-4,
        precision="32",
        accelerator="cpu",
    )
    clock = StepClock(model)
    fixed_dm = datamodule()
    fixed_dm.setup("fit")
    fixed = fixed_dm.normalize(next(iter(fixed_dm.train_dataloader())))
    results: dict[str, list[float]] = {"stack": [], "bare-loader": [], "bare-fixed": []}
    cpu: dict[str, list[float]] = {"stack": [], "bare-loader": [], "bare-fixed": []}
    for r in range(rounds):
        # stack: the real fit() on a fresh run folder
        restore_modes()
        run_dir = work / f"run-{label}-{r}"
        clock.stamps, clock.cpu, clock.active = [], [], True
        fit(model, datamodule(), settings, run_dir)
        clock.active = False
        results["stack"] += clock.intervals()[warmup : steps + warmup - 1]
        cpu["stack"] += clock.cpu_intervals()[warmup : steps + warmup - 1]
        shutil.rmtree(run_dir, ignore_errors=True)
        # bare over the same loader
        restore_modes()
        dm = datamodule()
        dm.setup("fit")
        times, cpus = bare_steps(
            model, dm.train_dataloader(), n, settings.lr, settings.weight_decay, dm.normalize
        )
        results["bare-loader"] += times[warmup : n - 1]
        cpu["bare-loader"] += cpus[warmup : n - 1]
        # bare on one fixed batch
        restore_modes()
        times, cpus = bare_steps(
            model, iter(lambda: fixed, None), n, settings.lr, settings.weight_decay, lambda b: b
        )
        results["bare-fixed"] += times[warmup : n - 1]
        cpu["bare-fixed"] += cpus[warmup : n - 1]
        print(
            f"  [{label}] round {r + 1}/{rounds}: "
            + ", ".join(
                f"{k} {statistics.median(v[-(steps - 1) :]) * 1e3:.1f} ms"
                for k, v in results.items()
            ),
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in results.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    trainable, total = model.count_parameters()
    print(
        f"{label}: batch {batch}, {image_size} px, VPT depth {learner_params['prompt_depth']}, "
        f"{trainable:,} trainable of {total:,} params, model build {build_s:.2f} s, "
        f"{len(results['stack'])} timed steps per variant"
    )
    for k, v in results.items():
        print(
            f"  {k:12s} median {med[k] * 1e3:9.1f} ms/step wall (min {min(v) * 1e3:.1f}, "
            f"max {max(v) * 1e3:.1f});  median {cmed[k] * 1e3:9.1f} ms/step CPU"
        )
    for name, m in (("wall", med), ("CPU", cmed)):
        print(
            f"  {name:4s} ratio stack/bare-loader = {m['stack'] / m['bare-loader']:.3f}   "
            f"stack/bare-fixed = {m['stack'] / m['bare-fixed']:.3f}   "
            f"bare-loader/bare-fixed = {m['bare-loader'] / m['bare-fixed']:.3f}",
            flush=True,
        )
    return med


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["tiny", "real"], default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tiny-steps", type=int, default=30)
    p.add_argument("--real-steps", type=int, default=3)
    p.add_argument("--real-warmup", type=int, default=1)
    p.add_argument("--real-batch", type=int, default=1)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 = a task's share at parallelism 2 on 2 cores, as "
        "TVLS_THREADS sets it; also the steadiest on a shared machine)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"nproc {os.cpu_count()}, load {os.getloadavg()}"
    )
    work = Path(tempfile.mkdtemp(prefix="tvls-overhead-"))
    try:
        if args.only in (None, "tiny"):
            folder = write_tiny_clipseg(work / "clipseg-tiny")
            measure(
                "tiny",
                folder,
                96,
                {"prompt_depth": 3},
                batch=8,
                warmup=5,
                steps=args.tiny_steps,
                rounds=args.rounds,
                work=work,
            )
        if args.only in (None, "real"):
            folder = write_real_size(work / "clipseg-real")
            measure(
                "real-size",
                folder,
                352,
                {"prompt_depth": 11},
                batch=args.real_batch,
                warmup=args.real_warmup,
                steps=args.real_steps,
                rounds=args.rounds,
                work=work,
            )
        print(f"load after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
