"""CRIS building blocks against independent formulations (torch's reference attention etc.)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tunevlseg.models.cris.clip_resnet import AttentionPool
from tunevlseg.models.cris.decoder import sine_positions_1d, sine_positions_2d
from tunevlseg.models.cris.projector import Projector


def _pool(grid: int = 2, width: int = 16, heads: int = 4, out: int = 8) -> AttentionPool:
    torch.manual_seed(0)
    pool = AttentionPool(grid, width, heads, out).eval()
    with torch.no_grad():
        pool.positional_embedding.normal_(std=0.3)
    return pool


def _reference_attention(pool: AttentionPool, query, key_value):  # type: ignore[no-untyped-def]
    """torch's own multi-head attention with CLIP's separate q/k/v weights (sequence-first)."""
    return F.multi_head_attention_forward(
        query.transpose(0, 1),
        key_value.transpose(0, 1),
        key_value.transpose(0, 1),
        embed_dim_to_check=query.shape[-1],
        num_heads=pool.heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        need_weights=False,
    )[0].transpose(0, 1)


def test_attention_pool_dense_map_and_pooled_vector() -> None:
    pool = _pool()
    x = torch.randn(2, 16, 3, 3)  # a 3x3 map: the 2x2 position grid must be resized
    with torch.no_grad():
        dense, vector = pool(x, pooled=True)
        dense_only, none = pool(x)
        spatial = pool._spatial_positions(3, 3)
        tokens = x.flatten(2).transpose(1, 2) + spatial
        expected = _reference_attention(pool, tokens, tokens)
        expected = F.relu(expected.transpose(1, 2).reshape(2, 8, 3, 3) + pool.connect(x))
        mean = x.flatten(2).mean(-1)[:, None] + pool.positional_embedding[:1]
        sequence = torch.cat([mean, tokens], dim=1)
        expected_vector = _reference_attention(pool, mean, sequence)[:, 0]
    assert none is None
    assert torch.allclose(dense, expected, atol=1e-5)
    assert torch.allclose(dense_only, expected, atol=1e-5)
    assert vector is not None and torch.allclose(vector, expected_vector, atol=1e-5)
    assert spatial.shape == (9, 16)
    assert torch.equal(pool._spatial_positions(2, 2), pool.positional_embedding[1:])


def test_sine_positions() -> None:
    words = sine_positions_1d(5, 8)
    assert words.shape == (5, 8)
    assert torch.allclose(words[3, 0], torch.tensor(math.sin(3.0)))
    assert torch.allclose(words[3, 1], torch.tensor(math.cos(3.0)))
    assert torch.allclose(words[3, 2], torch.tensor(math.sin(3.0 / 10000 ** (2 / 8))))
    grid = sine_positions_2d(2, 3, 8)  # rows 2, columns 3, channels: 4 for x then 4 for y
    assert grid.shape == (6, 8)
    row, column = 1, 2
    token = grid[row * 3 + column]
    assert torch.allclose(token[0], torch.tensor(math.sin(column)))
    assert torch.allclose(token[1], torch.tensor(math.cos(column)))
    assert torch.allclose(token[4], torch.tensor(math.sin(row)))
    assert torch.allclose(token[5], torch.tensor(math.cos(row)))


def test_projector_applies_each_sentence_kernel_to_its_own_image() -> None:
    torch.manual_seed(0)
    projector = Projector(sentence_dim=6, channels=4, kernel_size=3).eval()
    x = torch.randn(3, 8, 5, 5)
    sentence = torch.randn(3, 6)
    with torch.no_grad():
        logits, features = projector(x, sentence)
        generated = projector.txt(sentence)
        for b in range(3):
            weight = generated[b, :-1].reshape(1, 4, 3, 3)
            one = F.conv2d(features[b : b + 1], weight, generated[b, -1:], padding=1)
            assert torch.allclose(logits[b : b + 1], one, atol=1e-5)
    assert logits.shape == (3, 1, 20, 20) and features.shape == (3, 4, 20, 20)
