"""Scratch buffers: the same memory within a workspace, fresh memory outside one."""

from __future__ import annotations

import torch

from samlib.workspace import active, buffer, workspace


def test_buffer_reused_inside_workspace_only():
    like = torch.zeros(1)
    a = buffer("x", (4, 5), like)
    b = buffer("x", (4, 5), like)
    assert a.data_ptr() != b.data_ptr()  # no workspace: plain allocations
    assert not active()
    with workspace():
        assert active()
        a = buffer("x", (4, 5), like)
        b = buffer("x", (2, 10), like)  # same name, same number of elements
        c = buffer("x", (3,), like)  # fewer: a view of the kept memory
        d = buffer("y", (4, 5), like)
        assert a.data_ptr() == b.data_ptr() == c.data_ptr() != d.data_ptr()
        assert b.shape == (2, 10) and c.shape == (3,)
        with workspace():  # a nested block has its own buffers
            assert buffer("x", (4, 5), like).data_ptr() != a.data_ptr()
        assert buffer("x", (4, 5), like).data_ptr() == a.data_ptr()
        e = buffer("x", (50,), like)  # more elements: a new, larger buffer
        assert e.numel() == 50 and buffer("x", (4, 5), like).data_ptr() == e.data_ptr()
        f = buffer("x", (4, 5), torch.zeros(1, dtype=torch.float64))
        assert f.dtype == torch.float64
    assert not active()
    assert buffer("x", (50,), like).data_ptr() != e.data_ptr()
