"""Table composition: the retrieved references' complete embeddings without running the layer on them.

For a position-wise layer, position ``p`` of a complete reference row embeds to one of two
vectors, ``e_p(allele 0)`` or ``e_p(allele 1)`` (SOS, EOS and padding to a fixed vector that
both share), under the window's allele frequencies. So the embeddings of every retrieved row
of a window are a gather from the window's table ``[2, L, D]``, itself the embedding of two
rows (all allele 0, all allele 1) computed once per window per batch, with gradients: the
backward sums the gathered rows' gradients into the table (one pass over them) and runs the
layer's backward on two rows instead of K x B x 2. The forward values are the layer's own
(bitwise on kernels that do not depend on the batch shape, as torch's CPU kernels), the
gradients equal direct encoding's up to the order of float32 sums, and autograd keeps only the
rows' alleles (a byte per position) instead of the layer's activations for every row.

Dropout. VCF-Bert's layer ends in dropout, active in training. The table is embedded in eval
mode and the layer's dropout applied to the composed rows, which has the distribution of direct
encoding only when dropout is the layer's last operation. That is verified once per layer (in
train mode every output element must be 0 or its eval value / (1 - p), dropped at rate p, and
never whole positions at a time) or declared by the user (``final_dropout=p``); a layer that
fails the check, or is not position-wise, keeps direct encoding.

Memory. The composed rows are written into CPU buffers (one per haplotype) that the next batch
reuses once nothing else refers to them (their storage's reference count says so), so a batch
does not fault in hundreds of MB of fresh pages (measured: 180 ms for 304 MB, against 20 ms to
write pages already mapped); anything still holding the previous batch's embeddings (a graph not
yet backpropagated, a kept reference) makes the next batch allocate anew. The buffers stay
allocated between batches: the size of one batch's retrieved embeddings.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vcfstore.errors import ArgumentError, NotPositionwiseError
from vcfstore.retrieval.embedding import Embedding, embed, eval_mode, single_threaded
from vcfstore.retrieval.exact_search import allele_rows, check_positionwise, window_tables

COMPOSE_MODES = ("auto", "always", "never")
RowGroup = tuple[np.ndarray, np.ndarray]  # composed rows: (window slot [N], alleles [N, L] uint8)
# Train-mode check: outputs kept by dropout equal eval value x 1 / (1 - p) to float32 rounding of the product.
SCALE_RTOL = 1e-5


@dataclass(frozen=True)
class ComposePlan:
    """How the retrieved rows are embedded for the layer's current mode.

    ``compose``: from the window tables, else by running the layer on every row (direct);
    ``dropout``: the rate applied to composed rows (0 in eval mode or without dropout);
    ``reason``: why, in words (shown by :attr:`Retriever.compose_plan <vcfstore.retrieval.Retriever>`).
    """

    compose: bool
    dropout: float
    reason: str


@contextlib.contextmanager
def saved_tensor_bytes(exclude: Any = ()) -> Iterator[list[int]]:
    """Count the bytes autograd saves for backward in the block: ``with saved_tensor_bytes(layer) as n:``.

    ``n[0]`` is the total over distinct storages, leaving out those of ``exclude``'s parameters and
    buffers (a module; the weights are held by the model anyway).
    """
    skip = set()
    if isinstance(exclude, nn.Module):
        skip = {t.untyped_storage().data_ptr() for t in [*exclude.parameters(), *exclude.buffers()]}
    seen: set[int] = set()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr not in seen:
            seen.add(ptr)
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def _rng_kept(device: torch.device | None) -> contextlib.AbstractContextManager[None]:
    """Restore torch's random state after the block (CPU, and the current CUDA device where in use)."""
    cuda = (device is not None and device.type == "cuda") or (torch.cuda.is_available() and torch.cuda.is_initialized())
    return torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else [])


