"""Cached-memory readout: every token reads the cached linear-memory states, weighted by its gates.

    o[b, t, h, :] = sum_i gates[b, t, h, i] * S[b, h, i]^T q[b, t, h, :]     (cached part of Eq. 9 / 17)

q: [B, T, H, K], S: [B, H, N, K, V], gates: [B, T, H, N] -> o: [B, T, H, V].

Four forms of the same map:
  cached_readout_reference  the definition: materialises every read [B, T, H, N, V]
  cached_readout            block by block in torch (or Triton), never holding more than one
                            block's reads; its backward recomputes block by block too
  sparse_readout            SSC: reads only the selected states, grouped so each is one matmul
  cached_readout_triton     the Triton kernel below: one program per block of BT tokens, skipping
                            every cached state that no token of its block reads (zero gates)

Triton on a CPU: the kernel runs in Triton's interpreter when TRITON_INTERPRET=1 is in the
environment *before this module is imported* (triton reads it when @triton.jit runs). Importing
never needs a GPU; launching needs a GPU or the interpreter, otherwise a RuntimeError says what to do.
"""
import torch
import triton
import triton.language as tl

from .checks import check_tensor


def cached_readout_reference(q, S, gates):
    reads = torch.einsum("bthk,bhnkv->bthnv", q, S)                     # [B, T, H, N, V]
    return (gates[..., None] * reads).sum(3)


def _blocks(q, S, blocks):
    """Token blocks (start, end, n): tokens start:end read states [:n]. None: one block, all N."""
    return [(0, q.shape[1], S.shape[2])] if blocks is None else blocks


class CachedReadout(torch.autograd.Function):
    """Blocked forward/backward, in [B, H, T, *] layout. Per token block, the gates are folded into
    the queries, X[t, (i, k)] = g_ti q_tk, so the whole block is one (C x nK) @ (nK x V) matmul.
    The gradient of this trilinear map, block by block (nothing but q, S, gates is saved):
    dq_t = sum_i g_ti S_i do_t,   dg_ti = q_t^T S_i do_t,   dS_i = sum_t g_ti q_t do_t^T."""

    @staticmethod
    def forward(ctx, q, S, gates, blocks, backend):
        ctx.save_for_backward(q, S, gates)
        ctx.blocks = blocks
        if backend == "triton":                                             # the kernel skips by gates, not blocks
            return cached_readout_triton(q.contiguous(), S.contiguous(), gates.contiguous())
        B, T, H, K = q.shape
        N, V = S.shape[2], S.shape[-1]
        qh, gh = q.transpose(1, 2), gates.transpose(1, 2)                   # [B, H, T, K], [B, H, T, N]
        o = q.new_empty(B, H, T, V)
        for a, b, n in blocks:
            if not n:
                o[:, :, a:b] = 0
                continue
            X = (gh[:, :, a:b, :n, None] * qh[:, :, a:b, None, :]).flatten(-2)   # [B, H, C, n*K]
            torch.matmul(X, S[:, :, :n].reshape(B, H, n * K, V), out=o[:, :, a:b])
        return o.transpose(1, 2)

    @staticmethod
    def backward(ctx, do):
        q, S, gates = ctx.saved_tensors
        B, T, H, K = q.shape
        N, V = S.shape[2], S.shape[-1]
        qh, gh, doh = q.transpose(1, 2), gates.transpose(1, 2), do.transpose(1, 2)  # [B, H, T, *]
        dq, dg, dS = torch.zeros_like(qh), torch.zeros_like(gh), torch.zeros_like(S)
        for a, b, n in ctx.blocks:
            if not n:
                continue
            Sn = S[:, :, :n].reshape(B, H, n * K, V)                          # [B, H, nK, V]
            Sdo = (doh[:, :, a:b] @ Sn.transpose(-1, -2)).unflatten(-1, (n, K))   # [B, H, C, n, K]
            g = gh[:, :, a:b, :n]
            dq[:, :, a:b] = (Sdo * g[..., None]).sum(-2)
            dg[:, :, a:b, :n] = (Sdo * qh[:, :, a:b, None, :]).sum(-1)
            X = (g[..., None] * qh[:, :, a:b, None, :]).flatten(-2)         # [B, H, C, n*K]
            dS[:, :, :n] += (X.transpose(-1, -2) @ doh[:, :, a:b]).view(B, H, n, K, V)
        return dq.transpose(1, 2), dS, dg.transpose(1, 2), None, None


