"""CRIS (Wang et al., CVPR 2022) built from scratch, prompt-tunable like CLIPSeg.

Modules:

* :mod:`~tunevlseg.models.cris.config`: :class:`CRISConfig` (``config.json``).
* :mod:`~tunevlseg.models.cris.clip_resnet`, :mod:`~tunevlseg.models.cris.clip_text`: CLIP's
  RN image encoder (dense attention pool) and text transformer blocks.
* :mod:`~tunevlseg.models.cris.neck`, :mod:`~tunevlseg.models.cris.decoder`,
  :mod:`~tunevlseg.models.cris.projector`: the sentence-gated FPN, the vision-language decoder
  and the dynamic-kernel projector.
* :mod:`~tunevlseg.models.cris.model`: :class:`CRIS`.
* :mod:`~tunevlseg.models.cris.checkpoint`: model folders, strict loading, :func:`load_cris`.
* :mod:`~tunevlseg.models.cris.prompted`: :class:`PromptedCRIS`, :func:`build_prompted_cris`.
* :mod:`~tunevlseg.models.cris.tiny`: a tiny random CRIS folder for tests and the demo.
"""

from tunevlseg.models.cris.checkpoint import (
    CheckpointMismatchError,
    LoadedCRIS,
    load_cris,
    load_cris_state_dict,
    save_cris,
)
from tunevlseg.models.cris.config import CRISConfig
from tunevlseg.models.cris.model import CRIS
from tunevlseg.models.cris.prompted import PromptedCRIS, build_prompted_cris

__all__ = [
    "CRIS",
    "CRISConfig",
    "CheckpointMismatchError",
    "LoadedCRIS",
    "PromptedCRIS",
    "build_prompted_cris",
    "load_cris",
    "load_cris_state_dict",
    "save_cris",
]
