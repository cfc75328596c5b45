"""Prompted segmentation models; the only subpackage that imports transformers.

Modules (import them directly; nothing heavy is imported here):

* :mod:`tunevlseg.models.clipseg`: :func:`build_prompted_clipseg`, :class:`PromptedCLIPSeg`.
* :mod:`tunevlseg.models.upsampler`: the learnable upsampler.
* :mod:`tunevlseg.models.loading`: offline loading, :class:`ModelNotFoundError`.
* :mod:`tunevlseg.models.tiny`: a tiny random CLIPSeg checkpoint for tests and the demo.
"""

__all__: list[str] = []
