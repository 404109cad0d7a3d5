"""Library facts that chapters 8-11 state (issue 11, the truth pass), one test per claim.

ch 8: minimc.mix_weights is Eq. 15's souped weights, an explicit sum over the memories;
      temperature multiplies the scores (an inverse temperature: larger is sharper).
ch 9: SSC's gates are GRM's renormalised over {online} + selection (an inference, minimc's
      choice); gradients reach the router's scores through the selected gates only.
ch 10: a value-less memory with key bias, one-token segments, independent mode and GRM gates,
      read with sigmoid(x W_Q) as query, is gated causal softmax attention (Eq. 18-20); the
      value memory is the special case; checkpoint mode with q = 1 caches a compressor's
      outputs (Eq. 21-24).
ch 11: the kernel skips a tile only when every gate of the block on that state is 0; a NaN gate
      is read (it propagates); causal GRM tiles and SSC's tiles (a subset) as the chapter counts.
"""
import pytest
import torch
import torch.nn.functional as F

import minimc
from minimc.memories import MEMORIES, Memory

F64 = dict(dtype=torch.float64)


# ---- ch 8 ----------------------------------------------------------------------------------

def test_mix_weights_is_the_explicit_sum_of_eq_15():
    g = torch.Generator().manual_seed(0)
    B, T, H, N = 2, 7, 2, 3
    gates = torch.rand(B, T, H, N + 1, generator=g, **F64).softmax(-1)   # [B, T, H, N + 1]
    online = (torch.randn(B, H, T, 4, 5, generator=g, **F64),            # a matrix leaf
              torch.randn(B, H, T, 4, generator=g, **F64))               # a vector leaf
    cache = (torch.randn(B, H, N, 4, 5, generator=g, **F64),
             torch.randn(B, H, N, 4, generator=g, **F64))
    mixed = minimc.mix_weights(gates, online, cache)
    for star, on, cached in zip(mixed, online, cache):
        for b in range(B):
            for t in range(T):
                for h in range(H):
                    hand = gates[b, t, h, N] * on[b, h, t]
                    for i in range(N):
                        hand = hand + gates[b, t, h, i] * cached[b, h, i]
                    torch.testing.assert_close(star[b, h, t], hand, rtol=0, atol=1e-12)


def test_temperature_is_an_inverse_temperature():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 32, 1, 8, generator=g, **F64) for _ in range(3))
    peak = {}
    for tau in (0.1, 1.0, 10.0):
        _, info = minimc.memory_caching(q, k, v, segment_len=4, temperature=tau,
                                        return_info=True)
        peak[tau] = info["gates"][:, 4:].max(-1).values.mean().item()   # tokens with a cache
    assert peak[0.1] < peak[1.0] < peak[10.0]                           # larger: sharper


# ---- ch 9 ----------------------------------------------------------------------------------

def test_ssc_gates_are_grm_gates_renormalised_over_the_selection():
    scores = torch.tensor([0.3, 2.1, -0.5, 1.7, 0.9, 1.2], **F64)
    online, valid = torch.tensor(1.0, **F64), torch.arange(6) < 4
    grm, _ = minimc.gate(scores, online, valid, "grm", 1)
    ssc, selected = minimc.gate(scores, online, valid, "ssc", 2)
    keep = torch.zeros(7, dtype=torch.bool)
    keep[selected] = True
    keep[-1] = True
    assert sorted(selected.tolist()) == [1, 3]
    assert (ssc[~keep] == 0).all()
    torch.testing.assert_close(ssc[keep], grm[keep] / grm[keep].sum())


def test_ssc_gradient_reaches_only_the_selected_scores():
    scores = torch.tensor([0.3, 2.1, -0.5, 1.7, 0.9, 1.2], requires_grad=True, **F64)
    valid = torch.arange(6) < 4
    gates, selected = minimc.gate(scores, torch.tensor(1.0, **F64), valid, "ssc", 2)
    (d,) = torch.autograd.grad((torch.arange(1.0, 8.0, **F64) * gates).sum(), scores)
    chosen = torch.zeros(6, dtype=torch.bool)
    chosen[selected] = True
    assert (d[~chosen] == 0).all() and (d[chosen] != 0).all()


# ---- ch 10 ---------------------------------------------------------------------------------

class _KeyMemory(Memory):
    """Eq. 18: state b_K + k (value-less), read element-wise with the query."""
    settings = ("chunk_size", "bias")

    def __init__(self, chunk_size=64, bias=None):
        super().__init__(chunk_size)
        self.bias = bias

    def init_state(self, q, k, v):
        return (self.bias.to(k).expand(k.shape[0], -1, -1),)   # [B, H, K]

    def step(self, state, k, v):
        return (state[0] + k,)

    def read(self, stack, q):
        return q[:, :, :, None] * stack[0][:, None]             # [B, T, H, N, K]

    def read_each(self, stack, q):
        return q * stack[0].transpose(1, 2)                     # [B, T, H, K]

    def state_size(self, K, V):
        return K


