"""Chapter 4 exercise: a memory as a layer of a model (minimc.layers.MemoryLayer, no caching).

Chapters 1-3 wrote memories that map (q, k, v) to outputs. In a model the memory is one layer:
it makes q, k and v from the layer's input x [B, T, D], and hands back [B, T, D]. Chapter 4
trains such layers on MQAR; this exercise is their forward pass, written out.

Grade:  python scripts/grade.py --chapter 4
        (or: python -m pytest tests/exercises/test_ch04_layer.py)
"""
import torch
import torch.nn.functional as F

import minimc


def memory_layer_forward(x, w_qkv, w_conv, w_out, norm_weight, n_heads, memory="linear",
                         w_beta=None, b_beta=None):
    """The forward pass of minimc.layers.MemoryLayer(D, n_heads, K, memory, conv=W), no caching.

    x [B, T, D]; w_qkv [3 H K, D], w_out [D, H K] (nn.Linear weights: y = x @ w.T, no bias);
    w_conv [W, 3 H K]; norm_weight [K]; n_heads = H (K = w_qkv.shape[0] // (3 H)); memory:
    "linear" or "delta"; w_beta [H, D] and b_beta [H] for the delta rule only.
      1. projections:   h = x @ w_qkv.T                                  [B, T, 3HK]
      2. short causal convolution, shift-and-add, per channel:
             c_t = sum_{j=0}^{W-1} w_conv[j] * h_{t-j}        (h_{t-j} = 0 before the start)
      3. heads:         c.reshape(B, T, 3, H, K) -> q, k, v                each [B, T, H, K]
      4. feature map:   linear: q, k = elu(q) + 1, elu(k) + 1   (positive features, Eq. 2's phi)
                        delta:  q, k = elu+1 as above, then q / ||q||, k / ||k||
                                (F.normalize(., dim=-1): non-negative unit features)
      5. memory:        o = minimc.recurrent_memory(q, k, v, memory, **opts)[0]  [B, T, H, K]
                        (scale K ** -0.5; your chapter 1-2 functions would do as well);
                        delta: opts = {"beta": sigmoid(x @ w_beta.T + b_beta)}  [B, T, H]
      6. per-head RMSNorm over the last axis (K):
             o / sqrt(mean(o ** 2) + eps) * norm_weight,   eps = torch.finfo(o.dtype).eps
      7. output projection: y = o.reshape(B, T, H K) @ w_out.T             [B, T, D]
    Returns y [B, T, D] in x's dtype. Causal: y_t depends on x_0 .. x_t only.
    Worked example (the convolution alone): W = 2, w_conv = [[1], [0.5]], one channel
    h = [1, 2, 3]: c = [1, 2 + 0.5, 3 + 1] = [1, 2.5, 4].
    """
    B, T, D = x.shape
    H = n_heads
    K = w_qkv.shape[0] // (3 * H)
    h = x @ w_qkv.T                                                        # [B, T, 3HK]
    W = w_conv.shape[0]
    hp = F.pad(h, (0, 0, W - 1, 0))                                        # zeros before t = 0
    c = sum(w_conv[j] * hp[:, W - 1 - j: W - 1 - j + T] for j in range(W))  # [B, T, 3HK]
    q, k, v = c.reshape(B, T, 3, H, K).unbind(2)                           # each [B, T, H, K]
    opts = {}
    if memory == "linear":
        q, k = F.elu(q) + 1, F.elu(k) + 1
    elif memory == "delta":
        q, k = F.normalize(F.elu(q) + 1, dim=-1), F.normalize(F.elu(k) + 1, dim=-1)
        opts["beta"] = torch.sigmoid(x @ w_beta.T + b_beta)                # [B, T, H]
    else:
        raise ValueError(f"memory must be 'linear' or 'delta', got {memory!r}")
    o, _ = minimc.recurrent_memory(q, k, v, memory, **opts)               # [B, T, H, K]
    eps = torch.finfo(o.dtype).eps
    o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + eps) * norm_weight
    return o.reshape(B, T, H * K) @ w_out.T                                # [B, T, D]
