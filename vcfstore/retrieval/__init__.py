"""Retrieval: calling embedding layers, the exact token-space search, the retriever, the PyTorch data path.

Importing this package imports torch (not FAISS).
"""

from __future__ import annotations

from vcfstore.errors import NotPositionwiseError
from vcfstore.retrieval.embedding import (
    Embedding,
    WeightsIdentity,
    embed,
    embedding_device,
    embedding_digest,
    eval_mode,
    to_numpy,
)
from vcfstore.retrieval.exact_search import ExactSearcher, PackedAlleles, top_k
from vcfstore.retrieval.layers import ConvEmbedding, PositionwiseEmbedding, VcfBertEmbedding
from vcfstore.retrieval.retriever import Retriever
from vcfstore.retrieval.torch_data import IGNORE_INDEX, TargetDataset, WindowGroupedBatchSampler, collate

__all__ = [
    "IGNORE_INDEX",
    "ConvEmbedding",
    "Embedding",
    "ExactSearcher",
    "NotPositionwiseError",
    "PackedAlleles",
    "PositionwiseEmbedding",
    "Retriever",
    "TargetDataset",
    "VcfBertEmbedding",
    "WeightsIdentity",
    "WindowGroupedBatchSampler",
    "collate",
    "embed",
    "embedding_device",
    "embedding_digest",
    "eval_mode",
    "to_numpy",
    "top_k",
]
