"""Shared Attention mixes its prompt tokens through attention."""

from __future__ import annotations

import pytest
import torch

from tunevlseg.learners.base import EncoderDims
from tunevlseg.learners.shared_attention import SharedAttention

DIMS = EncoderDims(
    text_width=64, vision_width=96, text_layers=4, vision_layers=4, projection_dim=32
)


@pytest.mark.parametrize("norm_first", [True, False])
def test_token_zero_depends_on_token_one(norm_first: bool) -> None:
    torch.manual_seed(0)
    learner = SharedAttention(
        DIMS, n_ctx=4, prompt_depth=2, n_heads=20, ff_dim=32, norm_first=norm_first
    )
    learner.eval()
    before = learner()
    with torch.no_grad():
        learner.shared_ctx[0][1] += 1.0
    after = learner()
    assert not torch.allclose(before.text[0][0], after.text[0][0])
    assert not torch.allclose(before.vision[0][0], after.vision[0][0])
    assert torch.equal(before.text[1], after.text[1])  # depths are independent


def test_output_is_split_into_text_and_vision_width() -> None:
    learner = SharedAttention(DIMS, n_ctx=3, prompt_depth=3, n_heads=32, ff_dim=16)
    prompts = learner()
    assert [t.shape for t in prompts.text] == [(3, 64)] * 3
    assert [v.shape for v in prompts.vision] == [(3, 96)] * 3
    block = learner.blocks[0]
    assert block.self_attn.batch_first and block.self_attn.num_heads == 32


def test_heads_must_divide_width() -> None:
    with pytest.raises(ValueError, match="n_heads"):
        SharedAttention(DIMS, n_ctx=4, n_heads=12)
