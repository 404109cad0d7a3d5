"""The cached readout: every token reads the cached matrix states, weighted by its gates.

    o[b, t, h, :] = sum_i gates[b, t, h, i] S[b, h, i]^T q[b, t, h, :]   (cached part of Eq. 9 / 17)

q: [B, T, H, K], S: [B, H, N, K, V], gates: [B, T, H, N] -> o: [B, T, H, V].

Three forms of the same map, each checked against the first in the tests:
  cached_readout_reference  the definition: materialises every read [B, T, H, N, V]
  cached_readout            block by block in torch, never holding more than one block's reads;
                            its backward recomputes block by block too. backend="triton" runs the
                            forward in the Triton kernel (minimc.kernel, imported only then)
  sparse_readout            SSC (Eq. 17): reads only the selected states, grouped so that each
                            group of rows reading one state is one matmul
"""
import torch

from .checks import check_choice, check_finite, check_like, check_tensor

BACKENDS = ("torch", "triton")


def cached_readout_reference(q, S, gates):
    """The definition, every read materialised."""
    reads = torch.einsum("bthk,bhnkv->bthnv", q, S)                         # [B, T, H, N, V]
    return (gates[..., None] * reads).sum(3)


class CachedReadout(torch.autograd.Function):
    """Blocked forward and backward, in [B, H, T, *] layout. ``blocks`` [(a, b, n)]: tokens a:b
    read states [:n] (causality: a token reads only completed segments). In a block the gates are
    folded into the queries, X[t, (i, k)] = g_ti q_tk, so the block is one (C x nK) @ (nK x V)
    matmul. The gradient of this trilinear map, block by block (only q, S, gates are saved):
        dq_t = sum_i g_ti S_i do_t,   dg_ti = q_t^T S_i do_t,   dS_i = sum_t g_ti q_t do_t^T."""

    @staticmethod
    def forward(ctx, q, S, gates, blocks, backend):
        ctx.save_for_backward(q, S, gates)
        ctx.blocks = blocks
        if backend == "triton":                     # the kernel skips zero-gate tiles by itself
            from .kernel import cached_readout_triton
            return cached_readout_triton(q.contiguous(), S.contiguous(), gates.contiguous())
        B, T, H, K = q.shape
        V = S.shape[-1]
        qh, gh = q.transpose(1, 2), gates.transpose(1, 2)       # [B, H, T, K], [B, H, T, N]
        o = q.new_zeros(B, H, T, V)
        for a, b, n in blocks:
            if n:
                X = (gh[:, :, a:b, :n, None] * qh[:, :, a:b, None, :]).flatten(-2)  # [B, H, C, nK]
                o[:, :, a:b] = X @ S[:, :, :n].reshape(B, H, n * K, V)
        return o.transpose(1, 2)                                 # [B, T, H, V]

    @staticmethod
    def backward(ctx, do):
        q, S, gates = ctx.saved_tensors
        B, T, H, K = q.shape
        V = S.shape[-1]
        qh, gh, doh = q.transpose(1, 2), gates.transpose(1, 2), do.transpose(1, 2)  # [B, H, T, *]
        dq, dg, dS = torch.zeros_like(qh), torch.zeros_like(gh), torch.zeros_like(S)
        for a, b, n in ctx.blocks:
            if not n:
                continue
            Sn = S[:, :, :n].reshape(B, H, n * K, V)                         # [B, H, nK, V]
            Sdo = (doh[:, :, a:b] @ Sn.transpose(-1, -2)).unflatten(-1, (n, K))  # [B, H, C, n, K]
            g = gh[:, :, a:b, :n]                                            # [B, H, C, n]
            dq[:, :, a:b] = (Sdo * g[..., None]).sum(-2)
            dg[:, :, a:b, :n] = (Sdo * qh[:, :, a:b, None, :]).sum(-1)
            X = (g[..., None] * qh[:, :, a:b, None, :]).flatten(-2)          # [B, H, C, nK]
            dS[:, :, :n] += (X.transpose(-1, -2) @ doh[:, :, a:b]).view(B, H, n, K, V)
        return dq.transpose(1, 2), dS, dg.transpose(1, 2), None, None


def cached_readout(q, S, gates, blocks=None, backend="torch", check_nan=True):
    """o = sum_i gates_i S_i^T q, block by block (see the module docstring). ``blocks`` None: one
    block, every token reads every state. backend: 'torch' or 'triton'."""
    check_readout_args(q, S, gates, check_nan=check_nan)
    check_choice("backend", backend, BACKENDS)
    T, N = q.shape[1], S.shape[2]
    blocks = [(0, T, N)] if blocks is None else list(blocks)
    for a, b, n in blocks:
        if not (0 <= a < b <= T and 0 <= n <= N):
            raise ValueError(f"blocks must hold (start, end, n) with 0 <= start < end <= T = {T} "
                             f"and 0 <= n <= N = {N}, got {(a, b, n)}")
    return CachedReadout.apply(q, S, gates, blocks, backend)


