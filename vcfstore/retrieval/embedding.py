"""Calling an embedding layer on store windows, and identifying its weights."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from vcfstore.errors import VcfstoreError

Embedding = Callable[..., torch.Tensor]


def embedding_device(embedding: Embedding, device: str | torch.device | None = None) -> torch.device:
    """Where to run ``embedding``: the given device, else where its parameters live, else CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(embedding, torch.nn.Module):
        for p in embedding.parameters():
            return p.device
    return torch.device("cpu")


def embed(
    embedding: Embedding,
    tokens: np.ndarray | torch.Tensor,
    af: np.ndarray | torch.Tensor,
    *,
    forward_kwargs: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``embedding(tokens, af=af, **forward_kwargs)`` on ``device``, checked to be [n, L, D]."""
    device = device or embedding_device(embedding)
    t = torch.as_tensor(tokens, device=device, dtype=torch.long)
    a = torch.as_tensor(np.array(af, dtype=np.float32) if isinstance(af, np.ndarray) else af, device=device)
    a = a.float()
    if a.ndim == 1:
        a = a.expand(t.shape[0], -1)
    out = embedding(t, af=a, **(forward_kwargs or {}))
    if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[:2] != t.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise VcfstoreError(f"the embedding returned {shape}; expected [n, L, D] for tokens of shape {tuple(t.shape)}")
    return out


def embedding_digest(embedding: Embedding, weights_version: str | None = None) -> str:
    """Identify the weights an index was built with: a user version, or a digest of the state dict.

    Raises
    ------
    VcfstoreError
        For a callable that is not a ``torch.nn.Module`` and no ``weights_version`` is given.
    """
    if weights_version is not None:
        return f"user:{weights_version}"
    if not isinstance(embedding, torch.nn.Module):
        raise VcfstoreError("the embedding is not a torch.nn.Module: pass weights_version= to identify its weights")
    h = hashlib.sha256()
    for name, tensor in sorted(embedding.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()[:32]


@contextlib.contextmanager
def eval_mode(layer: Embedding) -> Iterator[None]:
    """Put a module in eval mode (no dropout) for a block, then restore its mode."""
    module = layer if isinstance(layer, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        yield
    finally:
        if module is not None and was_training:
            module.train()


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy view (or copy from the device) of an array or tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
