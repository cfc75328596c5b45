"""Map-style dataset, epoch-aware shuffling and the tokenising collate function.

Randomness (shuffle order, augmentation, which phrasing of a list prompt) is derived from
``(seed, epoch, index)`` instead of from process-global generators. The result is the same with
0 or N workers, with persistent workers, and after resuming from a checkpoint mid-run: the
sampler carries the epoch to the workers inside each key, since a persistent worker's copy of
the dataset never sees attribute updates from the main process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import albumentations as A
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from tunevlseg.data.cache import CachedArrays, ensure_cache
from tunevlseg.data.sample import Sample
from tunevlseg.data.transforms import load_image, load_mask_of

__all__ = ["EpochKey", "EpochShuffleSampler", "SegmentationDataset", "TokenizeCollate"]

Tokenize = Callable[[list[str]], dict[str, Tensor]]


class EpochKey(NamedTuple):
    """A dataset key that also says which epoch asked for it."""

    epoch: int
    item: int


class EpochShuffleSampler(Sampler[EpochKey]):
    """Permutes ``range(n)`` with a generator seeded by ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` at the start of every training epoch (also after a
    resume), so epoch ``e`` always sees the same order.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[EpochKey]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return iter(EpochKey(self.epoch, int(i)) for i in order)


class SegmentationDataset(Dataset[dict[str, Any]]):
    """Loads, transforms and returns one sample as tensors plus its prompt string.

    Args:
        samples: What the reader returned.
        transform: From :func:`tunevlseg.data.transforms.build_transform`.
        random_prompt: Draw one phrasing of a list prompt at random (training); otherwise the
            first phrasing is used (evaluation must be deterministic).
        seed: Base seed for the per-item randomness.
        cache_dir: Where to keep decoded, resized arrays (see :mod:`tunevlseg.data.cache`);
            ``None`` decodes the files on every access. The cache is built here, in the
            constructing process, so workers only ever open it.
        image_size: The size ``transform`` resizes to; required with ``cache_dir`` (the cache
            stores that size, and the transform's resize is then an exact copy).
        cache_label: Readable prefix of the cache entry's folder name.
        data_root: The data set's folder; a mask of another size than its image stops loading
            with a message that names the ``tvls-data check`` command for this folder.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: A.Compose,
        *,
        random_prompt: bool,
        seed: int = 0,
        cache_dir: Path | None = None,
        image_size: int | tuple[int, int] | None = None,
        cache_label: str = "samples",
        data_root: Path | None = None,
    ) -> None:
        self.samples = list(samples)
        self.data_root = data_root
        self.transform = transform
        self.random_prompt = random_prompt
        self.seed = seed
        self.cache: CachedArrays | None = None
        if cache_dir is not None:
            if image_size is None:
                raise ValueError("cache_dir needs image_size (the size the transform resizes to)")
            self.cache = ensure_cache(
                self.samples, image_size, cache_dir, label=cache_label, data_root=data_root
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | EpochKey) -> dict[str, Any]:
        epoch, index = (key.epoch, key.item) if isinstance(key, EpochKey) else (0, int(key))
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        if self.cache is not None:
            image, mask = self.cache[index]
        else:
            image = load_image(sample.image)
            mask = load_mask_of(sample.mask, sample.image, image.shape, data_root=self.data_root)
        # Seeding per item makes augmentation independent of worker count and order.
        self.transform.set_random_seed(int(rng.integers(2**31 - 1)))
        out = self.transform(image=image, mask=mask)
        prompt = sample.prompts[0]
        if self.random_prompt and len(sample.prompts) > 1:
            prompt = sample.prompts[int(rng.integers(len(sample.prompts)))]
        return {
            # A CHW view of the HWC array: the collate's stack makes the one contiguous copy.
            "pixel_values": torch.from_numpy(out["image"]).permute(2, 0, 1),
            # Converted in NumPy: a torch op here would start intra-op threads in every item.
            "masks": torch.from_numpy(out["mask"][None].astype(np.float32)),
            "prompt": prompt,
            "class_name": sample.class_name,
        }


class TokenizeCollate:
    """Stacks items and tokenises their prompts in one call (a class, so workers can pickle it).

    The batch holds ``pixel_values`` (B,3,H,W) uint8, ``masks`` (B,1,H,W) in {0,1}, every tensor
    ``tokenize`` returns (at least ``input_ids`` and ``attention_mask``), and ``class_names``: the
    list of each item's ``Sample.class_name`` (a list of strings, not a tensor), so that test
    scores can be kept per class (``train.metrics.PerClassScores``).

    Args:
        tokenize: Maps prompts to token tensors.
        channels_last: Lay ``pixel_values`` out as ``torch.channels_last`` (NHWC strides), the
            layout a channels-last convolutional model on CUDA wants; it is also the cheaper
            stack, since items are HWC arrays underneath. Values are the same either way.
        prompt_suffix: Appended to every prompt right before tokenisation (the experiment's
            ``model.prompt_suffix``, e.g. the ``"."`` the paper's authors add). Here, because
            every split's batches pass through this one object: train, val and test prompts
            get the same suffix, and the items keep the prompt as the data set has it.
    """

    def __init__(
        self, tokenize: Tokenize, *, channels_last: bool = False, prompt_suffix: str = ""
    ) -> None:
        self.tokenize = tokenize
        self.channels_last = channels_last
        self.prompt_suffix = prompt_suffix

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        tokens = self.tokenize([item["prompt"] + self.prompt_suffix for item in items])
        missing = {"input_ids", "attention_mask"} - set(tokens)
        if missing:
            raise KeyError(f"tokenize() returned no {sorted(missing)}")
        images = [item["pixel_values"] for item in items]
        if self.channels_last:
            pixel_values = _stack([t.permute(1, 2, 0) for t in images]).permute(0, 3, 1, 2)
        else:
            pixel_values = _stack(images)
        return {
            "pixel_values": pixel_values,
            "masks": _stack([item["masks"] for item in items]),
            "class_names": [str(item.get("class_name", "")) for item in items],
            **tokens,
        }


def _stack(tensors: list[Tensor]) -> Tensor:
    """``torch.stack`` of CPU tensors, copied by NumPy on the calling thread.

    ``torch.stack`` on a batch of 352 px images is a multi-megabyte copy that torch spreads over
    its intra-op threads; on a loaded node (or next to a training step with ``num_workers=0``)
    waiting for those threads cost up to 20x the copy itself. The result is the same tensor,
    always C-contiguous (``np.stack`` would keep the strides of permuted inputs).
    """
    first = tensors[0]
    out = np.empty((len(tensors), *first.shape), dtype=first.numpy().dtype)  # C order
    for row, tensor in zip(out, tensors, strict=True):
        row[...] = tensor.numpy()
    return torch.from_numpy(out)
