"""Chapter 8 exercise: Memory Soup, the weighted sum of weights.

Memory Soup (Eq. 14-15) mixes the memories' *weights*, not their outputs: every token t builds
its own memory from the online memory's weights at t and the N cached memories' weights, with
the same gates as Gated Residual Memory, and reads its query through that memory:

    theta*_t = gamma_t^on theta_t + sum_i gamma_t^(i) theta^(i)      (Eq. 15)
    y_t      = M_{theta*_t}(q_t)                                     (Eq. 15)

A memory's state is a tuple of tensors ("leaves"); the soup mixes every leaf the same way, so
``soup_weights`` works on one leaf at a time.

Grade:  python scripts/grade.py --chapter 8     (or: make grade CHAPTER=8)
"""
import torch


def soup_weights(online, cache, gates):
    """theta*_t = gamma_t^on theta_t + sum_i gamma_t^(i) theta^(i), for every token t (Eq. 15).

    online: [B, H, T, ...]   one leaf of the online memory's state after each token t
    cache:  [B, H, N, ...]   the same leaf of the N cached memories' states
    gates:  [B, T, H, N + 1] the gates exactly as ``memory_caching(..., return_info=True)``
            returns them: column i < N weighs cached memory i, the LAST column (N) weighs the
            online memory. Use them as they are (do not renormalise).
    returns [B, H, T, ...]   the souped leaf for every token, in online's dtype.
    "..." is the leaf's own shape, the same for online and cache: a matrix [K, V] for a linear
    memory, [E, K] or [K, E] for a deep memory's W1 or W2, or nothing at all.

    Worked example (B = H = 1, T = 2, N = 1, scalar leaves, so online [1, 1, 2], cache [1, 1, 1]):
    online = [[[1., 2.]]], cache = [[[10.]]], gates = [[[[0., 1.]], [[0.5, 0.5]]]] ([1, 2, 1, 2])
    -> [[[1., 6.]]]: token 0 keeps its online weight 1; token 1 takes 0.5 * 10 + 0.5 * 2 = 6.
    """
    N = cache.shape[2]
    g = gates.permute(0, 2, 1, 3)                                           # [B, H, T, N + 1]
    extra = (None,) * (online.dim() - 3)                                    # one axis per leaf dim
    mixed_cache = torch.einsum("bhtn,bhn...->bht...", g[..., :N], cache)   # [B, H, T, ...]
    return g[..., N][(...,) + extra] * online + mixed_cache
