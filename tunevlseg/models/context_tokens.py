"""Text tokenization with room for learned context, shared by the prompted models.

A text learner's context replaces the token embeddings of ``n_ctx`` placeholder tokens put right
after BOS (:meth:`ContextTokenizerMixin.tokenize`); which token serves as placeholder does not
matter, as its embedding is never used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["PLACEHOLDER", "ContextTokenizerMixin", "placeholder_token_id"]

PLACEHOLDER = "x"


def placeholder_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of :data:`PLACEHOLDER` (its first token) in ``tokenizer``'s vocabulary."""
    return int(tokenizer(PLACEHOLDER, add_special_tokens=False)["input_ids"][0])


class ContextTokenizerMixin:
    """``tokenize`` for a prompted model: CLIP tokens with ``n_ctx`` placeholders after BOS.

    The model sets ``tokenizer`` (a CLIP tokenizer, which adds BOS and EOS), ``n_text_ctx``
    (placeholders to insert, 0 for learners that do not prompt text), ``_placeholder_id``
    (:func:`placeholder_token_id`) and ``_max_length`` (its text encoder's positions).
    """

    tokenizer: PreTrainedTokenizerBase
    n_text_ctx: int
    _placeholder_id: int
    _max_length: int

    def tokenize(self, prompts: list[str]) -> dict[str, Tensor]:
        """Tokenize, insert the ``n_ctx`` placeholders after BOS, truncate and pad.

        Returns:
            ``input_ids`` and ``attention_mask``, ``(B, L)`` long tensors, padded (with the pad
            token, or EOS if the tokenizer has none) to the longest sequence. Prompts longer than
            the text encoder's positions (77 for CLIPSeg, ``word_length`` for CRIS) are
            truncated, keeping EOS last.
        """
        tokenizer = self.tokenizer
        encoded = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        room = self._max_length - 2 - self.n_text_ctx
        sequences = [
            [bos, *[self._placeholder_id] * self.n_text_ctx, *ids[1:-1][:room], eos]
            for ids in encoded
        ]
        length = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            attention_mask[row, : len(sequence)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
