"""Random inputs for every memory, shared by the library tests."""
import torch

import minimc

MEMORIES = ["linear", "delta", "swla", "dla", "titans"]
DEEP = ("dla", "titans")


def inputs(memory="linear", B=2, T=37, H=2, K=8, V=None, seed=0, dtype=torch.float64,
           decay=False, requires_grad=False):
    """q, k, v, u and the memory's options (per-token scalars in sane ranges, deep weights)."""
    g = torch.Generator().manual_seed(seed)
    V = (K if memory in DEEP else K + 4) if V is None else V

    def rnd(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    def uni(lo, hi):
        return lo + (hi - lo) * torch.rand(B, T, H, generator=g, dtype=dtype)

    q, k, u = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, K)
    v = rnd(B, T, H, V)
    opts = {}
    if memory == "linear" and decay:
        opts["decay"] = uni(0.7, 1.0)
    if memory == "delta":
        opts["beta"] = uni(0.1, 0.9)
    if memory == "swla":
        opts.update(a=uni(0.7, 1.0), b=uni(0.2, 1.0), c=uni(0.2, 1.0))
    if memory in DEEP:                                          # unit keys, as the layers use
        k = torch.nn.functional.normalize(k, dim=-1)
        opts["weights"] = minimc.init_deep_weights(H, K, generator=g, dtype=dtype)
        opts["lr"] = uni(0.01, 0.1)
        if memory == "titans":
            opts.update(momentum=uni(0.0, 0.9), decay=uni(0.9, 1.0))
    if requires_grad:
        for x in (q, k, v, u):
            x.requires_grad_(True)
    return q, k, v, u, opts
