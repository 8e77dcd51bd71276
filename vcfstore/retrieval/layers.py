"""Reference embedding layers: VCF-Bert's position-wise embedding and a non-position-wise one.

VCF-Bert's retrieval embedding is position-wise: ``out[p] = E_tok[token_p] + PE[p] +
MLP(AF_p)``, then dropout. :class:`PositionwiseEmbedding` reproduces that shape for tests,
examples and benchmarks; :class:`ConvEmbedding` mixes neighbouring positions (a convolution),
which the exact backend must refuse.
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


class PositionwiseEmbedding(nn.Module):
    """Token + sinusoidal position + MLP(AF) embedding, then dropout (VCF-Bert's layer).

    Called as ``layer(tokens [n, L], af=af [n, L], pos=True)`` -> [n, L, d_model].
    """

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
