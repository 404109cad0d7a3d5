"""Chapter 3 exercises: a deep memory that learns at test time.

The memory is a small MLP with a residual connection, M(x) = x + gelu(x @ W2) @ W1 (row vectors,
minimc's convention), with per (batch, head) weights W1 [B, H, E, K] and W2 [B, H, K, E] (E = 4K in
the paper and in MemoryLayer's default, 2K in the deep presets; any E works here). Its state is the
tuple (W1, W2, m1, m2): the weights and their momentum. GELU is PyTorch's default (exact) one,
gelu(z) = z Phi(z), whose derivative is Phi(z) + z phi(z) (Phi, phi: the standard normal CDF and
density).

1. ``dla_gradient``: the closed-form gradient of DLA's inner loss (Eq. 30) for one token.
2. ``titans_step``: one token of Titans (Eq. 34-36), gradient descent with momentum and decay.

Grade:  python scripts/grade.py --chapter 3
        (or: python -m pytest tests/exercises/test_ch03_deep_memory.py)
"""
import math

import torch
import torch.nn.functional as F


def dla_gradient(W1, W2, k, v):
    """Gradient of DLA's inner loss l = -<M(k), v> with respect to W1 and W2, for one token.

    W1 [B, H, E, K], W2 [B, H, K, E], k [B, H, K], v [B, H, K]
    -> (dW1 [B, H, E, K], dW2 [B, H, K, E]).
    With z = k @ W2 [E], h = gelu(z) [E], M(k) = k + h @ W1 and delta = dl/dM(k) = -v [K]:
        dW1 = outer(h, delta)                                   [E, K]
        dW2 = outer(k, (delta @ W1^T) * gelu'(z))           [K, E], gelu'(z) = Phi(z) + z phi(z)
    (per batch and head). Write it in closed form: no autograd.
    Worked example (B = H = 1, K = 1, E = 2): W1 = [[1], [2]] [E, K], W2 = [[1, -1]] [K, E],
    k = [1], v = [2]. z = [1, -1], h = gelu(z) = [0.8413, -0.1587], delta = [-2], so
    dW1 = outer(h, delta) = [[-1.6827], [0.3173]]; delta @ W1^T = [-2, -4] and
    gelu'(z) = [1.0833, -0.0833] give dW2 = outer(k, [-2.1666, 0.3333]) = [[-2.1666, 0.3333]].
    """
    z = torch.einsum("bhk,bhke->bhe", k, W2)                                # [B, H, E]
    h = F.gelu(z)
    delta = -v                                                              # [B, H, K]
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    dgelu = 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * phi               # [B, H, E]
    dz = torch.einsum("bhk,bhek->bhe", delta, W1) * dgelu                   # [B, H, E]
    return h[..., :, None] * delta[..., None, :], k[..., :, None] * dz[..., None, :]


def titans_step(state, k, v, lr, momentum, decay):
    """One token of Titans (Eq. 34-36), with gradient descent (not ascent): the new state
    (W1, W2, m1, m2).

    state = (W1 [B, H, E, K], W2 [B, H, K, E], m1 [B, H, E, K], m2 [B, H, K, E]);
    k, v [B, H, K]; lr, momentum, decay [B, H] (one number per batch and head).
    Inner loss l(theta) = ||M_theta(k) - v||^2 with M(x) = x + gelu(x @ W2) @ W1, its gradient
    g = (gW1, gW2) taken at the OLD weights (delta = dl/dM(k) = 2 (M(k) - v), then as in
    dla_gradient), and
        m_new     = momentum * m + lr * g
        theta_new = decay * theta - m_new
    for both weights. Return (W1_new, W2_new, m1_new, m2_new), same shapes as the input state.
    Worked example (B = H = 1, K = 1, E = 2): W1 = [[1], [2]], W2 = [[1, -1]], m = 0, k = [1],
    v = [2], lr = 0.1, momentum = 0.9, decay = 1: M(k) = 1 + 0.8413 - 2 * 0.1587 = 1.5240,
    delta = 2 (1.5240 - 2) = -0.9520, gW1 = [[-0.8009], [0.1510]], gW2 = [[-1.0312, 0.1586]], so
    m1 = [[-0.0801], [0.0151]], m2 = [[-0.1031, 0.0159]], W1 = [[1.0801], [1.9849]],
    W2 = [[1.1031, -1.0159]].
    """
    W1, W2, m1, m2 = state
    z = torch.einsum("bhk,bhke->bhe", k, W2)                                # [B, H, E]
    h = F.gelu(z)
    delta = 2 * (k + torch.einsum("bhe,bhek->bhk", h, W1) - v)              # [B, H, K]
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    dgelu = 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * phi              # gelu'(z), [B, H, E]
    dz = torch.einsum("bhk,bhek->bhe", delta, W1) * dgelu
    g1, g2 = h[..., :, None] * delta[..., None, :], k[..., :, None] * dz[..., None, :]

    def s(x):                                                       # [B, H] -> [B, H, 1, 1]
        return x[..., None, None]

    m1, m2 = s(momentum) * m1 + s(lr) * g1, s(momentum) * m2 + s(lr) * g2
    return s(decay) * W1 - m1, s(decay) * W2 - m2, m1, m2