def sparse_readout(q, S, gates, selected, rows_per_tile=64, check_nan=True):
    """SSC readout (Eq. 17): o = sum_j gates[..., j] S[selected[..., j]]^T q, reading only the
    selected states. gates, selected: [B, T, H, k]; selected = -1 marks an empty slot.

    Every (token, slot) pair is a row. Rows are grouped by the state they read and cut into
    tiles of R rows that share one state, so each tile is one small matmul and no state is
    read for a token that did not pick it."""
    check_readout_args(q, S, gates, selected, check_nan)
    B, T, H, K = q.shape
    N, V, R = S.shape[2], S.shape[-1], rows_per_tile
    BTH = B * T * H
    # 1. One row per (token, slot) that holds a selection.
    pair = (selected >= 0).flatten().nonzero()[:, 0]           # [P] flat index into [B, T, H, k]
    token = pair // selected.shape[-1]                          # [P] flat (b, t, h) of the reader
    batch, head = token // (T * H), token % H
    state = (batch * H + head) * N + selected.flatten()[pair]   # [P] flat (b, h, i) it reads
    # 2. Group the rows by state; cut each state's rows into tiles of R rows.
    state, order = state.sort(stable=True)
    token, gate = token[order], gates.flatten()[pair[order]]    # [P], [P]
    rows_of = torch.bincount(state, minlength=B * H * N)        # [BHN] rows reading each state
    tiles_of = (rows_of + R - 1) // R                           # [BHN] tiles per state
    rank = torch.arange(len(state), device=q.device) - (rows_of.cumsum(0) - rows_of)[state]
    first_tile = (tiles_of.cumsum(0) - tiles_of)[state]         # [P] first tile of the row's state
    slot = (first_tile + rank // R) * R + rank % R              # [P] the row's place in the tiles
    # 3. Fill the tiles; a padding slot reads a dropped row past the end, with gate 0.
    n_slots = int(tiles_of.sum()) * R
    slot_token = torch.full((n_slots,), BTH, device=q.device)  # [n_slots]
    slot_token[slot] = token
    slot_gate = q.new_zeros(n_slots).index_put_((slot,), gate)  # [n_slots]
    rows = q.reshape(BTH, K).index_select(0, slot_token.clamp_max(BTH - 1))    # [n_slots, K]
    rows = rows * slot_gate[:, None]
    tile_state = torch.repeat_interleave(tiles_of)              # [tiles] the state each tile reads
    states = S.reshape(B * H * N, K, V).index_select(0, tile_state)           # [tiles, K, V]
    reads = torch.bmm(rows.view(-1, R, K), states).view(-1, V)  # [n_slots, V]
    out = q.new_zeros(BTH + 1, V).index_add(0, slot_token, reads)              # [BTH + 1, V]
    return out[:BTH].view(B, T, H, V)


def check_readout_args(q, S, gates, selected=None, check_nan=True):
    """q [B, T, H, K], S [B, H, N, K, V], gates [B, T, H, N] (or [B, T, H, k] with ``selected``,
    integer indices in [-1, N)), one dtype and device."""
    check_tensor("q", q, (None,) * 4, ("B", "T", "H", "K"))
    B, T, H, K = q.shape
    check_tensor("S", S, (B, H, None, K, None), ("B", "H", "N", "K", "V"))
    N = S.shape[2]
    if selected is None:
        check_tensor("gates", gates, (B, T, H, N), ("B", "T", "H", "N"))
    else:
        if not isinstance(selected, torch.Tensor) or selected.dtype not in (torch.int64,
                                                                             torch.int32):
            raise TypeError(f"selected must be an int64 tensor [B, T, H, k], got "
                            f"{getattr(selected, 'dtype', type(selected).__name__)}")
        if selected.shape[:3] != (B, T, H) or selected.dim() != 4:
            raise ValueError(f"selected must have shape [B, T, H, k] = ({B}, {T}, {H}, k), got "
                             f"{tuple(selected.shape)}")
        check_tensor("gates", gates, tuple(selected.shape), ("B", "T", "H", "k"))
        if selected.numel() and (selected.min() < -1 or selected.max() >= N):
            raise ValueError(f"selected must hold state indices in [-1, N) = [-1, {N}) (-1: empty "
                             f"slot), got values in [{selected.min().item()}, "
                             f"{selected.max().item()}]")
        if selected.device != q.device:
            raise TypeError(f"selected must be on q's device {q.device}, got {selected.device}")
    for name, x in (("S", S), ("gates", gates)):
        check_like(name, x, q)
    if check_nan:
        check_finite(q=q, S=S, gates=gates)
