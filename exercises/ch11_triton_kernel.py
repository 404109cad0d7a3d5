"""Chapter 11 exercise: the kernel's inner loop.

The Triton kernel of minimc.kernel gives each program one block of BT tokens of one (batch, head)
and loops over the N cached states (the cached part of Eq. 9 / 17):

    o_t = sum_i g_{t,i} S_i^T q_t        for every token t of the block

Part 1, ``readout_block``: that loop in plain torch, skipping every state that no token of the
block reads. Part 2, ``readout_block_kernel``: the same loop as a Triton program (the launcher
``readout_block_triton`` is given). Without a GPU it runs in Triton's interpreter: importing
minimc.kernel first sets TRITON_INTERPRET=1 before the kernel below is decorated.

Grade:  python -m pytest tests/exercises/test_ch11_triton_kernel.py -q
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
    raise NotImplementedError("readout_block")


@triton.jit
def readout_block_kernel(q, S, gates, o, T, N, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr):
    """The same loop as one Triton program, for a single block of T <= BT tokens.

    q [T, K], S [N, K, V], gates [T, N], o [T, V]: contiguous float32 (pointers to their first
    elements). K and V are powers of two >= 16, so only the token rows need masks: rows t >= T
    are padding (load them as 0, never store them). The launcher gives q, gates and o BT rows,
    the padding filled with NaN, so a missing mask gives an error or NaN, not a crash.
    1. Load the query block b_q [BT, K] once; start a float32 accumulator b_o [BT, V] at zero.
    2. For each state i: load gate column i, b_g [BT]; if some gate is nonzero
       (tl.max(tl.abs(b_g), axis=0) > 0), load S[i] as b_s [K, V] and add b_g[:, None] * tl.dot(b_q, b_s).
    3. Store b_o into o.
    """
    raise NotImplementedError("readout_block_kernel")


def readout_block_triton(q_block, states, gates_block, BT=16):
    """Given (nothing to write here): launch ``readout_block_kernel`` as one program.

    q_block [T, K], states [N, K, V], gates_block [T, N] with T <= BT -> o [T, V] float32."""
    (T, K), (N, _, V) = q_block.shape, states.shape
    if T > BT or any(n < 16 or n & (n - 1) for n in (K, V, BT)):
        raise ValueError(f"need T <= BT and K, V, BT powers of two >= 16; got T={T}, K={K}, V={V}, BT={BT}")
    interpreted = not isinstance(readout_block_kernel, triton.runtime.jit.JITFunction)
    device = "cpu" if interpreted else "cuda"
    pad = lambda x: torch.cat([x, x.new_full((BT - T, x.shape[1]), float("nan"))])   # noqa: E731  [BT, .]
    q, g = (pad(x.to(device, torch.float32)) for x in (q_block, gates_block))    # [BT, K], [BT, N]
    S = states.to(device, torch.float32).contiguous()                      # [N, K, V]
    o = torch.full((BT, V), float("nan"), device=device)                   # NaN: an unwritten row shows
    try:
        readout_block_kernel[(1,)](q, S, g, o, T, N, K=K, V=V, BT=BT)
    except Exception as e:       # the interpreter wraps errors raised in the kernel: show the original
        if type(e).__name__ == "InterpreterError" and e.__cause__ is not None:
            raise e.__cause__ from None
        raise
    if not o[T:].isnan().all():
        raise AssertionError(f"the kernel wrote padding rows t >= T = {T}: mask the store with t < T")
    return o[:T].to(q_block.device)