def final_dropout_rate(layer: Embedding, probe: Callable[[], torch.Tensor]) -> tuple[float | None, str]:
    """``(p, how)`` if the layer in train mode gives its eval output then dropout(p); ``(None, why)`` if not.

    ``probe()`` embeds a few rows. Compares one train-mode call (the RNG state is restored after
    it) with an eval-mode call: equal outputs give p = 0; otherwise every output must be 0 or
    its eval value times one scale ``s = 1 / (1 - p)``, zeros at a rate consistent with p, and no
    whole position dropped at once (channel-wise dropout). p is the layer's ``nn.Dropout`` rate
    when one matches ``s``, else ``1 - 1 / s``.
    """
    with torch.no_grad():
        if not isinstance(layer, nn.Module):
            return (0.0, "deterministic") if torch.equal(probe(), probe()) else (None, "a stochastic callable")
        with _rng_kept(None):
            was = layer.training
            layer.train()
            try:
                train = probe().double()
            finally:
                layer.train(was)
        with eval_mode(layer):
            ev = probe().double()
    if torch.equal(train, ev):
        return 0.0, "train and eval outputs are equal"
    kept, live = train != 0, ev != 0
    if bool((kept & ~live).any()):
        return None, "train mode changes outputs that are 0 in eval mode"
    ratio = train[kept] / ev[kept]
    s = float(ratio.median()) if ratio.numel() else math.inf
    if not (1 < s < math.inf) or not bool(torch.allclose(ratio, torch.full_like(ratio, s), rtol=SCALE_RTOL, atol=0)):
        return None, "train-mode outputs are not the eval outputs scaled by one factor"
    p_est = 1 - 1 / s
    n = int(live.sum())
    dropped = int((~kept & live).sum()) / n
    if abs(dropped - p_est) > 6 * math.sqrt(p_est * (1 - p_est) / n) + 1 / n:
        return None, f"zeros at rate {dropped:.3f}, not the {p_est:.3f} the scale implies"
    whole = bool(((~kept) | ~live).all(-1)[live.any(-1)].any())
    if whole and p_est ** train.shape[-1] < 1e-6:
        return None, "dropout removes whole positions (channel-wise), not single values"
    rates = [m.p for m in layer.modules() if type(m) is nn.Dropout and abs(1 / (1 - m.p) - s) <= SCALE_RTOL * s]
    if rates:
        return float(rates[0]), f"verified: dropout p={rates[0]:g} is the last operation"
    return p_est, f"verified: dropout (p={p_est:.6g} from the scale) is the last operation"


def _table_index(alleles: torch.Tensor, slots: torch.Tensor, L: int) -> torch.Tensor:
    """Each row position's row in the tables viewed as [n_win * 2 * L, D]: int64 [N * L]."""
    positions = torch.arange(L, device=alleles.device)
    return ((slots[:, None] * 2 + alleles.long()) * L + positions).reshape(-1)


DROPOUT_SLICE = 1 << 18  # uniform draws per slice of in-place dropout: a buffer that stays in cache


