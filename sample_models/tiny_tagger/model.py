"""A one-block transformer that tags every token of padded, variable-length sequences.

Sequences are right-padded with token id 0 and come with a ``mask`` that marks the real
tokens. Padded positions are masked out as attention keys, so they cannot change what the
real tokens see; their own outputs are still computed (and ignored by the loss, whose targets
are -100 there). The logits come out as ``(B, classes, T)``, the layout ``F.cross_entropy``
takes for per-token targets ``(B, T)``.
"""

import torch
import torch.nn.functional as F
from torch import nn


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention over real tokens: one ``qkv`` projection, SDPA, one output.

    Args:
        d_model: Width of the token vectors.
        heads: Number of attention heads; must divide ``d_model``.
    """

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attend from every token of ``(B, T, d_model)`` inputs to the real ones.

        ``mask`` is a bool ``(B, T)``, True at real tokens; every sequence needs at least one,
        or its softmax would be over nothing.
        """
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, d_head)
        keys = mask[:, None, None, :]  # (B, 1, 1, T): True where a key may be attended to
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class TinyTagger(nn.Module):
    """Token + learned position embeddings, one pre-LayerNorm block, a per-token linear head.

    Token id 0 is padding (``padding_idx=0``: its embedding row is zero and, since padded
    positions never reach the loss, its gradient is zero too).

    Args:
        vocab: Number of distinct token ids, padding (0) included.
        d_model: Width of the token vectors.
        heads: Number of attention heads.
        max_len: Longest sequence (number of learned positions).
        classes: Number of tags.
    """

    def __init__(
        self,
        vocab: int = 16,
        d_model: int = 16,
        heads: int = 2,
        max_len: int = 12,
        classes: int = 3,
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model, padding_idx=0)
        self.pos = nn.Embedding(max_len, d_model)
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MaskedSelfAttention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map token ids to per-token logits.

        Args:
            tokens: int64 ``(B, T)`` token ids, ``T <= max_len``, 0 at padding.
            mask: bool or 0/1 integer ``(B, T)``, True (1) at real tokens.

        Returns:
            Logits ``(B, classes, T)``.
        """
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(positions)
        x = x + self.attn(self.ln1(x), mask.bool())
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x)).transpose(1, 2)
