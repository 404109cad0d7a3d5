"""Cached-memory readout: every token reads the cached linear-memory states, weighted by its gates.

    o[b, t, h, :] = sum_i gates[b, t, h, i] * S[b, h, i]^T q[b, t, h, :]     (cached part of Eq. 9 / 17)

q: [B, T, H, K], S: [B, H, N, K, V], gates: [B, T, H, N] -> o: [B, T, H, V].

Three forms of the same map:
  cached_readout_reference  the definition: materialises every read [B, T, H, N, V]
  cached_readout            block by block in torch (or Triton), never holding more than one
                            block's reads; its backward recomputes block by block too
  sparse_readout            SSC: reads only the selected states, grouped so each is one matmul
"""
import torch


def cached_readout_reference(q, S, gates):
    reads = torch.einsum("bthk,bhnkv->bthnv", q, S)                     # [B, T, H, N, V]
    return (gates[..., None] * reads).sum(3)


def _blocks(q, S, blocks):
    """Token blocks (start, end, n): tokens start:end read states [:n]. None: one block, all N."""
    return [(0, q.shape[1], S.shape[2])] if blocks is None else blocks


class CachedReadout(torch.autograd.Function):
    """Blocked forward/backward. The gradient of this trilinear map is three einsums:
    dq = sum_i g_i S_i do,  dg_i = q^T S_i do,  dS_i = sum_t g_ti q_t do_t^T."""

    @staticmethod
    def forward(ctx, q, S, gates, blocks, backend):
        ctx.save_for_backward(q, S, gates)
        ctx.blocks = blocks
        if backend == "triton":
            from .triton_readout import cached_readout_triton
            return cached_readout_triton(q, S, gates)
        o = q.new_zeros(*q.shape[:-1], S.shape[-1])                         # [B, T, H, V]
        for a, b, n in blocks:
            if n:
                o[:, a:b] = torch.einsum("bthn,bthk,bhnkv->bthv", gates[:, a:b, :, :n], q[:, a:b], S[:, :, :n])
        return o

    @staticmethod
    def backward(ctx, do):
        q, S, gates = ctx.saved_tensors
        dq, dS, dg = torch.zeros_like(q), torch.zeros_like(S), torch.zeros_like(gates)
        for a, b, n in ctx.blocks:
            if not n:
                continue
            g, qb, Sn = gates[:, a:b, :, :n], q[:, a:b], S[:, :, :n]
            Sdo = torch.einsum("bthv,bhnkv->bthnk", do[:, a:b], Sn)         # [B, C, H, n, K]
            dq[:, a:b] = torch.einsum("bthn,bthnk->bthk", g, Sdo)
            dg[:, a:b, :, :n] = torch.einsum("bthnk,bthk->bthn", Sdo, qb)
            dS[:, :, :n] += torch.einsum("bthn,bthk,bthv->bhnkv", g, qb, do[:, a:b])
        return dq, dS, dg, None, None


def cached_readout(q, S, gates, blocks=None, backend="torch"):
    """o = sum_i gates_i S_i^T q, block by block (see module docstring). backend: 'torch' | 'triton'."""
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch' or 'triton', got {backend!r}")
    return CachedReadout.apply(q, S, gates, _blocks(q, S, blocks), backend)


def sparse_readout(q, S, gates, selected):
    """SSC readout (Eq. 17): o = sum_j gates[..., j] S[selected[..., j]]^T q, reading only selected states.

    gates, selected: [B, T, H, k] (selected = -1 where a slot is empty). Every (token, slot) pair
    becomes one row; rows are grouped by the state they read and each group is one matmul."""
    B, T, H, K = q.shape
    N, V = S.shape[2], S.shape[-1]
    o = q.new_zeros(B, T, H, V)
    b, t, h, j = (selected >= 0).nonzero(as_tuple=True)                     # one row per pair
    if len(b) == 0:
        return o
    sid = (b * H + h) * N + selected[b, t, h, j]                            # state id of each row
    sid, order = sid.sort(stable=True)
    b, t, h, j = b[order], t[order], h[order], j[order]
    counts = torch.bincount(sid, minlength=B * H * N)
    rank = torch.arange(len(sid), device=q.device) - (counts.cumsum(0) - counts)[sid]  # row within group
    rows = q.new_zeros(B * H * N, int(counts.max()), K)                     # [B*H*N, R, K]
    rows[sid, rank] = gates[b, t, h, j, None] * q[b, t, h]
    reads = torch.bmm(rows, S.reshape(B * H * N, K, V))                     # [B*H*N, R, V]
    return o.index_put((b, t, h), reads[sid, rank], accumulate=True)
