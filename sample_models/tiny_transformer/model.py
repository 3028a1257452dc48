"""A one-block transformer encoder that classifies short token sequences.

Attention is written out with ``torch.nn.functional.scaled_dot_product_attention`` (rather than
``nn.MultiheadAttention``) so that hesscli exercises the fused attention op, including its
second derivatives.
"""

import torch
import torch.nn.functional as F
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention: one ``qkv`` projection, SDPA, one output projection.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the ``T`` tokens of ``(B, T, d_model)`` inputs (no mask)."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, d_head)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class TinyTransformer(nn.Module):
    """Token + learned position embeddings, one pre-LayerNorm block, mean-pool, linear head.

    Args:
        vocab: Number of distinct token ids.
        d_model: Width of the token vectors.
        heads: Number of attention heads.
        seq_len: Sequence length (number of learned positions).
        classes: Number of output classes.
    """

    def __init__(
        self,
        vocab: int = 12,
        d_model: int = 16,
        heads: int = 2,
        seq_len: int = 10,
        classes: int = 2,
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map ``(B, T)`` int64 token ids (``T <= seq_len``) to ``(B, classes)`` logits."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(positions)
        x = x + self.attn(self.ln1(x))
        x = x + self.mlp(self.ln2(x))
        return self.head(self.ln_f(x).mean(dim=1))