class _ValueMemory(Memory):
    """Returns the stored value of its last token, whatever the query."""

    def init_state(self, q, k, v):
        return (torch.zeros_like(v[:, 0]),)

    def step(self, state, k, v):
        return (v,)

    def read(self, stack, q):
        return stack[0][:, None].expand(-1, q.shape[1], -1, -1, -1)

    def read_each(self, stack, q):
        return stack[0].transpose(1, 2)

    def state_size(self, K, V):
        return V


@pytest.fixture
def eq18(monkeypatch):
    monkeypatch.setitem(MEMORIES, "key", _KeyMemory)
    monkeypatch.setitem(MEMORIES, "value", _ValueMemory)
    g = torch.Generator().manual_seed(2)
    B, T, D, H, K = 2, 13, 12, 2, 4
    x = torch.randn(B, T, D, generator=g, **F64)
    proj = [(x @ torch.randn(D, H * K, generator=g, **F64)).unflatten(-1, (H, K))
            for _ in range(3)]                                   # u, k, x W_Q: [B, T, H, K]
    return proj[0], proj[1], torch.sigmoid(proj[2]), torch.randn(H, K, generator=g, **F64)


def test_value_less_memory_is_gated_causal_softmax_attention(eq18):
    u, k, gate, b_K = eq18
    y = minimc.memory_caching(gate, k, k, u, memory="key", segment_len=1, mode="independent",
                              temperature=1.0, scale=1.0, bias=b_K)

    def heads(z):
        return z.transpose(1, 2)

    att = heads(F.scaled_dot_product_attention(heads(u), heads(k), heads(b_K + k),
                                               is_causal=True, scale=1.0))
    torch.testing.assert_close(y, att * gate, rtol=0, atol=1e-12)
    y_value = minimc.memory_caching(gate, k, b_K + k, u, memory="value", segment_len=1,
                                    mode="independent", temperature=1.0, scale=1.0)
    torch.testing.assert_close(y_value * gate, y, rtol=0, atol=1e-12)   # the special case


def test_checkpoint_segments_of_one_cache_a_compressors_outputs(eq18):
    u, k, _, b_K = eq18
    ones = torch.ones_like(k)                                    # q = 1: a compressor
    y_rnn, _ = minimc.recurrent_memory(ones, k, k, "key", scale=1.0, bias=b_K)
    _, info = minimc.memory_caching(ones, k, k, u, memory="key", segment_len=1,
                                    mode="checkpoint", scale=1.0, bias=b_K, return_info=True)
    torch.testing.assert_close(info["states"][0].transpose(1, 2), y_rnn, rtol=0, atol=1e-12)
    torch.testing.assert_close(y_rnn, b_K + k.cumsum(1), rtol=0, atol=1e-12)


# ---- ch 11 ---------------------------------------------------------------------------------

def _gates(variant, u=None):
    torch.manual_seed(1)
    x = [torch.randn(1, 128, 1, 16) for _ in range(3)]
    _, info = minimc.memory_caching(*x, u, variant=variant, segment_len=16, top_k=2,
                                    return_info=True)
    return info["gates"][..., :-1].contiguous()                  # [1, 128, 1, 8]


def test_tiles_read_causal_grm_and_ssc_subset():
    from minimc.kernel import tiles_read
    grm, ssc = tiles_read(_gates("grm"), 16), tiles_read(_gates("ssc"), 16)   # [1, 1, 8, 8]
    assert torch.equal(grm[0, 0], torch.ones(8, 8, dtype=torch.bool).tril(-1))
    assert not (ssc & ~grm).any()                                # SSC reads a subset


def test_kernel_reads_a_nan_gate_and_propagates_it():
    from minimc.kernel import cached_readout_triton, tiles_read
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 32, 1, 16, generator=g)
    S = torch.randn(1, 1, 2, 16, 16, generator=g)
    gates = torch.zeros(1, 32, 1, 2)
    gates[:, :, :, 0] = 0.5                                       # every token reads state 0
    gates[0, 5, 0, 1] = float("nan")                              # no token reads state 1...
    o = cached_readout_triton(q, S, gates, BT=16)
    bad = o[0, :, 0].isnan().any(-1)
    assert bad.nonzero().flatten().tolist() == [5]                # ...but the NaN is read
    assert tiles_read(gates, 16)[0, 0, :, 1].tolist() == [True, False]
