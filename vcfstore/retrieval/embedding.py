"""Calling an embedding layer on store windows, and identifying its weights."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import numpy as np
import torch

from vcfstore.errors import ArgumentError, VcfstoreError
from vcfstore.store.reader import PanelStore
from vcfstore.store.vocab import layout_site_tokens

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


def _forward_parameters(embedding: Embedding) -> dict[str, inspect.Parameter]:
    """The named parameters of ``embedding``'s forward (empty where Python cannot inspect it)."""
    fn = embedding.forward if isinstance(embedding, torch.nn.Module) else embedding
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return {}


def effective_kwargs(embedding: Embedding, forward_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``forward_kwargs`` less those equal to the forward's own defaults: the call they change."""
    params = _forward_parameters(embedding)
    out = {}
    for name, value in sorted((forward_kwargs or {}).items()):
        default = params[name].default if name in params else inspect.Parameter.empty
        try:
            same = type(default) is type(value) and bool(default == value)
        except (TypeError, ValueError, RuntimeError):  # values without a plain equality (tensors...)
            same = False
        if not same:
            out[name] = value
    return out


def embedding_digest(
    embedding: Embedding, weights_version: str | None = None, forward_kwargs: dict[str, Any] | None = None
) -> str:
    """Identify the weights (and the call) an index was built with: a user version, or a digest of the state dict.

    ``forward_kwargs`` that change the call (those not equal to the forward's defaults) are
    part of the identity: an index of ``layer(x, pos=True)`` is stale for ``layer(x)``.

    Raises
    ------
    VcfstoreError
        For a callable that is not a ``torch.nn.Module`` and no ``weights_version`` is given.
    """
    call = effective_kwargs(embedding, forward_kwargs)
    suffix = "" if not call else ";" + ",".join(f"{k}={v!r}" for k, v in call.items())
    if weights_version is not None:
        return f"user:{weights_version}{suffix}"
    if not isinstance(embedding, torch.nn.Module):
        raise VcfstoreError("the embedding is not a torch.nn.Module: pass weights_version= to identify its weights")
    h = hashlib.sha256()
    for name, tensor in sorted(embedding.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()[:32] + suffix


class WeightsIdentity:
    """:func:`embedding_digest` of a layer, recomputed only when one of its tensors has changed.

    A change is seen through each parameter's and buffer's identity, storage address and
    in-place version counter (bumped by optimiser steps, ``load_state_dict`` and any in-place
    update), so checking costs a pass over the tensor list, not a hash of the weights. An
    explicit ``weights_version`` is trusted as given.
    """

    def __init__(
        self, embedding: Embedding, forward_kwargs: dict[str, Any] | None = None, weights_version: str | None = None
    ) -> None:
        self.embedding, self.forward_kwargs, self.weights_version = embedding, forward_kwargs, weights_version
        self._seen: tuple[tuple[int, int, int], ...] | None = None
        self._digest: str | None = None
        self._pinned: list[torch.Tensor] = []

    def _fingerprint(self) -> tuple[tuple[int, int, int], ...]:
        if not isinstance(self.embedding, torch.nn.Module):
            return ()
        tensors = list(itertools.chain(self.embedding.parameters(), self.embedding.buffers()))
        # Holding the tensors seen last keeps their ids from being reused by replacements.
        self._pinned = tensors
        return tuple((id(t), t._version, t.data_ptr()) for t in tensors)

    def version(self) -> Hashable | None:
        """A token equal between two calls exactly while none of the layer's tensors changed.

        As cheap as :meth:`digest` is when nothing changed (no hashing of weights): for caches of
        values computed from the weights. A module's tensors are always looked at (an explicit
        ``weights_version`` only names them for index sets); a callable that is not a
        ``torch.nn.Module`` is identified by its ``weights_version``, or not at all (None: cache
        nothing).
        """
        if isinstance(self.embedding, torch.nn.Module):
            return self._fingerprint()
        return None if self.weights_version is None else ("user", self.weights_version)

    def digest(self) -> str:
        """The current digest (a cached one while no tensor of the layer has changed)."""
        if self.weights_version is not None:
            if self._digest is None:
                self._digest = embedding_digest(self.embedding, self.weights_version, self.forward_kwargs)
            return self._digest
        seen = self._fingerprint()
        if self._digest is None or seen != self._seen:
            self._digest, self._seen = embedding_digest(self.embedding, None, self.forward_kwargs), seen
        return self._digest


@torch.no_grad()
def check_pos_stated(
    embedding: Embedding, forward_kwargs: dict[str, Any] | None, store: PanelStore, device: Any = None
) -> None:
    """Refuse a layer whose forward takes ``pos`` and depends on it, unless ``forward_kwargs`` states it.

    VCF-Bert's layer adds its position term only when called with ``pos=True``; called without
    it, searches still work but every embedding silently lacks that term. One probe row (the
    store's first window, all sites masked) is embedded in eval mode with the default and with
    ``pos=True``.

    Raises
    ------
    ArgumentError
        If the two calls give different outputs and ``forward_kwargs`` has no ``pos``.
    """
    if "pos" in (forward_kwargs or {}) or "pos" not in _forward_parameters(embedding):
        return
    vocab = store.vocab
    tokens = layout_site_tokens(np.full((1, len(store.window_sites(0))), vocab.mask), store.max_seq_len, vocab)
    af = np.zeros(tokens.shape, np.float32)
    device = embedding_device(embedding, device)
    with eval_mode(embedding):
        plain = embed(embedding, tokens, af, forward_kwargs=forward_kwargs, device=device)
        with_pos = {**(forward_kwargs or {}), "pos": True}
        try:
            flagged = embed(embedding, tokens, af, forward_kwargs=with_pos, device=device)
        except (TypeError, ValueError, RuntimeError, VcfstoreError):
            return  # its pos is not a flag this probe can set; nothing to state
    if not torch.equal(plain, flagged):
        raise ArgumentError(
            "the embedding layer's forward takes `pos` and its output depends on it: state it in "
            "forward_kwargs, e.g. forward_kwargs={'pos': True} (VCF-Bert's call) or {'pos': False}"
        )


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


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run a block's torch ops on one thread, then restore the thread count.

    For the handful of rows a window's tables embed: split across threads, each op of a few
    thousand values waits for the slowest thread, and on a busy machine that is a descheduled one
    (measured on 2 cores under load: 50-140 ms for a 3-row table that one thread embeds in 5 ms).
    """
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy view (or copy from the device) of an array or tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
