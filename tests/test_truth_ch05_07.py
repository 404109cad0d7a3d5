"""Facts chapters 5-7 state about the library and the math (the truth pass of issue 11).

Chapter 5: logarithmic segments (§4.2) read with the whole length T depend on T (a prefix is
cut differently), are causal at a fixed T, and are the last token's Fenwick split.
Chapter 6: the collapse (Eq. 12-13) for every matrix memory in both modes: Residual Memory is a
fixed-size recurrence y_t = (S_t + R_s)^T q_t; what the pre-summing costs in recall; a deep memory
does not collapse. Chapter 7: the gates' worked example and the inverse temperature.
"""
import pytest
import torch
import torch.nn.functional as F

import minimc

MODES = ("checkpoint", "independent")
D64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


def matrix_inputs(memory, B=2, T=29, H=2, K=6, seed=0):
    """q, k, v [B, T, H, K] and the memory's per-token options [B, T, H]."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, H, K, generator=g, dtype=D64) for _ in range(3))

    def unit(lo=0.0):                                       # [B, T, H] in [lo, 1]
        return lo + (1 - lo) * torch.rand(B, T, H, generator=g, dtype=D64)

    opts = {"linear": {}, "linear-decay": {"decay": unit(0.5)}, "delta": {"beta": unit()},
            "swla": {"a": unit(0.5), "b": unit(), "c": unit()}}[memory]
    return q, k, v, opts


def residual_presummed(q, k, v, C, mode, memory, opts):
    """Residual Memory as a fixed-size recurrence: the online state S and the running sum R of
    the states cached so far; y_t = (S_t + R)^T q_t. Returns [B, T, H, V]."""
    mem, _ = minimc.make_memory(memory, {})
    q = q * q.shape[-1] ** -0.5                             # [B, T, H, K] as the memory reads
    state0 = state = mem.init_state(q, k, v)
    R = torch.zeros_like(state0[0])                         # [B, H, K, V]
    ys = []
    T = q.shape[1]
    for t in range(T):
        state = mem.step(state, k[:, t], v[:, t], **{n: x[:, t] for n, x in opts.items()})
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state[0] + R))   # [B, H, V]
        if (t + 1) % C == 0 or t + 1 == T:                  # a segment ends: cache it into R
            R = R + state[0]
            state = state0 if mode == "independent" else state
    return torch.stack(ys, 1)                               # [B, T, H, V]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("memory", ["linear", "linear-decay", "delta", "swla"])
def test_residual_collapses_to_a_fixed_size_recurrence(memory, mode):
    q, k, v, opts = matrix_inputs(memory)
    name = "linear" if memory == "linear-decay" else memory
    for C in (1, 3, 8, 29, 40):
        res = minimc.memory_caching(q, k, v, memory=name, variant="residual", segment_len=C,
                                    mode=mode, **opts)
        fixed = residual_presummed(q, k, v, C, mode, name, opts)
        assert (res - fixed).abs().max() < 1e-10, (memory, mode, C)


def test_independent_linear_residual_is_linear_attention():
    q, k, v, _ = matrix_inputs("linear", T=40)
    plain, _ = minimc.recurrent_memory(q, k, v, "linear")
    for C in range(1, 41):
        res = minimc.memory_caching(q, k, v, variant="residual", segment_len=C,
                                    mode="independent")
        assert (res - plain).abs().max() < 1e-10, C


def test_checkpoint_linear_residual_counts_early_tokens_several_times():
    q, k, v, _ = matrix_inputs("linear", T=30)
    T, C = 30, 7
    seg = torch.arange(T) // C                                                 # [T]
    W = ((seg[:, None] - seg[None, :] + 1) * torch.ones(T, T).tril()).to(D64)  # [T, T]
    A = torch.einsum("bthk,bjhk->bhtj", q * q.shape[-1] ** -0.5, k) * W         # [B, H, T, T]
    want = torch.einsum("bhtj,bjhv->bthv", A, v)                               # [B, T, H, V]
    got = minimc.memory_caching(q, k, v, variant="residual", segment_len=C, mode="checkpoint")
    assert (got - want).abs().max() < 1e-10


@pytest.mark.parametrize("mode", MODES)
def test_presumming_costs_recall(mode):
    """Stored unit key-value pairs: reading only the state of the key's own segment recalls
    better than the pre-summed readout (all cached states), for every C < P; equal at C = P."""
    B, P, K = 64, 64, 16
    g = torch.Generator().manual_seed(3)
    k, v = (F.normalize(torch.randn(B, P, 1, K, generator=g, dtype=D64), dim=-1)
            for _ in range(2))                                                 # [B, P, 1, K]
    for C in (2, 8, 32, 64):
        _, info = minimc.memory_caching(k, k, v, variant="residual", segment_len=C, mode=mode,
                                        return_info=True)
        reads = torch.einsum("bjhk,bhnkv->bjnv", k, info["states"][0])          # [B, P, N, V]
        target = v[:, :, 0]                                                    # [B, P, V]
        own = reads[:, torch.arange(P), torch.arange(P) // C]                  # [B, P, V]
        oracle = F.cosine_similarity(own, target, dim=-1).mean()
        summed = F.cosine_similarity(reads.sum(2), target, dim=-1).mean()
        if C < P:
            assert oracle > summed + 0.05, (mode, C, oracle, summed)
        else:
            assert (oracle - summed).abs() < 1e-12


def test_deep_memory_does_not_collapse():
    """Summing a deep memory's cached weights is not summing its readouts; the exact sum of N
    readouts is one MLP N times as wide (it grows with the cache)."""
    B, T, H, K = 1, 24, 2, 4
    q, k, v = (randn(B, T, H, K, seed=s) for s in range(3))
    W = minimc.init_deep_weights(H, K, generator=torch.Generator().manual_seed(0), dtype=D64)
    lr = 0.5 * torch.rand(B, T, H, generator=torch.Generator().manual_seed(1), dtype=D64)
    _, info = minimc.memory_caching(q, k, v, memory="titans", variant="residual", segment_len=6,
                                    mode="independent", weights=W, lr=lr, chunk_size=1,
                                    return_info=True)
    mem, _ = minimc.make_memory("titans", {"weights": W})
    cache = info["states"]                                  # W1 [B, H, N, E, K], W2 [B, H, N, K, E]
    qs = q * K ** -0.5
    sum_of_reads = mem.read(cache, qs).sum(3)               # [B, T, H, V]
    summed = tuple(x.sum(2, keepdim=True).expand(-1, -1, T, *x.shape[3:]) for x in cache)
    read_of_sum = mem.read_each(summed, qs)                 # [B, T, H, V]
    assert (sum_of_reads - read_of_sum).abs().max() > 1e-2
    N = cache[0].shape[2]
    wide1 = cache[0].flatten(2, 3)                          # [B, H, N E, K]
    wide2 = cache[1].transpose(2, 3).flatten(3, 4)          # [B, H, K, N E]
    h = F.gelu(torch.einsum("bthk,bhke->bthe", qs, wide2))  # [B, T, H, N E]
    wide = N * qs + torch.einsum("bthe,bhek->bthk", h, wide1)
    assert (wide - sum_of_reads).abs().max() < 1e-10
    matrix_cache = torch.randn(B, H, N, K, K, dtype=D64)    # a matrix memory: they agree
    lin, _ = minimc.make_memory("linear", {})
    assert torch.allclose(lin.read((matrix_cache,), qs).sum(3),
                          torch.einsum("bthk,bhkv->bthv", qs, matrix_cache.sum(2)))


def fenwick_split(t):
    """Blocks covering tokens 0..t: strip the lowest set bit of n = t + 1, oldest block first."""
    n, blocks = t + 1, []
    while n:
        low = n & -n
        blocks.append((n - low, n))
        n -= low
    return blocks[::-1]


def test_log_segments_are_the_last_tokens_fenwick_split():
    for T in range(1, 513):
        assert minimc.segment_bounds(T, 1, "log") == fenwick_split(T - 1)


def test_log_segments_depend_on_T_constant_do_not():
    xs = [randn(1, 40, 2, 8, seed=s) for s in range(4)]                # q, k, v, u
    for segmentation in ("log", "constant"):
        for mode in MODES:
            whole = minimc.memory_caching(*xs, segment_len=8, segmentation=segmentation,
                                          mode=mode)                   # T = 40 = 32 + 8
            prefix = minimc.memory_caching(*(x[:, :24] for x in xs), segment_len=8,
                                           segmentation=segmentation, mode=mode)   # 24 = 16 + 8
            gap = (whole[:, :24] - prefix).abs().amax((0, 2, 3))       # [24]
            if segmentation == "constant":
                assert gap.max() < 1e-12
            else:                           # tokens 16..23 read a cached state only when T = 24
                assert gap[:16].max() < 1e-12 and gap[16:].min() > 1e-3, (mode, gap)


@pytest.mark.parametrize("variant", ["residual", "grm", "soup", "ssc"])
def test_log_segments_are_causal_at_a_fixed_T(variant):
    T = 37                                                  # 32 + 4 + 1
    xs = [randn(2, T, 2, 8, seed=s) for s in range(4)]
    for mode in MODES:
        for t0 in (20, 33):
            noisy = [x.clone() for x in xs]
            for x in noisy:
                x[:, t0 + 1:] += randn(*x[:, t0 + 1:].shape, seed=9)
            a, b = (minimc.memory_caching(*x, variant=variant, segmentation="log", mode=mode)
                    for x in (xs, noisy))
            assert (a[:, :t0 + 1] - b[:, :t0 + 1]).abs().max() < 1e-12
            assert (a[:, t0 + 1:] - b[:, t0 + 1:]).abs().max() > 1e-3


def test_grm_gates_worked_example_with_a_token_mid_segment():
    """Chapter 7's exercise example: u = 1, k = [1, 2, 3, 5, 1, 0], C = 3, temperature 1."""
    k = torch.tensor([1.0, 2, 3, 5, 1, 0], dtype=D64).view(1, 6, 1, 1)
    u = torch.ones_like(k)
    _, info = minimc.memory_caching(u, k, k, u, variant="grm", segment_len=3, temperature=1.0,
                                    return_info=True)
    e = torch.tensor(1.0, dtype=D64).exp()
    want = torch.tensor([[0, 0, 1], [0, 0, 1], [0, 0, 1],
                         [e ** 2 / (e ** 2 + e ** 5), 0, e ** 5 / (e ** 2 + e ** 5)],
                         [e ** 2 / (e ** 2 + e ** 3), 0, e ** 3 / (e ** 2 + e ** 3)],
                         [0.5, 0, 0.5]], dtype=D64)
    assert torch.allclose(info["gates"][0, :, 0], want)


def test_temperature_is_an_inverse_temperature():
    """The scores are multiplied by `temperature`: larger values give sharper gates."""
    q, k, v, u = (randn(2, 40, 2, 8, seed=s) for s in range(4))
    peaks = []
    for tau in (0.0625, 0.25, 1.0, 4.0):
        _, info = minimc.memory_caching(q, k, v, u, variant="grm", segment_len=5,
                                        temperature=tau, return_info=True)
        peaks.append(info["gates"][:, 5:].max(-1).values.mean().item())
    assert peaks == sorted(peaks) and peaks[-1] > peaks[0] + 0.2, peaks
