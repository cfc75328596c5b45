"""A tiny, randomly initialised CLIPSeg for tests and the demo.

Nothing can be downloaded in tests or on a laptop demo, so we write a complete checkpoint
folder ourselves: ``save_pretrained`` weights plus a small CLIP byte-level BPE tokenizer
(``vocab.json`` + ``merges.txt``) and a ``preprocessor_config.json``. The folder then loads
through exactly the same code as a real checkpoint (:func:`tunevlseg.models.loading.load_clipseg`).

Sizes are chosen so that every code path of the real model runs (deep prompts, three extracted
layers, complex transposed convolution) while a training step stays in the tens of
milliseconds: text width 64 + vision width 96 = 160, which 16, 20 and 32 divide (the Shared
Attention head counts of the search space).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tunevlseg.catalog import IMAGENET_MEAN, IMAGENET_STD
from tunevlseg.models.loading import is_complete_folder, quiet_transformers

if TYPE_CHECKING:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

__all__ = [
    "fast_random_clipseg",
    "real_size_clipseg_config",
    "tiny_clipseg_config",
    "write_folder_atomically",
    "write_tiny_clipseg",
]

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
END_OF_WORD = "</w>"

# Enough merges that "a photo of a" is four tokens, like in the real CLIP vocabulary, so the
# CoOp initialisation has the same shape in tests as in real runs.
_MERGES = (
    ("p", "h"),
    ("ph", "o"),
    ("t", "o</w>"),
    ("pho", "to</w>"),
    ("o", "f</w>"),
    ("t", "h"),
    ("th", "e</w>"),
    ("o", "n"),
)


def _byte_characters() -> list[str]:
    """The 256 printable characters CLIP's byte-level BPE uses for the 256 byte values.

    Printable Latin-1 bytes stand for themselves; the others are shifted to code points from
    256 upwards, in byte order (the GPT-2/CLIP convention the tokenizer expects).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    characters: dict[int, str] = {b: chr(b) for b in printable}
    shifted = 0
    for byte in range(256):
        if byte not in characters:
            characters[byte] = chr(256 + shifted)
            shifted += 1
    return [characters[b] for b in range(256)]


def tiny_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build the token-to-id map and merge list (special tokens last, EOS has the top id)."""
    tokens = _byte_characters()
    tokens += [c + END_OF_WORD for c in tokens[:256]]
    tokens += ["".join(pair) for pair in _MERGES]
    tokens += [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}, list(_MERGES)


def tiny_clipseg_config(image_size: int = 96) -> CLIPSegConfig:
    """The tiny CLIPSeg configuration (4 + 4 layers, widths 64 / 96, patch 16)."""
    from transformers import CLIPSegConfig

    vocab, _ = tiny_vocabulary()
    text = {
        "vocab_size": len(vocab),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "bos_token_id": vocab[BOS],
        "eos_token_id": vocab[EOS],
        "pad_token_id": vocab[EOS],
    }
    vision = {
        "hidden_size": 96,
        "intermediate_size": 192,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": 16,
    }
    return CLIPSegConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=32,
        extract_layers=[1, 2, 3],
        reduce_dim=16,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        conditional_layer=0,
        use_complex_transposed_convolution=True,
    )


def real_size_clipseg_config() -> CLIPSegConfig:
    """The sizes of ``CIDAS/clipseg-rd64``: ViT-B/16 (224 px config, run at 352 px), rd 64.

    Used by tests that check offline loading at the real scale, without the real weights.
    """
    from transformers import CLIPSegConfig

    return CLIPSegConfig(
        text_config={"eos_token_id": 2, "bos_token_id": 0, "pad_token_id": 1},
        vision_config={"patch_size": 16, "image_size": 224},
        projection_dim=512,
        extract_layers=[3, 6, 9],
        reduce_dim=64,
        conditional_layer=0,
        use_complex_transposed_convolution=False,
    )


def fast_random_clipseg(
    config: CLIPSegConfig, *, seed: int = 0, scale: float = 0.02
) -> CLIPSegForImageSegmentation:
    """A CLIPSeg with U(-scale, scale) weights, built without HF's per-module initialisation.

    HF's initialisation of a real-size model takes seconds on a CPU; building on the meta
    device and filling the parameters in place is several times faster. The weights are
    meaningless but finite, which is all loading tests need.
    """
    import torch
    from transformers import CLIPSegForImageSegmentation

    with torch.device("meta"):
        model = CLIPSegForImageSegmentation(config)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-scale, scale, generator=generator)
        for name, buffer in model.named_buffers():
            if name.endswith("position_ids"):  # non-persistent, but used if this model runs
                buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
    return model.eval()


def write_clip_tokenizer(folder: Path, *, model_max_length: int = 77) -> None:
    """Write our small CLIP BPE tokenizer files into ``folder``."""
    vocab, merges = tiny_vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "model_max_length": model_max_length,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def write_preprocessor_config(folder: Path, image_size: int) -> None:
    """Record the working resolution and ImageNet statistics like CLIPSeg checkpoints do."""
    config = {
        "image_processor_type": "ViTImageProcessor",
        "size": image_size,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=2))


def write_folder_atomically(
    folder: Path, fill: Callable[[Path], None], is_complete: Callable[[Path], bool]
) -> Path:
    """Write a model folder so that no reader ever sees half of it (idempotent, race-safe).

    If ``is_complete(folder)`` already holds, nothing is written. Otherwise ``fill`` writes the
    files into a fresh temporary sibling of ``folder``, which is then renamed into place (an
    empty ``folder`` is replaced). If the rename fails because a concurrent writer got there
    first, that is fine as long as ``is_complete(folder)`` now holds; otherwise the error is
    raised. The temporary sibling is removed in every case.

    Returns:
        ``folder`` (as a :class:`~pathlib.Path`).
    """
    folder = Path(folder)
    if is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        fill(staging)
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()
        try:
            os.replace(staging, folder)
        except OSError:
            if not is_complete(folder):  # lost a race to a writer that did not finish
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def write_tiny_clipseg(folder: Path, *, image_size: int = 96, seed: int = 0) -> Path:
    """Write a random tiny CLIPSeg checkpoint folder (idempotent, safe against races).

    The folder is filled in a temporary sibling and renamed into place, so a concurrent reader
    never sees half a checkpoint. If ``folder`` already holds a complete model it is left alone
    (see :func:`write_folder_atomically`).

    Returns:
        ``folder``, ready for :func:`tunevlseg.models.loading.load_clipseg`.
    """

    def fill(staging: Path) -> None:
        import torch
        from transformers import CLIPSegForImageSegmentation

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = CLIPSegForImageSegmentation(tiny_clipseg_config(image_size))
        quiet_transformers()
        model.save_pretrained(staging)
        write_clip_tokenizer(staging)
        write_preprocessor_config(staging, image_size)

    return write_folder_atomically(folder, fill, is_complete_folder)
