"""Lightning DataModule over a MedVLSM or binarized natural data set."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from tunevlseg.data.dataset import EpochShuffleSampler, SegmentationDataset, TokenizeCollate
from tunevlseg.data.medvlsm import read_medvlsm
from tunevlseg.data.natural import read_natural
from tunevlseg.data.sample import Sample
from tunevlseg.data.transforms import Augmentation, build_transform, normalize_pixels

__all__ = ["DataFormat", "SegmentationDataModule", "read_split"]

DataFormat = Literal["medvlsm", "natural"]


def read_split(root: Path, format: DataFormat, split: str, prompt_key: str) -> list[Sample]:
    """Read one split with the reader of ``format`` (natural sets ignore ``prompt_key``)."""
    if format == "medvlsm":
        return read_medvlsm(root, split, prompt_key)
    if format == "natural":
        return read_natural(root, split)
    raise ValueError(f"unknown data format {format!r}; expected 'medvlsm' or 'natural'")


class SegmentationDataModule(L.LightningDataModule):
    """Train/val/test loaders of ``pixel_values``, ``input_ids``, ``attention_mask``, ``masks``.

    Training shuffles, augments and draws a random phrasing of list prompts; val and test do
    none of these. Tokenisation happens in the collate function, so it runs in the workers.

    The loaders yield ``pixel_values`` as uint8; in a Trainer, :meth:`on_after_batch_transfer`
    normalises them with the model's mean/std on the device. Code that feeds a model from the
    loaders directly calls :meth:`normalize` on each batch.

    Args:
        root: The data set folder.
        format: ``"medvlsm"`` or ``"natural"``.
        prompt_key: The MedVLSM prompt to use (``"p0"`` .. ``"pN"``); ignored for natural sets.
        image_size: The model's input size.
        mean: The model's normalisation mean (0-1 units).
        std: The model's normalisation std (0-1 units).
        tokenize: Maps a list of prompts to a dict with at least ``input_ids`` and
            ``attention_mask`` tensors. Must be picklable when ``num_workers > 0`` and workers
            are spawned rather than forked.
        batch_size: Per-step batch size.
        num_workers: DataLoader worker processes (persistent when > 0).
        seed: Seed of the shuffle order, the augmentation and the prompt draw.
        train_fraction: Keep this fraction (0, 1] of the training samples, drawn with ``seed``
            (at least one); ``None`` keeps all.
        cache_dir: Keep decoded images and masks, resized to ``image_size``, in this folder
            (one entry per split; see :mod:`tunevlseg.data.cache`), built in :meth:`setup`.
            On a cluster point it at node-local disk (``$TMPDIR``) or a shared scratch.
            ``None`` decodes the files every epoch. Outputs are identical either way.
        channels_last: Batch ``pixel_values`` in ``torch.channels_last`` layout (for a model
            converted with ``.to(memory_format=torch.channels_last)``, e.g. a convolutional
            image encoder on CUDA; a ViT gains nothing). Values are the same either way.
        augmentation: Probabilities and border mode of the training augmentation (the
            experiment's ``data.augmentation``); ``None``: the paper's defaults.
        prompt_suffix: Appended to every prompt of every split before tokenisation (the
            experiment's ``model.prompt_suffix``); see :class:`TokenizeCollate`.

    On CUDA, loaders pin memory (so Lightning's ``non_blocking`` copy overlaps the step);
    workers stay alive between epochs. Workers are not told to run OpenCV single-threaded:
    ``cv2.setNumThreads`` in a forked worker can deadlock once the parent has used OpenCV's
    thread pool (torch already limits each worker to one thread of its own).
    """

    def __init__(
        self,
        root: Path,
        format: DataFormat,
        prompt_key: str,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        tokenize: Callable[[list[str]], dict[str, Tensor]],
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        train_fraction: float | None = None,
        *,
        cache_dir: Path | None = None,
        channels_last: bool = False,
        augmentation: Augmentation | None = None,
        prompt_suffix: str = "",
    ) -> None:
        super().__init__()
        if format not in ("medvlsm", "natural"):
            raise ValueError(f"unknown data format {format!r}; expected 'medvlsm' or 'natural'")
        if batch_size < 1 or num_workers < 0:
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")
        if train_fraction is not None and not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        self.root = Path(root)
        self.format: DataFormat = format
        self.prompt_key = prompt_key
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_fraction = train_fraction
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.augmentation = augmentation or Augmentation()
        self.collate = TokenizeCollate(
            tokenize, channels_last=channels_last, prompt_suffix=prompt_suffix
        )
        self.datasets: dict[str, SegmentationDataset] = {}

    def samples(self, split: str) -> list[Sample]:
        """The samples of ``split`` after ``train_fraction`` is applied (train only)."""
        samples = read_split(self.root, self.format, split, self.prompt_key)
        if split == "train" and self.train_fraction is not None:
            keep = max(1, round(len(samples) * self.train_fraction))
            chosen = np.random.default_rng([self.seed, 1]).choice(len(samples), keep, replace=False)
            samples = [samples[i] for i in sorted(chosen)]
        return samples

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            None: ("train", "val", "test"),
        }.get(stage, ())
        for split in wanted:
            if split not in self.datasets:
                train = split == "train"
                transform = build_transform(
                    self.image_size, train=train, augmentation=self.augmentation
                )
                self.datasets[split] = SegmentationDataset(
                    self.samples(split),
                    transform,
                    random_prompt=train,
                    seed=self.seed,
                    cache_dir=self.cache_dir,
                    image_size=self.image_size,
                    cache_label=f"{self.root.name}-{split}",
                    data_root=self.root,
                )

    def train_dataloader(self) -> DataLoader[Any]:
        dataset = self._dataset("train")
        return self._loader(dataset, sampler=EpochShuffleSampler(len(dataset), self.seed))

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader(self._dataset("val"))

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader(self._dataset("test"))

    def normalize(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with float32 ``pixel_values``, normalised with the model's mean and std."""
        return {**batch, "pixel_values": normalize_pixels(batch["pixel_values"], self.mean, self.std)}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return self.normalize(batch)

    def _dataset(self, split: str) -> SegmentationDataset:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return self.datasets[split]

    def _loader(
        self, dataset: SegmentationDataset, sampler: EpochShuffleSampler | None = None
    ) -> DataLoader[Any]:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            pin_memory=self._on_cuda(),
            persistent_workers=self.num_workers > 0,
        )

    def _on_cuda(self) -> bool:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return bool(trainer.strategy.root_device.type == "cuda")
        return torch.cuda.is_available()
