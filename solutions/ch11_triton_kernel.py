"""Chapter 11 exercises: the kernel's inner loop, SSC's sparse readout and a gradient kernel.

The Triton kernel of minimc.kernel gives each program one block of BT tokens of one (batch, head)
and loops over the N cached states (the cached part of Eq. 9 / 17):

    o_t = sum_i g_{t,i} S_i^T q_t        for every token t of the block

Part 1, ``readout_block``: that loop in plain torch, skipping every state that no token of the
block reads. Part 2, ``readout_block_kernel``: the same loop as a Triton program. Part 3,
``sparse_readout_kernel``: SSC's readout (Eq. 17), where every token reads only the k states it
selected. Part 4, ``readout_dq_kernel``: the readout's gradient with respect to the queries, the
first kernel of a backward pass. The launchers (``*_triton``) are given. Without a GPU the
kernels run in Triton's interpreter: importing minimc.kernel first sets TRITON_INTERPRET=1
before the kernels below are decorated.

Grade:  python scripts/grade.py --chapter 11
        (or: python -m pytest tests/exercises/test_ch11_triton_kernel.py)
"""
import torch

import minimc.kernel  # noqa: F401  (first: without a GPU it sets TRITON_INTERPRET=1)
import triton
import triton.language as tl


def readout_block(q_block, states, gates_block):
    """One program's work, in torch: o = sum_i gates_block[:, i, None] * (q_block @ states[i]).

    q_block [BT, K], states [N, K, V], gates_block [BT, N] -> o [BT, V], in q_block's dtype.
    Loop over the states; when every gate in column i is zero, skip state i without touching
    states[i] (so a NaN in a state that nobody reads never reaches the output).
    Worked example: BT = 2, N = 2, gates [[0.5, 0], [1, 0]]: state 1 is skipped and
    o = [[0.5], [1]] * (q_block @ states[0]).
    """
    o = q_block.new_zeros(q_block.shape[0], states.shape[-1])              # [BT, V]
    for i in range(states.shape[0]):
        g = gates_block[:, i]                                               # [BT] gate column i
        if not g.any():                                                     # nobody reads state i
            continue
        o += g[:, None] * (q_block @ states[i])                             # [BT, K] @ [K, V]
    return o


@triton.jit
def readout_block_kernel(q, S, gates, o, T, N, K: tl.constexpr, V: tl.constexpr,
                         BT: tl.constexpr):
    """The same loop as one Triton program, for a single block of T <= BT tokens.

    q [T, K], S [N, K, V], gates [T, N], o [T, V]: contiguous float32 (pointers to their first
    elements). K and V are powers of two >= 16, so only the token rows need masks: rows t >= T
    are padding (load them as 0, never store them). The launcher gives q, gates and o BT rows,
    the padding filled with NaN, so a missing mask gives an error or NaN, not a crash.
    1. Load the query block b_q [BT, K] once; start a float32 accumulator b_o [BT, V] at zero.
    2. For each state i: load gate column i, b_g [BT]; if some gate is not 0
       (tl.max(tl.where(b_g == 0, 0.0, 1.0), axis=0) > 0: a NaN gate is not 0, so it is read),
       load S[i] as b_s [K, V] and add
       b_g[:, None] * tl.dot(b_q, b_s).
    3. Store b_o into o.
    """
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, K), tl.arange(0, V)     # [BT], [K], [V]
    m_t = o_t < T                                                           # [BT] real rows
    b_q = tl.load(q + o_t[:, None] * K + o_k[None, :], mask=m_t[:, None], other=0.)  # [BT, K]
    b_o = tl.zeros([BT, V], dtype=tl.float32)                               # [BT, V]
    for i in range(N):
        b_g = tl.load(gates + o_t * N + i, mask=m_t, other=0.)              # [BT] gate column i
        if tl.max(tl.where(b_g == 0, 0.0, 1.0), axis=0) > 0:                # somebody reads state i
            b_s = tl.load(S + i * K * V + o_k[:, None] * V + o_v[None, :])  # [K, V] state i
            b_o += b_g[:, None] * tl.dot(b_q, b_s)                          # [BT, V]
    tl.store(o + o_t[:, None] * V + o_v[None, :], b_o, mask=m_t[:, None])


