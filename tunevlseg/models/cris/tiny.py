"""A tiny, randomly initialised CRIS for tests and the demo, and fast real-size random models.

Nothing can be downloaded in tests or on a laptop demo, so we write a complete CRIS model folder
ourselves (``config.json``, ``cris.pth``, the small CLIP BPE tokenizer of
:func:`tunevlseg.models.tiny.write_clip_tokenizer`). It loads through exactly the same code as a
real checkpoint (:func:`tunevlseg.models.cris.checkpoint.load_cris`).

The tiny sizes keep every structural feature of CRIS-R50 (four ResNet stages with strided and
unstrided bottlenecks, a dense attention pool whose position grid is resized, 4 text layers, a
3-level neck, a 2-layer decoder, the dynamic kernel) while a training step stays in the tens of
milliseconds at 96 px.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunevlseg.models.cris.checkpoint import is_complete_cris_folder, save_cris
from tunevlseg.models.cris.config import CRISConfig
from tunevlseg.models.cris.model import CRIS
from tunevlseg.models.tiny import tiny_vocabulary, write_clip_tokenizer, write_folder_atomically

__all__ = ["fast_random_cris", "tiny_cris_config", "write_tiny_cris"]


def tiny_cris_config(image_size: int = 96) -> CRISConfig:
    """CRIS with stem width 8 (stages 32..256 channels), text width 32, embed 64."""
    vocab, _ = tiny_vocabulary()
    return CRISConfig(
        image_size=image_size,
        clip_image_size=64,  # a 2x2 position grid, resized to 3x3 at 96 px like 7x7 -> 13x13
        vision_layers=(1, 2, 1, 1),
        vision_width=8,
        vision_heads=4,
        embed_dim=64,
        vocab_size=len(vocab),
        context_length=77,
        word_length=40,
        text_width=32,
        text_layers=4,
        text_heads=4,
        fpn_out=(16, 32, 64),
        decoder_layers=2,
        decoder_heads=4,
        decoder_ffn=64,
        dropout=0.1,
        kernel_size=3,
    )


def fast_random_cris(config: CRISConfig, *, seed: int = 0, scale: float = 0.02) -> CRIS:
    """A CRIS with U(-scale, scale) weights and identity BatchNorm statistics, in eval mode.

    Built on the meta device and filled in place from one shared pool of random numbers (each
    tensor takes a window at its own offset): drawing ~150 M fresh numbers, or running the
    per-module initialisers, takes seconds on a CPU, copying takes a fraction. The weights mean
    nothing but keep activations finite, which is all shape, loading and speed tests need.
    """
    with torch.device("meta"):
        model = CRIS(config)
    model = model.to_empty(device="cpu")
    largest = max(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(seed)
    pool = torch.empty(largest + 4099).uniform_(-scale, scale, generator=generator)
    with torch.no_grad():
        for index, (name, parameter) in enumerate(model.named_parameters()):
            if name.endswith(("bn1.weight", "bn2.weight", "bn3.weight")) or ".norm" in name:
                parameter.fill_(1.0)
            else:
                start = (index * 4099) % (pool.numel() - parameter.numel() + 1)
                parameter.copy_(pool[start : start + parameter.numel()].view_as(parameter))
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.fill_(1.0)
            else:
                buffer.zero_()
    return model.eval()


def calibrate_batchnorm(
    model: CRIS, image_size: int, *, batches: int = 4, batch_size: int = 8
) -> None:
    """Set every BatchNorm's running statistics from forward passes on random inputs.

    A randomly initialised ResNet in eval mode uses the default statistics (mean 0, variance 1)
    while its random convolutions shrink the signal layer by layer: the tiny model's output
    then hardly depends on the image, and a prompt-tuning demo cannot learn anything. With
    statistics measured on inputs, every normalised layer passes a unit-scale signal on, as in
    a trained network. Only buffers change; no weight is trained.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
    was_training = model.training
    model.train()
    vocabulary = len(tiny_vocabulary()[0])
    with torch.no_grad():
        for _ in range(batches):
            images = torch.randn(batch_size, 3, image_size, image_size)
            ids = torch.randint(1, vocabulary - 2, (batch_size, 8))
            model(images, ids, torch.ones_like(ids))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(was_training)


def write_tiny_cris(folder: Path, *, image_size: int = 96, seed: int = 0) -> Path:
    """Write a random tiny CRIS model folder (idempotent, safe against concurrent writers).

    The folder is filled in a temporary sibling and renamed into place, so a reader never sees
    half a model. If ``folder`` already holds a complete model it is left alone (see
    :func:`tunevlseg.models.tiny.write_folder_atomically`).

    Returns:
        ``folder``, ready for :func:`tunevlseg.models.cris.checkpoint.load_cris`.
    """

    def fill(staging: Path) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = CRIS(tiny_cris_config(image_size))
            calibrate_batchnorm(model, image_size)
        model.eval()
        save_cris(model, staging)
        write_clip_tokenizer(staging)

    return write_folder_atomically(folder, fill, is_complete_cris_folder)
