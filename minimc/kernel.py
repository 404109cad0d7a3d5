"""The Triton kernel for the cached readout, and its launcher: the only module that imports triton.

    o[b, t, h, :] = sum_i gates[b, t, h, i] S[b, h, i]^T q[b, t, h, :]   (cached part of Eq. 9 / 17)

One program per block of BT tokens (and BV value columns) of one (batch, head); it loads a cached
state only when some token of its block has a nonzero gate on it, so SSC's unselected states
(gate 0) and the future segments of causal caching are never read. The torch forms of the same
map are in minimc.readout, which calls ``cached_readout_triton`` for ``backend="triton"``.

Triton on a CPU: Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates a kernel, i.e. when
this module (or a learner's kernel file) is imported. Without a GPU this module sets
TRITON_INTERPRET=1 before it decorates anything, so importing it is all a caller needs; kernels
defined elsewhere after ``import minimc.kernel`` run in the interpreter too. This is the one
place that owns that rule.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")      # before any @triton.jit below
import triton                                           # noqa: E402 (reads nothing at import)
import triton.language as tl                            # noqa: E402

from .checks import check_tensor                        # noqa: E402


def tiles_read(gates, BT=64):
    """Which (token block, cached state) tiles the kernel reads: bool [B, H, ceil(T / BT), N].
    A tile is read when some token of the block has a nonzero gate on that state."""
    B, T, H, N = gates.shape
    g = torch.nn.functional.pad(gates != 0, (0, 0, 0, 0, 0, -T % BT))   # [B, T', H, N], T' = BT n
    return g.reshape(B, -1, BT, H, N).any(2).permute(0, 2, 1, 3)       # [B, H, T' / BT, N]


@triton.jit
def cached_readout_kernel(q, S, gates, o, T, N, H: tl.constexpr, K: tl.constexpr,
                          V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                          PRECISION: tl.constexpr):
    """o[b, t, h] = sum_i gates[b, t, h, i] S[b, h, i]^T q[b, t, h]   (cached part of Eq. 9 / 17).

    One program: BT tokens x BV value columns of one (batch, head); all of K in one block
    (BK >= K). q [B, T, H, K], S [B, H, N, K, V], gates [B, T, H, N], o [B, T, H, V], contiguous."""
    i_t, i_v, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = i_t * BT + tl.arange(0, BT)                           # [BT] token indices
    o_k = tl.arange(0, BK)                                      # [BK]
    o_v = i_v * BV + tl.arange(0, BV)                           # [BV] value columns
    m_t, m_k, m_v = o_t < T, o_k < K, o_v < V                   # masks for the tails
    row = (i_b * T + o_t).to(tl.int64) * H + i_h                # [BT] flat (b, t, h) index
    p_q = q + row[:, None] * K + o_k[None, :]                   # [BT, BK]
    b_q = tl.load(p_q, mask=m_t[:, None] & m_k[None, :], other=0.)     # [BT, BK] q's dtype
    b_o = tl.zeros([BT, BV], dtype=tl.float32)                  # [BT, BV] fp32 accumulator
    for i_n in range(N):
        p_g = gates + row * N + i_n                             # [BT] gate column i_n
        b_g = tl.load(p_g, mask=m_t, other=0.).to(tl.float32)   # [BT]
        read = tl.max(tl.where(b_g == 0, 0.0, 1.0), axis=0) > 0  # NaN != 0: a NaN gate is read
        if read:                                                # skip a state nobody here reads
            state = (i_bh * N + i_n).to(tl.int64)
            p_s = S + (state * K + o_k[:, None]) * V + o_v[None, :]     # [BK, BV]
            b_s = tl.load(p_s, mask=m_k[:, None] & m_v[None, :], other=0.)   # read once
            b_o += b_g[:, None] * tl.dot(b_q, b_s, input_precision=PRECISION)  # [BT, BV]
    p_o = o + row[:, None] * V + o_v[None, :]                   # [BT, BV]
    tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])


# True when the kernel above was decorated for Triton's interpreter (TRITON_INTERPRET=1).
INTERPRET = not isinstance(cached_readout_kernel, triton.runtime.jit.JITFunction)


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
    precision = "tf32" if tf32 or q.dtype != torch.float32 else "ieee"
    grid = (triton.cdiv(T, BT), triton.cdiv(V, BV), B * H)
    if o.numel():
        cached_readout_kernel[grid](q, S, gates, o, T, N, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
                                    PRECISION=precision)
    return o


def _check_triton_args(q, S, gates, BT, out):
    """Clear errors before any launch: types, dtypes, shapes, contiguity, devices, a backend."""
    check_tensor("q", q, (None,) * 4, ("B", "T", "H", "K"))
    B, T, H, K = q.shape
    check_tensor("S", S, (B, H, None, K, None), ("B", "H", "N", "K", "V"))
    check_tensor("gates", gates, (B, T, H, S.shape[2]), ("B", "T", "H", "N"))
    named = dict(q=q, S=S, gates=gates, **({} if out is None else {"out": out}))
    if out is not None:
        check_tensor("out", out, (B, T, H, S.shape[4]), ("B", "T", "H", "V"))
    for name, x in named.items():
        if x.dtype not in (torch.float32, torch.float16) or x.dtype != q.dtype:
            raise TypeError(f"{name} must be float32 or float16 for the Triton kernel, one dtype "
                            f"for q, S, gates, out: got {name} {x.dtype}, q {q.dtype} "
                            "(backend='torch' takes any float)")
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous, got shape {tuple(x.shape)} with strides "
                             f"{x.stride()} (call .contiguous())")
        if x.device != q.device:
            raise ValueError(f"{name} must be on q's device ({q.device}), got {x.device}")
    if K > 256:
        raise ValueError(f"the Triton kernel holds all of K in one block: K must be <= 256, "
                         f"got K = {K}")
    if not (isinstance(BT, int) and BT >= 16 and BT & (BT - 1) == 0):
        raise ValueError(f"BT must be a power of two >= 16 (tl.dot needs 16 rows), got {BT!r}")
    if not INTERPRET and not torch.cuda.is_available():
        raise RuntimeError("no GPU for Triton, and the kernel was not decorated for Triton's "
                           "interpreter: leave TRITON_INTERPRET unset (minimc.kernel sets it to 1 "
                           "without a GPU) or set TRITON_INTERPRET=1 before importing it")
    want = ("cpu", "cuda") if INTERPRET else ("cuda",)
    if q.device.type not in want:
        where = "the Triton interpreter" if INTERPRET else "compiled Triton"
        raise ValueError(f"q, S, gates must be on {' or '.join(want)} for {where}, "
                         f"got {q.device}")