def _dropout_(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout on ``x`` in place (values kept where a uniform draw is below ``1 - p``, scaled by ``1 / (1 - p)``).

    Returns the kept-values mask, a byte a value (torch's CPU dropout keeps a float a value). The
    draws come from torch's generator; on the CPU in slices, on one thread: the draws are serial
    anyway, and a parallel op per slice waits for every thread.
    """
    flat = x.view(-1)
    if x.device.type != "cpu":
        keep = torch.rand_like(flat) < 1 - p
        flat.mul_(keep).mul_(1 / (1 - p))
        return keep
    keep = torch.empty(flat.shape, dtype=torch.bool)
    draws = torch.empty(min(DROPOUT_SLICE, flat.numel()), dtype=x.dtype)
    with single_threaded():
        for s in range(0, flat.numel(), draws.numel()):
            e = min(s + draws.numel(), flat.numel())
            torch.lt(draws[: e - s].uniform_(), 1 - p, out=keep[s:e])
            flat[s:e].mul_(keep[s:e]).mul_(1 / (1 - p))
    return keep


class _ComposeRows(torch.autograd.Function):
    """``out[n, p] = tables[slot[n], allele[n, p], p]``, then dropout at rate ``p`` in place.

    The backward adds each row position's gradient (masked and scaled as dropout was) to its
    table row: one pass over the gradients.
    """

    @staticmethod
    def forward(
        ctx: Any, tables: torch.Tensor, alleles: torch.Tensor, slots: torch.Tensor, out: torch.Tensor, p: float
    ) -> torch.Tensor:
        D = tables.shape[-1]
        torch.index_select(tables.reshape(-1, D), 0, _table_index(alleles, slots, tables.shape[2]), out=out.view(-1, D))
        keep = _dropout_(out, p) if p else None
        ctx.shape, ctx.scale = tables.shape, 1 / (1 - p)
        ctx.mark_dirty(out)
        ctx.save_for_backward(alleles, slots, keep)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        alleles, slots, keep = ctx.saved_tensors
        L, D = ctx.shape[2:]
        rows = grad.reshape(-1, D)
        if keep is not None:
            rows = torch.where(keep.view(-1, D), rows, 0.0)
        grad_tables = grad.new_zeros(ctx.shape)
        # index_add_: a batched product per position measured 2-50x slower on a busy 2-core machine
        grad_tables.view(-1, D).index_add_(0, _table_index(alleles, slots, L), rows, alpha=ctx.scale)
        return grad_tables, None, None, None, None


def _storage_refs(t: torch.Tensor) -> tuple[int, int]:
    """(C++ references, Python references) of ``t``'s storage, as seen from inside this call."""
    storage = t.untyped_storage()
    return torch._C._storage_Use_Count(storage._cdata), sys.getrefcount(storage)


class _ReusedBuffer:
    """One CPU buffer for composed rows, handed out again once nothing else refers to its storage.

    "Nothing else" is checked against the references a lone tensor's storage has (measured on a
    scratch tensor the first time): any tensor, view, autograd graph or storage object sharing
    the buffer adds one.
    """

    _alone: tuple[int, int] | None = None

    def __init__(self) -> None:
        self._buf: torch.Tensor | None = None

    @staticmethod
    def _reuse_supported(device: torch.device) -> bool:
        if device.type != "cpu" or not hasattr(torch._C, "_storage_Use_Count"):
            return False
        if _ReusedBuffer._alone is None:
            _ReusedBuffer._alone = _storage_refs(torch.empty(1))
        return True

    def _free(self, numel: int, dtype: torch.dtype) -> bool:
        b = self._buf
        if b is None or b.dtype != dtype or b.numel() < numel:
            return False
        return _storage_refs(b) == _ReusedBuffer._alone

    def fresh_bytes(self, numel: int, dtype: torch.dtype, device: torch.device) -> int:
        """Bytes :meth:`take` would allocate now (0 when the buffer can be reused)."""
        if self._reuse_supported(device) and self._free(numel, dtype):
            return 0
        return numel * dtype.itemsize

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        numel = math.prod(shape)
        if not self._reuse_supported(device):
            return torch.empty(shape, dtype=dtype, device=device)
        if not self._free(numel, dtype):
            self._buf = None  # whoever still holds the old one keeps it; this one is dropped first
            self._buf = torch.empty(numel, dtype=dtype, device=device)
        assert self._buf is not None
        strides = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
        return torch.empty(0, dtype=dtype, device=device).set_(self._buf.untyped_storage(), 0, shape, strides)


class Composer:
    """Embeds retrieved complete reference rows by table composition, or directly where it cannot.

    Parameters
    ----------
    layer : torch.nn.Module or callable
    forward_kwargs : dict, optional
    device : torch.device
    mode : {"auto", "always", "never"}
        ``auto`` composes when the layer is position-wise and (in train mode) its train-mode
        output is its eval output followed by dropout (verified, or declared); ``always``
        raises where that does not hold; ``never`` always encodes directly.
    final_dropout : float, optional
        Declares that the layer in train mode is its eval mode followed by dropout at this rate
        (skips the check).
    """

    def __init__(
        self,
        layer: Embedding,
        forward_kwargs: dict[str, Any] | None,
        device: torch.device,
        *,
        mode: str = "auto",
        final_dropout: float | None = None,
    ) -> None:
        if mode not in COMPOSE_MODES:
            raise ArgumentError(f"compose must be one of {COMPOSE_MODES}, not {mode!r}")
        if final_dropout is not None and not 0 <= final_dropout < 1:
            raise ArgumentError(f"final_dropout must be a rate in [0, 1), not {final_dropout!r}")
        self.layer, self.forward_kwargs, self.device = layer, forward_kwargs, device
        self.mode, self.final_dropout = mode, final_dropout
        self._positionwise: str | None = None  # "" once verified, else why not
        self._plans: dict[bool, ComposePlan] = {}
        self._row_bytes: dict[bool, tuple[float, float]] = {}
        self.buffers: list[_ReusedBuffer] = []  # one per group of composed rows (the two haplotypes)
        self.dim: int | None = None  # D, known from the first table

    @property
    def training(self) -> bool:
        return bool(getattr(self.layer, "training", False))

    def current_plan(self) -> ComposePlan | None:
        """The plan for the layer's current mode, None until :meth:`plan` decided it."""
        return self._plans.get(self.training)

    def table(self, n_sites: int, max_seq_len: int, vocab: Any, af: np.ndarray) -> torch.Tensor:
        """The window's rows of :func:`~vcfstore.retrieval.exact_search.allele_rows` embedded in eval mode: [2, L, D].

        With gradients when grad mode is on: the composed rows' gradients flow through it.
        """
        with eval_mode(self.layer), single_threaded():
            table = self._embed(allele_rows(n_sites, max_seq_len, vocab), af)
        self.dim = int(table.shape[-1])
        return table

    def _embed(self, tokens: np.ndarray, af: np.ndarray) -> torch.Tensor:
        af_rows = np.broadcast_to(af, tokens.shape)
        return embed(self.layer, tokens, af_rows, forward_kwargs=self.forward_kwargs, device=self.device)

    def plan(self, n_sites: int, max_seq_len: int, vocab: Any, af: np.ndarray) -> ComposePlan:
        """Compose or encode directly, for the layer's current mode (decided once per mode).

        The checks embed a few rows of the window these arguments describe.
        """
        training = self.training
        if training in self._plans:
            return self._plans[training]
        plan = self._decide(n_sites, max_seq_len, vocab, af, training)
        if self.mode == "always" and not plan.compose:
            raise NotPositionwiseError(f"compose='always', but the retrieved rows cannot be composed: {plan.reason}")
        self._plans[training] = plan
        return plan

    def _decide(self, n_sites: int, max_seq_len: int, vocab: Any, af: np.ndarray, training: bool) -> ComposePlan:
        if self.mode == "never":
            return ComposePlan(False, 0.0, "compose='never'")
        if self._positionwise is None:
            try:
                args = (max_seq_len, vocab, af)
                tables = window_tables(self.layer, n_sites, *args, None, self.forward_kwargs, self.device)
                check_positionwise(self.layer, tables, *args, self.forward_kwargs, self.device)
                self._positionwise = ""
            except NotPositionwiseError:
                self._positionwise = "the layer is not position-wise"
        if self._positionwise:
            return ComposePlan(False, 0.0, self._positionwise)
        if not training:
            return ComposePlan(True, 0.0, "eval mode: no dropout")
        if self.final_dropout is not None:
            return ComposePlan(True, self.final_dropout, f"declared: dropout p={self.final_dropout:g} is last")
        rows = allele_rows(n_sites, max_seq_len, vocab)
        with single_threaded():
            p, how = final_dropout_rate(self.layer, lambda: self._embed(rows, af))
        if p is None:
            return ComposePlan(False, 0.0, f"train mode is not eval mode plus a final dropout ({how})")
        return ComposePlan(True, p, how)

    def compose(
        self,
        tables: list[torch.Tensor],
        groups: list[RowGroup],
        shape: tuple[int, ...],
        dropout: float,
    ) -> list[torch.Tensor]:
        """One tensor of ``shape`` ([..., L, D]) per group of rows, from the windows' :meth:`table` results.

        A group is ``(slots [N], alleles [N, L])``: each row's window (an index into ``tables``)
        and its allele (uint8) at each position, 0 at SOS, EOS and padding. The groups are
        separate tensors (not views of one), so each one's gradient goes straight to the tables.
        ``dropout`` is applied in place (train mode).
        """
        # allele 0 and allele 1 rows of every window: [n_win, 2, L, D]
        pairs = tables[0][None] if len(tables) == 1 else torch.stack(tables)
        L, D = pairs.shape[2:]
        while len(self.buffers) < len(groups):
            self.buffers.append(_ReusedBuffer())
        out = []
        for buffer, (slots, alleles) in zip(self.buffers, groups, strict=False):
            rows = _ComposeRows.apply(
                pairs,
                torch.as_tensor(alleles, device=pairs.device).to(torch.uint8),
                torch.as_tensor(slots, device=pairs.device).to(torch.long),
                buffer.take((len(slots), L, D), pairs.dtype, pairs.device),
                dropout,
            )
            out.append(rows.view(shape))
        return out

    def output_bytes(self, group_rows: list[int], L: int, D: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes the next :meth:`compose` of groups of these many rows allocates (reused buffers: 0)."""
        buffers = self.buffers + [_ReusedBuffer()] * max(0, len(group_rows) - len(self.buffers))
        return sum(b.fresh_bytes(n * L * D, dtype, self.device) for b, n in zip(buffers, group_rows, strict=False))

    @staticmethod
    def graph_bytes(n_rows: int, L: int, D: int, dropout: float) -> int:
        """What autograd keeps for composed rows: alleles (a byte a position), slots, dropout's byte a value."""
        return n_rows * L + n_rows * 8 + (n_rows * L * D if dropout else 0)

    def width(self, tokens: np.ndarray, af: np.ndarray) -> int:
        """D: known from the first :meth:`table`, else from embedding one of ``tokens`` (once)."""
        if self.dim is None:
            with torch.no_grad(), single_threaded():
                self.dim = int(self._embed(tokens[:1], af).shape[-1])
        return self.dim

    def direct_graph_bytes(self, n_rows: int, tokens: np.ndarray, af: np.ndarray) -> int:
        """Estimated bytes autograd keeps when ``n_rows`` rows are encoded directly (measured once per mode).

        Two probes (one row and three rows of ``tokens``) give the bytes per row and the fixed part.
        """
        training = self.training
        if training not in self._row_bytes:
            sizes = []
            for n in (1, 3):
                rows = np.repeat(tokens[:1], n, axis=0)
                with _rng_kept(self.device), saved_tensor_bytes(self.layer) as saved:
                    self._embed(rows, af)
                sizes.append(saved[0])
            per_row = (sizes[1] - sizes[0]) / 2
            self._row_bytes[training] = (per_row, sizes[0] - per_row)
        per_row, fixed = self._row_bytes[training]
        return max(0, int(per_row * n_rows + fixed))
