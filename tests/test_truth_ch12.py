"""Facts chapter 12 states about its experiments (the library side; the numbers are in results/)."""
import pytest
import torch

from minimc.caching import memory_caching


@pytest.mark.parametrize("memory", ["linear", "delta"])
def test_checkpoint_mean_of_a_matrix_memory_is_a_fixed_size_recurrence(memory):
    """Post-training caching's uniform mean (variant="mean", checkpoint mode) on a matrix memory
    is the memory S_t plus a running sum R_t of its checkpoints, divided by n + 1: two K x V
    matrices, not a growing cache. Every write counts once more for each boundary after it
    (anti-recency)."""
    torch.manual_seed(0)
    B, T, H, K, C = 2, 70, 2, 8, 16
    q, k, v = (torch.randn(B, T, H, K, dtype=torch.float64) for _ in range(3))
    k = torch.nn.functional.normalize(k, dim=-1)
    opts = dict(beta=torch.rand(B, T, H, dtype=torch.float64)) if memory == "delta" else {}
    o = memory_caching(q, k, v, memory=memory, variant="mean", segment_len=C, mode="checkpoint",
                       **opts)
    S, R, n, outs = torch.zeros(B, H, K, K, dtype=torch.float64), 0, 0, []
    for t in range(T):
        if memory == "delta":                            # S <- S + beta k (v - S^T k)^T
            err = v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t])
            S = S + opts["beta"][:, t, :, None, None] * torch.einsum("bhk,bhv->bhkv", k[:, t], err)
        else:
            S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        outs.append(torch.einsum("bhkv,bhk->bhv", S + R, q[:, t] * K ** -0.5) / (n + 1))
        if (t + 1) % C == 0:
            R, n = R + S, n + 1
    assert torch.allclose(o, torch.stack(outs, 1), atol=1e-12)