@triton.jit
def sparse_readout_kernel(q, S, gates, selected, o, TOPK, K: tl.constexpr, V: tl.constexpr):
    """SSC's cached readout (Eq. 17): program t computes token t's output from ONLY the states
    that token selected:

        o[t] = sum over the slots j < TOPK with selected[t, j] >= 0 of
               gates[t, j] * S[selected[t, j]]^T q[t]

    q [T, K], S [N, K, V], gates [T, TOPK] float32; selected [T, TOPK] int64, -1 marking an empty
    slot; o [T, V] float32. All contiguous (pointers to their first elements); K and V powers of
    two >= 16 (no masks needed). The launcher starts one program per token: t = tl.program_id(0).
    Rules: never load a state the token did not select (the tests fill the others with NaN);
    never use -1 as an index (a scalar `if` on the loaded index skips the slot); one token is a
    single row, too few for tl.dot (16 rows at least): multiply q[t] [K, 1] by the state [K, V]
    and reduce over K with tl.sum(..., axis=0). Accumulate in float32, store o[t] once.
    Worked example: TOPK = 2, selected[t] = [3, -1], gates[t] = [0.25, 0.75]: o[t] = 0.25 *
    S[3]^T q[t]; slot 1 is empty, so its gate is ignored and nothing is loaded for it.
    """
    t = tl.program_id(0)
    o_k, o_v = tl.arange(0, K), tl.arange(0, V)                             # [K], [V]
    b_q = tl.load(q + t * K + o_k)                                          # [K] the token's query
    b_o = tl.zeros([V], dtype=tl.float32)                                   # [V]
    for j in range(TOPK):
        i = tl.load(selected + t * TOPK + j)                                # the state of slot j
        if i >= 0:                                                          # -1: an empty slot
            g = tl.load(gates + t * TOPK + j)
            b_s = tl.load(S + i * K * V + o_k[:, None] * V + o_v[None, :])  # [K, V] state i only
            b_o += g * tl.sum(b_q[:, None] * b_s, axis=0)                   # [V] S_i^T q_t
    tl.store(o + t * V + o_v, b_o)


@triton.jit
def readout_dq_kernel(do, S, gates, dq, T, N, K: tl.constexpr, V: tl.constexpr,
                      BT: tl.constexpr):
    """The readout's gradient with respect to the queries, one program for T <= BT tokens:

        o_t = sum_i g_ti S_i^T q_t     =>     dq_t = sum_i g_ti S_i do_t       (do_t = dL/do_t)

    do [T, V], S [N, K, V], gates [T, N], dq [T, K]: contiguous float32; K and V powers of two
    >= 16; rows t >= T are padding, as in readout_block_kernel (mask loads and the store).
    As blocks: dq = sum_i gates[:, i, None] * (do @ S_i^T), [BT, V] @ [V, K] -> [BT, K] with
    tl.dot. Load S_i^T [V, K] straight from memory (element (v, k) of S_i^T is S_i[k, v]:
    choose the offsets, no transpose op needed), and skip state i when its whole gate column is
    zero (the tests fill unread states with NaN).
    Worked example: one state, all gates 1: dq = do @ S_0^T, the forward product q @ S_0 run
    backwards.
    """
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, K), tl.arange(0, V)     # [BT], [K], [V]
    m_t = o_t < T                                                           # [BT] real rows
    b_do = tl.load(do + o_t[:, None] * V + o_v[None, :], mask=m_t[:, None], other=0.)  # [BT, V]
    b_dq = tl.zeros([BT, K], dtype=tl.float32)                              # [BT, K]
    for i in range(N):
        b_g = tl.load(gates + o_t * N + i, mask=m_t, other=0.)              # [BT] gate column i
        if tl.max(tl.where(b_g == 0, 0.0, 1.0), axis=0) > 0:          # NaN is read
            b_st = tl.load(S + i * K * V + o_v[:, None] + o_k[None, :] * V)   # [V, K] S_i^T
            b_dq += b_g[:, None] * tl.dot(b_do, b_st)                       # [BT, K]
    tl.store(dq + o_t[:, None] * K + o_k[None, :], b_dq, mask=m_t[:, None])


