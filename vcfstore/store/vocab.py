"""The token vocabulary and the ``[SOS] sites [EOS] pad`` layout that models consume."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from vcfstore.errors import StoreError


@dataclass(frozen=True)
class Vocabulary:
    """Token ids of the special tokens and of the two alleles.

    The defaults are VCF-Bert's: pad 0, unk 1, sos 2, eos 3, mask 4, allele 0 -> 5, allele 1 -> 6.
    """

    pad: int = 0
    unk: int = 1
    sos: int = 2
    eos: int = 3
    mask: int = 4
    allele0: int = 5
    allele1: int = 6

    def __post_init__(self) -> None:
        if self.allele1 != self.allele0 + 1:
            raise ValueError("allele1 must equal allele0 + 1 (alleles map to allele0 + allele)")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> Vocabulary:
        return cls(**d)


def check_mask(mask: np.ndarray, n_sites: int, max_seq_len: int) -> np.ndarray:
    """Validate a token-position mask for a window of ``n_sites`` sites and return it as bool.

    A mask is a boolean array over the ``max_seq_len`` token positions; only site positions
    (1 .. n_sites) may be True.
    """
    mask = np.asarray(mask)
    if mask.shape != (max_seq_len,):
        raise StoreError(f"mask has shape {mask.shape}; expected ({max_seq_len},), one flag per token")
    mask = mask.astype(bool, copy=False)
    if mask[0] or mask[n_sites + 1 :].any():
        raise StoreError("mask sets SOS, EOS or padding positions; only site positions may be masked")
    return mask


def layout_tokens(
    alleles: np.ndarray, max_seq_len: int, vocab: Vocabulary, mask: np.ndarray | None = None
) -> np.ndarray:
    """Lay out allele rows [n, n_sites] as int64 tokens [n, max_seq_len]: ``[SOS] sites [EOS] pad``."""
    tokens = layout_site_tokens(np.add(alleles, vocab.allele0, dtype=np.int64), max_seq_len, vocab)
    if mask is not None:
        tokens[:, check_mask(mask, alleles.shape[1], max_seq_len)] = vocab.mask
    return tokens


def layout_site_tokens(site_tokens: np.ndarray, max_seq_len: int, vocab: Vocabulary) -> np.ndarray:
    """Place token ids per site [n, n_sites] in rows ``[SOS] sites [EOS] pad`` of int64 [n, max_seq_len].

    The one home of the token layout: stores, caches and the exact search's table rows use it.
    """
    n, n_sites = site_tokens.shape
    if n_sites > max_seq_len - 2:
        raise StoreError(f"{n_sites} sites do not fit in max_seq_len={max_seq_len} with SOS and EOS")
    tokens = np.full((n, max_seq_len), vocab.pad, dtype=np.int64)
    tokens[:, 0] = vocab.sos
    tokens[:, 1 : n_sites + 1] = site_tokens
    tokens[:, n_sites + 1] = vocab.eos
    return tokens


def pad_sites(values: np.ndarray, max_seq_len: int, dtype: type = np.float32) -> np.ndarray:
    """Place per-site values at token positions 1..n (0 at SOS, EOS and padding)."""
    out: np.ndarray = np.zeros(max_seq_len, dtype=dtype)
    out[1 : len(values) + 1] = values
    return out
