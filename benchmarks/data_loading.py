"""Images per second through the training DataLoader, with and without the preprocessing cache.

Writes a synthetic MedVLSM set (JPEG images, PNG masks) at ``--source-size`` pixels, then times
full passes of the training loader (augmentation, collate, tokenisation) at the model size
``--image-size``. The loader yields uint8 images; their normalisation runs on the training
device after the copy, and is timed on its own (on this machine's CPU) at the end:

* ``decode``: no cache, every item decodes and resizes its files;
* ``cache build``: the one-off cost of building the cache entry (``setup``);
* ``cached``: passes over the warm cache.

Decode and cached passes alternate and the best pass of each is reported, by wall clock and by
this process's CPU time (the latter is steadier on a shared machine).

Usage::

    python benchmarks/data_loading.py [--n-images 64] [--source-size 512] [--image-size 352]
        [--epochs 3] [--num-workers 0] [--workdir DIR]

Prints one line per measurement and the speed-up, to stdout.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import torch

from tunevlseg.catalog import IMAGENET_MEAN, IMAGENET_STD
from tunevlseg.data.datamodule import SegmentationDataModule
from tunevlseg.data.synthetic import write_synthetic_medvlsm
from tunevlseg.train.testing import byte_tokenize


def one_pass(dm: SegmentationDataModule, epoch: int) -> tuple[int, float, float]:
    """One training epoch: (images, wall seconds, CPU seconds of this process)."""
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
    n = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in loader:
        n += len(batch["pixel_values"])
    return n, time.perf_counter() - wall, time.process_time() - cpu


def best_rate(results: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Best images/s over the passes, by wall clock and by CPU time.

    The best pass is the one least disturbed by other load on a shared machine, like ``timeit``.
    """
    return max(n / w for n, w, _ in results), max(n / c for n, _, c in results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--source-size", type=int, default=512)
    p.add_argument("--image-size", type=int, default=352)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OpenCV and torch threads of this process (default 1: what a DataLoader worker "
        "gets; 0 leaves the libraries' defaults)",
    )
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = p.parse_args()
    if args.threads > 0:
        cv2.setNumThreads(args.threads)
        torch.set_num_threads(args.threads)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tvls-bench-"))
    try:
        root = write_synthetic_medvlsm(
            workdir / "data",
            n_train=args.n_images,
            n_val=1,
            n_test=1,
            image_size=args.source_size,
        )
        cache_dir = workdir / "cache"
        shutil.rmtree(cache_dir, ignore_errors=True)

        def module(cache: Path | None) -> SegmentationDataModule:
            return SegmentationDataModule(
                root,
                "medvlsm",
                "p2",
                image_size=args.image_size,
                mean=IMAGENET_MEAN,
                std=IMAGENET_STD,
                tokenize=byte_tokenize,
                batch_size=args.batch_size,
                num_workers=args.num_workers,
                cache_dir=cache,
            )

        print(
            f"{args.n_images} images, {args.source_size}px JPEG -> {args.image_size}px, "
            f"batch {args.batch_size}, {args.num_workers} workers, {args.threads or 'default'} "
            f"threads, best of {args.epochs} epochs"
        )
        plain = module(None)
        plain.setup("fit")
        cached = module(cache_dir)
        start = time.perf_counter()
        cached.setup("fit")  # builds the train and val entries
        build = time.perf_counter() - start
        one_pass(plain, 0)  # warm-up: page cache, albumentations' first calls
        one_pass(cached, 0)
        runs: dict[str, list[tuple[int, float, float]]] = {"decode": [], "cached": []}
        # Interleaved, so that a burst of load elsewhere hits both alike.
        for epoch in range(1, args.epochs + 1):
            runs["decode"].append(one_pass(plain, epoch))
            runs["cached"].append(one_pass(cached, epoch))
        decode, decode_cpu = best_rate(runs["decode"])
        warm, warm_cpu = best_rate(runs["cached"])
        print(f"cache build  {build:8.2f} s   ({args.n_images / build:.1f} images/s, once)")
        print(f"decode       {decode:8.1f} images/s  {decode_cpu:8.1f} images/CPU-s")
        print(f"cached       {warm:8.1f} images/s  {warm_cpu:8.1f} images/CPU-s")
        print(f"speed-up     {warm / decode:8.2f}x          {warm_cpu / decode_cpu:8.2f}x")
        batch = next(iter(cached.train_dataloader()))
        started, repeats = time.perf_counter(), 20
        for _ in range(repeats):
            cached.normalize(batch)
        per_image = (time.perf_counter() - started) / (repeats * len(batch["pixel_values"]))
        print(
            f"normalise    {1 / per_image:8.1f} images/s  (uint8 -> float32 on the batch's device, "
            f"here the CPU; not in the figures above)"
        )
        with_cpu = [1 / (1 / rate + per_image) for rate in (decode, warm)]
        print(
            f"with normalisation on this CPU: decode {with_cpu[0]:.1f}, cached {with_cpu[1]:.1f} "
            f"images/s, {with_cpu[1] / with_cpu[0]:.2f}x (CPU-only training)"
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