# ---- the launchers (given) ----------------------------------------------------------------------

def _device(kernel):
    """'cpu' for Triton's interpreter, else 'cuda'."""
    return "cpu" if not isinstance(kernel, triton.runtime.jit.JITFunction) else "cuda"


def _launch(kernel, grid, *args, **meta):
    try:
        kernel[grid](*args, **meta)
    except Exception as e:  # the interpreter wraps errors raised in the kernel: show the original
        if type(e).__name__ == "InterpreterError" and e.__cause__ is not None:
            raise e.__cause__ from None
        raise


def _check_sizes(T, K, V, BT):
    if T > BT or any(n < 16 or n & (n - 1) for n in (K, V, BT)):
        raise ValueError(f"need T <= BT and K, V, BT powers of two >= 16; got T={T}, K={K}, "
                         f"V={V}, BT={BT}")


def _pad(x, rows, device):
    """x [T, D] as float32 with rows - T extra rows of NaN: [rows, D]."""
    x = x.to(device, torch.float32)
    return torch.cat([x, x.new_full((rows - x.shape[0], x.shape[1]), float("nan"))]).contiguous()


def _unpadded(out, T, name):
    if not out[T:].isnan().all():
        raise AssertionError(f"{name} wrote padding rows t >= T = {T}: mask the store with t < T")
    return out[:T]


def readout_block_triton(q_block, states, gates_block, BT=16):
    """Given (nothing to write here): launch ``readout_block_kernel`` as one program.

    q_block [T, K], states [N, K, V], gates_block [T, N] with T <= BT -> o [T, V] float32."""
    (T, K), (N, _, V) = q_block.shape, states.shape
    _check_sizes(T, K, V, BT)
    device = _device(readout_block_kernel)
    q, g = _pad(q_block, BT, device), _pad(gates_block, BT, device)       # [BT, K], [BT, N]
    S = states.to(device, torch.float32).contiguous()                      # [N, K, V]
    o = torch.full((BT, V), float("nan"), device=device)  # NaN: unwritten rows show
    _launch(readout_block_kernel, (1,), q, S, g, o, T, N, K=K, V=V, BT=BT)
    return _unpadded(o, T, "readout_block_kernel").to(q_block.device)


def sparse_readout_triton(q_tokens, states, gates, selected):
    """Given: launch ``sparse_readout_kernel``, one program per token.

    q_tokens [T, K], states [N, K, V], gates [T, k], selected [T, k] (int, -1 = empty slot)
    -> o [T, V] float32."""
    (T, K), (_, _, V), TOPK = q_tokens.shape, states.shape, selected.shape[1]
    _check_sizes(0, K, V, 16)                                              # any T: no tl.dot
    device = _device(sparse_readout_kernel)
    q = q_tokens.to(device, torch.float32).contiguous()                    # [T, K]
    S = states.to(device, torch.float32).contiguous()                      # [N, K, V]
    g = gates.to(device, torch.float32).contiguous()                       # [T, k]
    sel = selected.to(device, torch.int64).contiguous()                    # [T, k]
    o = torch.full((T, V), float("nan"), device=device)  # NaN: unwritten rows show
    _launch(sparse_readout_kernel, (T,), q, S, g, sel, o, TOPK, K=K, V=V)
    return o.to(q_tokens.device)


def readout_dq_triton(do_block, states, gates_block, BT=16):
    """Given: launch ``readout_dq_kernel`` as one program.

    do_block [T, V], states [N, K, V], gates_block [T, N] with T <= BT -> dq [T, K] float32."""
    (T, V), (N, K, _) = do_block.shape, states.shape
    _check_sizes(T, K, V, BT)
    device = _device(readout_dq_kernel)
    do, g = _pad(do_block, BT, device), _pad(gates_block, BT, device)     # [BT, V], [BT, N]
    S = states.to(device, torch.float32).contiguous()                      # [N, K, V]
    dq = torch.full((BT, K), float("nan"), device=device)  # NaN: unwritten rows show
    _launch(readout_dq_kernel, (1,), do, S, g, dq, T, N, K=K, V=V, BT=BT)
    return _unpadded(dq, T, "readout_dq_kernel").to(do_block.device)
