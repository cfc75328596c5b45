"""Lightning DataModule over a MedVLSM or binarized natural data set."""

from __future__ import annotations

import logging
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
from tunevlseg.data.natural import (
    DEFAULT_VAL_FRACTION,
    SplitPolicy,
    read_natural,
    read_natural_split,
    split_policy,
)
from tunevlseg.data.sample import DatasetFormatError, Sample
from tunevlseg.data.transforms import Augmentation, build_transform, normalize_pixels
from tunevlseg.data.unseen import class_folders, is_unseen, unseen_problems

__all__ = ["DataFormat", "SegmentationDataModule", "read_split"]

DataFormat = Literal["medvlsm", "natural"]
log = logging.getLogger(__name__)


def read_split(
    root: Path,
    format: DataFormat,
    split: str,
    prompt_key: str,
    policy: SplitPolicy | None = None,
) -> list[Sample]:
    """Read one split with the reader of ``format`` (natural sets ignore ``prompt_key``).

    ``policy`` says where a natural set's split comes from (:func:`~tunevlseg.data.natural.
    split_policy`); ``None`` reads the folder named ``split`` as it is on disk. MedVLSM sets
    always read ``anns/<split>.json``.
    """
    if format == "medvlsm":
        return read_medvlsm(root, split, prompt_key)
    if format == "natural":
        if policy is None:
            return read_natural(root, split)
        return read_natural_split(root, split, policy)
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
            (at least one); ``None`` keeps all. Applied after ``val_fraction``'s hold-out, so
            it never moves an image into validation.
        val_fraction: For a natural set without ``annotations/test``: the share (0, 1) of the
            training images held out as the validation split, while the official val split
            becomes the test split (:mod:`tunevlseg.data.natural`, "Split policy"). Chosen by
            image name with a fixed data seed, not with ``seed``, so every trial and every
            resume sees the same split. No effect on MedVLSM sets or natural sets with a test
            split. The policy in use is :attr:`split_policy`; the sizes read are
            :attr:`split_sizes`.
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
        unseen_classes: Natural sets only: classes whose samples train and val leave out while
            test keeps them (the unseen-class protocol, :mod:`tunevlseg.data.unseen`; any
            spelling of the class folder's name). Checked against the class folders when the
            first split is read.

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
        val_fraction: float = DEFAULT_VAL_FRACTION,
        unseen_classes: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if format not in ("medvlsm", "natural"):
            raise ValueError(f"unknown data format {format!r}; expected 'medvlsm' or 'natural'")
        if batch_size < 1 or num_workers < 0:
            raise ValueError("batch_size must be >= 1 and num_workers >= 0")
        if train_fraction is not None and not 0.0 < train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if unseen_classes and format != "natural":
            raise ValueError("unseen_classes needs a natural (multi-class) data set")
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
        self.val_fraction = val_fraction
        self.unseen_classes = tuple(unseen_classes)
        self._unseen_checked = False
        self._split_policy: SplitPolicy | None = None
        # Per split read: {"images": ..., "samples": ...}, i.e. what the policy gave.
        self.split_sizes: dict[str, dict[str, int]] = {}
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.augmentation = augmentation or Augmentation()
        self.collate = TokenizeCollate(
            tokenize, channels_last=channels_last, prompt_suffix=prompt_suffix
        )
        self.datasets: dict[str, SegmentationDataset] = {}

    @property
    def split_policy(self) -> SplitPolicy:
        """Where train, val and test come from; decided from the folder on first use and logged.

        Decided once per module (not per split), so that train and val are always the two
        sides of one hold-out, even if the folder changes while the module lives.
        """
        if self._split_policy is None:
            if self.format == "natural":
                self._split_policy = split_policy(self.root, self.val_fraction)
            else:
                self._split_policy = SplitPolicy("explicit")
            log.info("data set %s: split policy %s", self.root, self._split_policy.describe())
        return self._split_policy

    def samples(self, split: str) -> list[Sample]:
        """The samples of ``split`` under :attr:`split_policy`, after ``train_fraction`` (train).

        Also records the split's size in :attr:`split_sizes` and logs it with its source.
        """
        policy = self.split_policy
        samples = read_split(self.root, self.format, split, self.prompt_key, policy)
        if self.unseen_classes and split in ("train", "val"):
            self._check_unseen_classes()
            samples = [s for s in samples if not is_unseen(s.class_name, self.unseen_classes)]
            if not samples:
                raise DatasetFormatError(
                    f"{self.root}: the {split} split has no sample of a seen class (unseen: "
                    f"{', '.join(self.unseen_classes)})"
                )
        if split == "train" and self.train_fraction is not None:
            keep = max(1, round(len(samples) * self.train_fraction))
            chosen = np.random.default_rng([self.seed, 1]).choice(len(samples), keep, replace=False)
            samples = [samples[i] for i in sorted(chosen)]
        sizes = {"images": len({s.image for s in samples}), "samples": len(samples)}
        self.split_sizes[split] = sizes
        source = policy.source(split)
        log.info(
            "data set %s: %s = %d image(s), %d sample(s)%s",
            self.root,
            split,
            sizes["images"],
            sizes["samples"],
            "" if source == split else f" (from the official {source} split)",
        )
        return samples

    def _check_unseen_classes(self) -> None:
        """The preflight's rule again, for runs that did not come through a launch."""
        if self._unseen_checked:
            return
        problems = unseen_problems(self.unseen_classes, class_folders(self.root))
        if problems:
            found = "; ".join(message for _, message in problems)
            raise DatasetFormatError(f"{self.root}: unseen_classes: {found}")
        self._unseen_checked = True

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
        return {
            **batch,
            "pixel_values": normalize_pixels(batch["pixel_values"], self.mean, self.std),
        }

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
