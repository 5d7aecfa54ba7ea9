"""Scratch tensors reused within one computation, so large intermediates are not paged in anew.

On a CPU, a freshly allocated tensor of more than a few MB comes from new pages that the
kernel must fault in and zero on first write: for element-wise work on 16-50 MB tensors
(SAM's MLP activations, attention masks, upscaled mask features) that costs as much time
as the arithmetic itself (``benchmarks/README.md``). Code that runs inside :func:`workspace` asks
:func:`buffer` for its scratch tensors by name and gets the same memory back on every
later call with that name; outside a workspace, :func:`buffer` allocates as usual.

Each thread has its own workspace; a nested ``with workspace():`` block has its own buffers
(the outer ones return when it ends), and the buffers are released when their block ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["active", "buffer", "linear_into", "workspace"]


class _State(threading.local):
    buffers: dict[str, torch.Tensor] | None = None


_STATE = _State()


@contextmanager
def workspace() -> Iterator[None]:
    """Keep scratch buffers for the duration of the block (usable as a decorator too)."""
    outer = _STATE.buffers
    _STATE.buffers = {}
    try:
        yield
    finally:
        _STATE.buffers = outer


def active() -> bool:
    """Whether this thread is inside a :func:`workspace` block."""
    return _STATE.buffers is not None


def buffer(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``like``'s dtype and device for scratch use ``name``;
    the same memory on each call.

    The caller must be done with the previous tensor of this name before asking again.
    A request for more elements than the kept tensor has replaces it.
    """
    shape = tuple(int(s) for s in shape)
    bufs = _STATE.buffers
    if bufs is None:
        return like.new_empty(shape)
    n = 1
    for s in shape:
        n *= s
    kept = bufs.get(name)
    if kept is None or kept.dtype != like.dtype or kept.device != like.device or kept.numel() < n:
        kept = bufs[name] = like.new_empty(n)
    return kept[:n].view(shape)


def linear_into(lin: torch.nn.Linear, x: torch.Tensor, name: str) -> torch.Tensor:
    """``lin(x)`` written into scratch buffer ``name``, with the kernel ``F.linear`` uses
    (same bits); plain ``lin(x)`` under autograd or autocast, which ``out=`` does not serve."""
    if torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
        return lin(x)
    flat = x.reshape(-1, x.shape[-1])
    out = buffer(name, (flat.shape[0], lin.out_features), x)
    torch.addmm(lin.bias, flat, lin.weight.t(), out=out)
    return out.view(*x.shape[:-1], lin.out_features)