def cached_readout(q, S, gates, blocks=None, backend="torch"):
    """o = sum_i gates_i S_i^T q, block by block (see module docstring). backend: 'torch' | 'triton'."""
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'torch' or 'triton', got {backend!r}")
    return CachedReadout.apply(q, S, gates, _blocks(q, S, blocks), backend)


def sparse_readout(q, S, gates, selected, rows_per_tile=64):
    """SSC readout (Eq. 17): o = sum_j gates[..., j] S[selected[..., j]]^T q, reading only selected states.

    gates, selected: [B, T, H, k] (selected = -1 where a slot is empty). Every (token, slot) pair is
    a row; rows are sorted by the state they read and cut into tiles of R rows that share one
    state, so each tile is one small matmul and no state is read for a token that did not pick it."""
    B, T, H, K = q.shape
    N, V, R = S.shape[2], S.shape[-1], rows_per_tile
    pair = (selected >= 0).flatten().nonzero()[:, 0]                        # [P] flat (b, t, h, j)
    row = pair // selected.shape[-1]                                        # flat (b, t, h) of each pair
    sid = (row // (T * H) * H + row % H) * N + selected.flatten()[pair]     # flat (b, h, i): the state read
    sid, order = sid.sort(stable=True)
    counts = torch.bincount(sid, minlength=B * H * N)                       # rows per state
    tiles = (counts + R - 1) // R                                           # tiles of R rows per state
    rank = torch.arange(len(sid), device=q.device) - (counts.cumsum(0) - counts)[sid]
    slot = ((tiles.cumsum(0) - tiles)[sid] + rank // R) * R + rank % R      # flat (tile, row in tile)
    src = torch.full((int(tiles.sum()) * R,), B * T * H, device=q.device)   # padding slots: a row past the end
    src[slot] = row[order]                                                  # [tiles * R] token row of each slot
    g = q.new_zeros(len(src)).index_put_((slot,), gates.flatten()[pair[order]])   # padding: gate 0
    rows = q.reshape(-1, K).index_select(0, src.clamp_max(B * T * H - 1)) * g[:, None]   # [tiles * R, K]
    states = S.reshape(B * H * N, K, V).index_select(0, torch.repeat_interleave(tiles))  # [tiles, K, V]
    reads = torch.bmm(rows.view(-1, R, K), states).view(-1, V)              # [tiles * R, V]
    return q.new_zeros(B * T * H + 1, V).index_add(0, src, reads)[:-1].view(B, T, H, V)  # padding -> dropped row


def tiles_read(gates, BT=64):
    """Which (token block, cached state) tiles the kernel reads: bool [B, H, ceil(T / BT), N].
    A tile is read when some token of the block has a nonzero gate on that state."""
    B, T, H, N = gates.shape
    g = torch.nn.functional.pad(gates != 0, (0, 0, 0, 0, 0, -T % BT))         # [B, T', H, N], T' = BT * blocks
    return g.reshape(B, -1, BT, H, N).any(2).permute(0, 2, 1, 3)             # [B, H, T' / BT, N]


@triton.jit
def cached_readout_kernel(q, S, gates, o, T, N, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                          BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """o[b, t, h] = sum_i gates[b, t, h, i] S[b, h, i]^T q[b, t, h]   (cached part of Eq. 9 / 17).

    One program: BT tokens x BV value columns of one (batch, head); all of K in one block (BK >= K).
    q [B, T, H, K], S [B, H, N, K, V], gates [B, T, H, N], o [B, T, H, V], all contiguous."""
    i_t, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)                                        # [BT] token indices
    o_k = tl.arange(0, BK)                                                   # [BK]
    o_v = i_v * BV + tl.arange(0, BV)                                        # [BV] value columns
    m_t, m_k, m_v = o_t < T, o_k < K, o_v < V                                # masks for the tails
    row = (i_b * T + o_t).to(tl.int64) * H + i_h                             # [BT] flat (b, t, h) index
    p_q = q + row[:, None] * K + o_k[None, :]                                # [BT, BK]
    b_q = tl.load(p_q, mask=m_t[:, None] & m_k[None, :], other=0.)          # [BT, BK] queries, q's dtype
    b_o = tl.zeros([BT, BV], dtype=tl.float32)                               # [BT, BV] fp32 accumulator
    for i_n in range(N):
        p_g = gates + row * N + i_n                                          # [BT] gate column i_n
        b_g = tl.load(p_g, mask=m_t, other=0.).to(tl.float32)                # [BT]
        if tl.max(tl.abs(b_g), axis=0) > 0:                                  # skip a state nobody here reads
            p_s = S + ((i_bh * N + i_n).to(tl.int64) * K + o_k[:, None]) * V + o_v[None, :]  # [BK, BV]
            b_s = tl.load(p_s, mask=m_k[:, None] & m_v[None, :], other=0.)  # [BK, BV] state block, read once
            b_o += b_g[:, None] * tl.dot(b_q, b_s, input_precision=PRECISION)  # [BT, BV]
    p_o = o + row[:, None] * V + o_v[None, :]                                # [BT, BV]
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


INTERPRET = not isinstance(cached_readout_kernel, triton.runtime.jit.JITFunction)   # decorated for the interpreter


def cached_readout_triton(q, S, gates, BT=64, out=None):
    """Launch ``cached_readout_kernel``: o [B, T, H, V] = the cached part of Eq. 9 / 17.

    q [B, T, H, K], S [B, H, N, K, V], gates [B, T, H, N]: contiguous, one dtype (float32 or
    float16), one device; K <= 256, any T, V. Loads in the input dtype, accumulates in float32,
    returns q's dtype. float32 products use TF32 only if torch.backends.cuda.matmul.allow_tf32 is
    set (as torch's own matmuls do). A zero gate means "not read": the state tile is never loaded.
    ``out``: optional preallocated output. Every argument is checked before the launch."""
    _check_triton_args(q, S, gates, BT, out)
    B, T, H, K = q.shape
    N, V = S.shape[2], S.shape[4]
    o = torch.empty(B, T, H, V, dtype=q.dtype, device=q.device) if out is None else out
    BK, BV = max(16, triton.next_power_of_2(K)), min(64, max(16, triton.next_power_of_2(V)))
    tf32 = q.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    grid = (triton.cdiv(T, BT), triton.cdiv(V, BV), B * H)
    if o.numel():
        cached_readout_kernel[grid](q, S, gates, o, T, N, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
                                    PRECISION="tf32" if tf32 or q.dtype != torch.float32 else "ieee")
    return o


def _check_triton_args(q, S, gates, BT, out):
    """Clear errors before any launch: types, dtypes, shapes, contiguity, devices, a usable backend."""
    check_tensor("q", q, (None,) * 4, ("B", "T", "H", "K"))
    B, T, H, K = q.shape
    check_tensor("S", S, (B, H, None, K, None), ("B", "H", "N", "K", "V"))
    check_tensor("gates", gates, (B, T, H, S.shape[2]), ("B", "T", "H", "N"))
    named = dict(q=q, S=S, gates=gates, **({} if out is None else {"out": out}))
    if out is not None:
        check_tensor("out", out, (B, T, H, S.shape[4]), ("B", "T", "H", "V"))
    for name, x in named.items():
        if x.dtype not in (torch.float32, torch.float16) or x.dtype != q.dtype:
            raise TypeError(f"{name} must be float32 or float16 for the Triton kernel, with one dtype for "
                            f"q, S, gates, out: got {name} {x.dtype}, q {q.dtype} (backend='torch' takes any float)")
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous, got shape {tuple(x.shape)} with strides {x.stride()} "
                             "(call .contiguous())")
        if x.device != q.device:
            raise ValueError(f"{name} must be on q's device ({q.device}), got {x.device}")
    if K > 256:
        raise ValueError(f"the Triton kernel holds all of K in one block: K must be <= 256, got K = {K}")
    if not (isinstance(BT, int) and BT >= 16 and BT & (BT - 1) == 0):
        raise ValueError(f"BT must be a power of two >= 16 (tl.dot needs 16 rows), got {BT!r}")
    if not INTERPRET and not torch.cuda.is_available():
        raise RuntimeError("no GPU for Triton: set TRITON_INTERPRET=1 in the environment before importing "
                           "minimc to run the kernel in Triton's interpreter on the CPU")
    want = ("cpu", "cuda") if INTERPRET else ("cuda",)
    if q.device.type not in want:
        raise ValueError(f"q, S, gates must be on {' or '.join(want)} for "
                         f"{'the Triton interpreter' if INTERPRET else 'compiled Triton'}, got {q.device}")
