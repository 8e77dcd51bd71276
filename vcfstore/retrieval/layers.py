"""Reference embedding layers: VCF-Bert's position-wise embedding and a non-position-wise one.

VCF-Bert's retrieval embedding is position-wise: ``out[p] = E_tok[token_p] + PE[p] +
AF(af_p)``, then dropout. :class:`VcfBertEmbedding` is that layer as VCF-Bert's public code
defines it (its initialisation included, so distances have their real scale);
:class:`PositionwiseEmbedding` is a smaller variant of the same shape for tests, examples and
benchmarks; :class:`ConvEmbedding` mixes neighbouring positions (a convolution), which the exact
backend must refuse.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """The Transformer's sinusoidal position table [max_len, d_model]."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div[: d_model // 2])
    return pe


class AlleleFrequencyEmbedding(nn.Module):
    """VCF-Bert's AF embedding: Fourier features of the AF on a learnable log-spaced basis, then an MLP.

    ``af [..] -> Linear(2 n_basis, D) -> LayerNorm -> GELU -> Linear(D, D)`` of the features
    ``[sin(2 pi af f) | cos(2 pi af f)]`` with ``f = logspace(0, 2, n_basis)`` (1 to 100); both
    Linear layers have Xavier-normal weights and zero biases.
    """

    def __init__(self, d_model: int, n_basis: int = 32) -> None:
        super().__init__()
        self.basis_freqs = nn.Parameter(torch.logspace(0, math.log10(100.0), n_basis))
        self.projection = nn.Sequential(
            nn.Linear(2 * n_basis, d_model), nn.LayerNorm(d_model), nn.GELU(), nn.Linear(d_model, d_model)
        )
        for linear in (self.projection[0], self.projection[3]):
            assert isinstance(linear, nn.Linear)
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, af: torch.Tensor) -> torch.Tensor:
        x = af.unsqueeze(-1) * self.basis_freqs
        x = 2 * math.pi * x
        return self.projection(torch.cat([torch.sin(x), torch.cos(x)], dim=-1))


class VcfBertEmbedding(nn.Module):
    """VCF-Bert's retrieval embedding (``BERTEmbedding``): token + sinusoidal position + AF, then dropout.

    ``nn.Embedding(vocab_size, D, padding_idx=0)`` (N(0, 1) init, the padding row zero), a fixed
    sinusoidal table of ``max_len`` positions (a buffer) and :class:`AlleleFrequencyEmbedding`.
    Called as VCF-Bert calls it, ``layer(tokens [n, L], af=af [n, L], pos=True)`` -> [n, L, D]:
    the position term is added only when ``pos`` is true (the default is false, as upstream), so
    a :class:`~vcfstore.retrieval.Retriever` over this layer needs ``forward_kwargs={"pos": True}``.

    Parameters
    ----------
    d_model : int
        Embedding width D (even).
    vocab_size : int
        Token ids 0 .. vocab_size - 1 (9 in VCF-Bert's retrieval tests: 5 specials, 2 alleles, 2 more).
    max_len : int
        Rows of the position table (VCF-Bert: 1030).
    dropout : float
        Dropout after the sum (off in eval mode, where retrieval runs).
    """

    pe: torch.Tensor  # the position table buffer

    def __init__(self, d_model: int = 192, vocab_size: int = 9, max_len: int = 1030, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed_size = d_model  # VCF-Bert's datasets read this name
        self.tokenizer = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.register_buffer("pe", sinusoidal_positions(max_len, d_model))
        self.af_embedding = AlleleFrequencyEmbedding(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, af: torch.Tensor | None = None, pos: bool = False) -> torch.Tensor:
        x = self.tokenizer(tokens)
        if pos:
            x = x + self.pe[: tokens.shape[-1]]
        if af is not None:
            x = x + self.af_embedding(af.to(x.dtype))
        return self.dropout(x)


class PositionwiseEmbedding(nn.Module):
    """Token + sinusoidal position + MLP(AF) embedding, then dropout (VCF-Bert's layer).

    Called as ``layer(tokens [n, L], af=af [n, L], pos=True)`` -> [n, L, d_model].
    """

    pe: torch.Tensor  # the position table buffer

    def __init__(self, d_model: int = 192, vocab_size: int = 7, max_len: int = 1030, dropout: float = 0.1):
        super().__init__()
        self.token = nn.Embedding(vocab_size, d_model)
        self.af_mlp = nn.Sequential(nn.Linear(1, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.register_buffer("pe", sinusoidal_positions(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, af: torch.Tensor | None = None, pos: bool = True) -> torch.Tensor:
        x = self.token(tokens)
        if pos:
            x = x + self.pe[: tokens.shape[-1]]
        if af is not None:
            x = x + self.af_mlp(af.unsqueeze(-1).to(x.dtype))
        return self.dropout(x)


class ConvEmbedding(PositionwiseEmbedding):
    """The same embedding followed by a 1-D convolution across positions: not position-wise."""

    def __init__(self, d_model: int = 192, **kwargs: float):
        super().__init__(d_model, **kwargs)  # type: ignore[arg-type]
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=3, padding=1)

    def forward(self, tokens: torch.Tensor, af: torch.Tensor | None = None, pos: bool = True) -> torch.Tensor:
        x = super().forward(tokens, af, pos)
        return self.conv(x.transpose(1, 2)).transpose(1, 2)
