"""Recurrent memories (paper §2, §4.3): key->value maps that learn at test time.

Every memory shares one small interface, so caching code never asks which memory it holds.
A *state* is a tuple of tensors, each ``[B, H, ...]``; a *stack* of states has an extra axis
after ``H`` (``[B, H, N, ...]``: N cached states, or one state per token).

    init_state(q, k, v)              zero state (deep memory: its learned initial weights)
    step(state, k, v, **opts_t)      one token's update (the definition)
    recurrent(q, k, v, state, **o)   token loop: (o [B, T, H, V], final state)
    forward(q, k, v, state, **o)     fast form, same result (deep memory: chunked gradient steps)
    token_states(q, k, v, state)     every token's own state, a stack (Memory Soup needs it)
    read(stack, q)                   every query read by every state: [B, T, H, N, V]
    read_each(stack, q)              token t read by state t:         [B, T, H, V]

Queries arrive already multiplied by ``scale``. Per-token options (decay, beta, lr, ...) are
``[B, T, H]`` tensors named, with their ranges, in the class's ``token_args``; None means the
default. The other facts a layer or a check needs also live on the class (``matrix``, ``deep``,
``feature_map``, ``layer_scalars``, ``dtypes``).
"""
import torch
import torch.nn.functional as F

from .checks import (check_choice, check_finite, check_like, check_number, check_positive_int,
                     check_range, check_state, check_tensor)

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def decay_matrix(log_a):
    """L[..., t, j] = prod_{j < l <= t} a_l for j <= t, else 0. log_a: [..., T] -> [..., T, T]."""
    cs = log_a.cumsum(-1)                                                   # [..., T]
    diff = cs[..., :, None] - cs[..., None, :]                              # [..., T, T]
    causal = torch.ones(diff.shape[-2:], dtype=torch.bool, device=diff.device).tril()
    return diff.masked_fill(~causal, float("-inf")).exp()


def _log(x, like):
    """log of a per-token scalar [B, T, H] as [B, H, T]; None means 1 (no decay)."""
    if x is None:
        return like.new_zeros(like.shape[0], like.shape[2], like.shape[1])
    return x.clamp_min(1e-30).log().transpose(1, 2)


def _at(opts, t):
    """Per-token options of token t: [B, T, H] -> [B, H]."""
    return {n: (x[:, t] if x is not None else None) for n, x in opts.items()}


def stack_states(states):
    """A list of states -> one stacked state, new axis 2: leaves [B, H, N, ...]."""
    return tuple(torch.stack(leaves, 2) for leaves in zip(*states))


class Memory:
    token_args = {}          # per-token options and their ranges: {"decay": "(0, 1]"}
    settings = ("chunk_size",)
    matrix = False           # one K x V matrix read as S^T q: the readout is linear in the state
    deep = False             # an MLP trained at test time (needs K == V and initial weights)
    feature_map = "elu+1"    # what the layer applies to q and k: "elu+1", "elu+1, l2" or "l2"
    value_map = None         # what it applies to v: None, "l2" (unit) or "rms" (norm sqrt(K))
    layer_settings = {}      # settings a layer passes (DeepMemory: normalize=True)
    layer_scalars = {}       # n: (bias, scale): the layer makes n = scale * sigmoid(x W + bias)
    optional_args = ()       # options a layer learns only when asked (MemoryLayer(decay=True))
    dtypes = FLOATS          # dtypes the fast form computes correctly

    def __init__(self, chunk_size=64):
        self.chunk_size = chunk_size

    def init_state(self, q, k, v):
        raise NotImplementedError

    def step(self, state, k, v, **opts):
        raise NotImplementedError

    def state_size(self, K, V):
        raise NotImplementedError

    def forward(self, q, k, v, state, **opts):
        return self.recurrent(q, k, v, state, **opts)

    def recurrent(self, q, k, v, state, **opts):
        """The definition: update with token t, then read with query t (Eq. 1)."""
        outs = []
        for t in range(q.shape[1]):
            state = self.step(state, k[:, t], v[:, t], **_at(opts, t))
            outs.append(self.read_each(stack_states([state]), q[:, t:t + 1]))   # [B, 1, H, V]
        return torch.cat(outs, 1), state

    def token_states(self, q, k, v, state, **opts):
        states = []
        for t in range(q.shape[1]):
            state = self.step(state, k[:, t], v[:, t], **_at(opts, t))
            states.append(state)
        return stack_states(states), state

    @property
    def stream_chunk(self):
        """Tokens a stream must see together to reproduce ``forward``: 1 where the fast form is
        the token recurrence exactly (matrix memories), the chunk where it is not (deep)."""
        return 1


class MatrixMemory(Memory):
    """A K x V matrix S read as S^T q. Shared by linear, delta and SWLA memories."""
    matrix = True

    def init_state(self, q, k, v):
        B, _, H, K = k.shape
        return (k.new_zeros(B, H, K, v.shape[-1]),)

    def state_size(self, K, V):
        return K * V

    def read(self, stack, q):
        return torch.einsum("bthk,bhnkv->bthnv", q, stack[0])

    def read_each(self, stack, q):
        return torch.einsum("bthk,bhtkv->bthv", q, stack[0])


class LinearMemory(MatrixMemory):
    """Linear attention, Eq. 2 without its feature map and normaliser (the plain update of
    Eq. 12): S_t = a_t S_{t-1} + k_t v_t^T, y_t = S_t^T q_t. ``decay`` a_t ([B, T, H], in (0, 1]);
    None is plain linear attention (a_t = 1)."""
    token_args = {"decay": "(0, 1]"}
    layer_scalars = {"decay": (5.0, 1.0)}           # decay starts at sigmoid(5) = 0.993 per token
    optional_args = ("decay",)                      # plain linear attention unless asked

    def step(self, state, k, v, decay=None):
        S = state[0] if decay is None else state[0] * decay[..., None, None]
        return (S + k[..., :, None] * v[..., None, :],)

    def forward(self, q, k, v, state, decay=None):
        """Chunkwise-parallel form: chunks of c tokens; G_t = prod of decays from the chunk's
        start to t. For a chunk with start state S0:
            o_t = G_t q_t^T S0 + sum_{j <= t} (G_t / G_j) (q_t . k_j) v_j     (inter + intra)
            S   = G_c S0 + sum_j (G_c / G_j) k_j v_j^T                       (next chunk's start)
        Every chunk's intra part and write at once; a short scan over chunks for the states."""
        B, T, H, K = q.shape
        c = min(self.chunk_size, T)
        pad = (-T) % c                                      # zero keys and values write nothing

        def chunks(x):                                      # [B, T, H, D] -> [B, H, n, c, D]
            x = F.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x
            x = x.transpose(1, 2).contiguous()                              # [B, H, T, D]
            return x.unflatten(2, (-1, c))

        qc, kc, vc = chunks(q), chunks(k), chunks(v)
        scores = qc @ kc.transpose(-1, -2)                  # [B, H, n, c, c]  q_t . k_j
        if decay is None:                                   # G = 1: the causal mask only
            causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~causal, 0)
            k_to_end, q_from_start = kc, qc                 # [B, H, n, c, K]
            chunk_decay = q.new_ones(B, H, qc.shape[2])     # [B, H, n]
        else:
            log_a = F.pad(_log(decay, k), (0, pad)).unflatten(-1, (-1, c))   # [B, H, n, c]
            log_g = log_a.cumsum(-1)                        # [B, H, n, c]  log G_t
            scores = scores * decay_matrix(log_a)           # [B, H, n, c, c]  x G_t / G_j
            k_to_end = kc * (log_g[..., -1:] - log_g).exp()[..., None]   # x G_c / G_j
            q_from_start = qc * log_g.exp()[..., None]      # x G_t
            chunk_decay = log_g[..., -1].exp()              # [B, H, n]  G_c
        intra = scores @ vc                                 # [B, H, n, c, V]
        writes = k_to_end.transpose(-1, -2) @ vc            # [B, H, n, K, V]
        S, starts = state[0], []
        for a, w in zip(chunk_decay.unbind(2), writes.unbind(2)):   # the scan over chunks
            starts.append(S)
            S = a[..., None, None] * S + w
        starts = torch.stack(starts, 2)                     # [B, H, n, K, V]
        o = torch.baddbmm(intra.flatten(0, 2), q_from_start.flatten(0, 2), starts.flatten(0, 2))
        o = o.view(B, H, -1, o.shape[-1])[:, :, :T]         # [B, H, T, V]  intra + inter
        return o.transpose(1, 2), (S,)                      # [B, T, H, V]


class DeltaMemory(MatrixMemory):
    """DeltaNet: S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T, keys L2-normalised here."""
    token_args = {"beta": "[0, 1]"}
    layer_scalars = {"beta": (-3.0, 1.0)}              # beta starts at 0.047: small first writes
    feature_map = "elu+1, l2"                          # non-negative unit keys and queries
    dtypes = (torch.float32, torch.float64)            # the triangular solve (CPU): no float16

    def step(self, state, k, v, beta=None):
        k = F.normalize(k, dim=-1)
        beta = 1.0 if beta is None else beta[..., None]
        err = v - torch.einsum("bhkv,bhk->bhv", state[0], k)               # v - S^T k
        return (state[0] + k[..., :, None] * (beta * err)[..., None, :],)

    def forward(self, q, k, v, state, beta=None):
        """Chunkwise (WY / UT-transform) form: per chunk, the corrections U of all its tokens
        solve (I + tril(diag(beta) K K^T, -1)) U = diag(beta) (V - K S)."""
        S, outs, k = state[0], [], F.normalize(k, dim=-1)
        beta = torch.ones_like(k[..., 0]) if beta is None else beta
        chunks = (x.transpose(1, 2).split(self.chunk_size, 2) for x in (q, k, v, beta[..., None]))
        for qc, kc, vc, bc in zip(*chunks):                 # [B, H, c, D], bc [B, H, c, 1]
            A = (bc * kc @ kc.transpose(-1, -2)).tril(-1)   # [B, H, c, c]
            eye = torch.eye(qc.shape[2], dtype=q.dtype, device=q.device)
            u = torch.linalg.solve_triangular(eye + A, bc * (vc - kc @ S), upper=False)
            o = qc @ S + (qc @ kc.transpose(-1, -2)).tril() @ u               # [B, H, c, V]
            S = S + kc.transpose(-1, -2) @ u
            outs.append(o)
        return torch.cat(outs, 2).transpose(1, 2), (S,)


class SWLAMemory(MatrixMemory):
    """Sliding-window linear attention, window 2 (Eq. 28), the paper's (alpha, beta, lambda) as
    (a, b, c): S_t = a_t S_{t-1} + b_t k_{t-1} v_{t-1}^T + c_t k_t v_t^T. The state also keeps
    (k_{t-1}, v_{t-1})."""
    token_args = {"a": "[0, 1]", "b": "[0, 1]", "c": "[0, 1]"}     # a = 0: a window of 2
    layer_scalars = {"a": (5.0, 1.0), "b": (0.0, 1.0), "c": (0.0, 1.0)}   # a starts at 0.993

    def init_state(self, q, k, v):
        B, _, H, K = k.shape
        V = v.shape[-1]
        return (k.new_zeros(B, H, K, V), k.new_zeros(B, H, K), v.new_zeros(B, H, V))

    def state_size(self, K, V):
        return K * V + K + V

    def step(self, state, k, v, a=None, b=None, c=None):
        S, k_prev, v_prev = state
        S = S if a is None else S * a[..., None, None]
        kb = k_prev if b is None else k_prev * b[..., None]
        kc = k if c is None else k * c[..., None]
        return (S + kb[..., :, None] * v_prev[..., None, :] + kc[..., :, None] * v[..., None, :],
                k, v)

    def forward(self, q, k, v, state, a=None, b=None, c=None):
        """Two gated linear attentions sharing the decay a: keys c*k with values v, and keys
        b*k_{t-1} with values v_{t-1}; their states add up."""
        S, k_prev, v_prev = state
        k_shift = torch.cat([k_prev[:, None], k[:, :-1]], 1)                # [B, T, H, K]
        v_shift = torch.cat([v_prev[:, None], v[:, :-1]], 1)                # [B, T, H, V]
        kc = k if c is None else k * c[..., None]
        kb = k_shift if b is None else k_shift * b[..., None]
        linear = LinearMemory(self.chunk_size)
        o1, (S1,) = linear.forward(q, kc, v, (S,), decay=a)
        o2, (S2,) = linear.forward(q, kb, v_shift, (torch.zeros_like(S),), decay=a)
        return o1 + o2, (S1 + S2, k[:, -1], v[:, -1])


class DeepMemory(Memory):
    """A small MLP memory M(x) = x + W1 gelu(W2 x) (App. B; needs K == V), trained at test time
    by gradient steps on a per-token loss. Subclasses give the loss (``_dloss``) and the options.

    The state is (W1, W2, m1, m2), leaves [B, H, E, K], [B, H, K, E] (row-vector convention:
    M(x) = x + gelu(x @ W2) @ W1); m are the momenta (zero for DLA). The initial weights
    ``weights=(W1 [H, E, K], W2 [H, K, E])`` are learned by the layer (Decision: never zeros).
    Chunked form (``chunk_size``, Decision as in Titans and TTT): inside a chunk every gradient
    is taken at the chunk's starting weights (mini-batch gradient descent); 1 is exact.
    ``normalize=True`` (Decision; what the layers use) divides each token's gradient by the
    curvature of its loss along it (the mean eigenvalue of the Gauss-Newton J J^T, J = dM(k)/dθ),
    so lr is a fraction, as the delta rule's beta is: a write removes about lr of the error."""
    settings = ("chunk_size", "weights", "normalize")
    layer_settings = {"normalize": True}
    deep = True
    feature_map = "elu+1, l2"                          # non-negative unit keys and queries
    value_map = "rms"                                  # values of norm sqrt(K)
    dtypes = (torch.float32, torch.float64)            # float16 overflows in the inner loop
    curvature = 1                                      # d2 loss / dM(k)2 along J: 1, or 2 for L2

    def __init__(self, weights, chunk_size=16, normalize=False):
        self.weights, self.chunk_size, self.normalize = weights, chunk_size, normalize

    @property
    def stream_chunk(self):
        return self.chunk_size

    def init_state(self, q, k, v):
        B = k.shape[0]
        W1, W2 = (w.to(k.dtype).expand(B, *w.shape) for w in self.weights)   # [B, H, E, K], ...
        return (W1, W2, torch.zeros_like(W1), torch.zeros_like(W2))

    def state_size(self, K, V):
        momenta = 2 if "momentum" in self.token_args else 1
        return 2 * K * self.weights[0].shape[-2] * momenta

    def _factors(self, W1, W2, k, v):
        """A token's gradients at fixed weights are rank one: dW1_j = h_j^T dy_j and
        dW2_j = k_j^T dz_j. k, v: [B, H, c, K] -> h, dy, dz: [B, H, c, E], [.., K], [.., E]."""
        z = k @ W2                                                          # [B, H, c, E]
        h = F.gelu(z)
        dy = self._dloss(k + h @ W1, v)                                     # dloss / dM(k)
        dz = _gelu_backward(dy @ W1.transpose(-1, -2), z)                   # dy W1^T * gelu'(z)
        if self.normalize:       # |dM(k)/dθ|^2 / K = |h|^2 + |k|^2 sum_e gelu'(z_e)^2 |W1_e|^2 / K
            rows = (W1 * W1).sum(-1)[..., None] / W1.shape[-1]             # [B, H, E, 1]
            slope = _gelu_backward(torch.ones_like(z), z)                   # gelu'(z)
            c = (h * h).sum(-1, keepdim=True) + (k * k).sum(-1, keepdim=True) * (slope ** 2 @ rows)
            c = c * self.curvature                                          # [B, H, c, 1]
            dy, dz = dy / c, dz / c
        return h, dy, dz

    def _grads(self, W1, W2, k, v):
        """The per-token gradients themselves: dW1 [B, H, c, E, K], dW2 [B, H, c, K, E]."""
        h, dy, dz = self._factors(W1, W2, k, v)
        return h[..., :, None] * dy[..., None, :], k[..., :, None] * dz[..., None, :]

    def step(self, state, k, v, lr=None, momentum=None, decay=None):
        """m_t = momentum_t m_{t-1} + lr_t grad,  theta_t = decay_t theta_{t-1} - m_t."""
        W1, W2, m1, m2 = state
        g1, g2 = self._grads(W1, W2, k[:, :, None], v[:, :, None])
        lr, momentum, decay = (default if x is None else x[..., None, None]     # [B, H, 1, 1]
                               for x, default in ((lr, 1.0), (momentum, 0.0), (decay, 1.0)))
        m1, m2 = momentum * m1 + lr * g1[:, :, 0], momentum * m2 + lr * g2[:, :, 0]
        return (decay * W1 - m1, decay * W2 - m2, m1, m2)

    def _chunks(self, k, lr, momentum, decay):
        """The chunks and the coefficients of the chunked closed form. In a chunk, with G_j the
        gradients at the chunk-start weights W0 (and momentum m0), P_t and D_t the products of
        momentum and decay since the chunk started:
            m_t = P_t m0 + sum_j Mc[t, j] G_j,             Mc[t, j] = (P_t / P_j) lr_j
            W_t = D_t W0 - s_t m0 - sum_j Cc[t, j] G_j,    Cc = Ld Mc, Ld[t, r] = D_t / D_r,
                                                           s_t = sum_r (D_t / D_r) P_r
        Yields (token span, (D, P, s [B, H, n], Mc, Cc [B, H, n, n])) for each chunk of n tokens;
        the coefficients of all chunks are computed at once (the last chunk zero-padded)."""
        T, b = k.shape[1], self.chunk_size
        lr = torch.ones_like(k[..., 0]) if lr is None else lr
        log_mom = _log(torch.zeros_like(lr) if momentum is None else momentum, k)   # [B, H, T]
        ld, lm, lr = (F.pad(x, (0, (-T) % b)).unflatten(-1, (-1, b))              # [B, H, N, b]
                      for x in (_log(decay, k), log_mom, lr.transpose(1, 2)))
        Ld, P, D = decay_matrix(ld), lm.cumsum(-1).exp(), ld.cumsum(-1).exp()
        Mc = decay_matrix(lm) * lr[..., None, :]                                  # [B, H, N, b, b]
        vectors, matrices = (D, P, (Ld @ P[..., None])[..., 0]), (Mc, Ld @ Mc)
        for i, a in enumerate(range(0, T, b)):
            n = min(b, T - a)
            yield slice(a, a + n), (*(x[:, :, i, :n] for x in vectors),
                                    *(x[:, :, i, :n, :n] for x in matrices))

    def token_states(self, q, k, v, state, lr=None, momentum=None, decay=None):
        """Every token's own weights theta_t (Memory Soup mixes them): leaves [B, H, T, ...]."""
        W1, W2, m1, m2 = state
        stacks = []
        for span, (D, P, s, Mc, Cc) in self._chunks(k, lr, momentum, decay):
            kc, vc = (x[:, span].transpose(1, 2) for x in (k, v))           # [B, H, n, K]
            g1, g2 = self._grads(W1, W2, kc, vc)            # [B, H, n, E, K], [B, H, n, K, E]
            D, P, s = (x[..., None, None] for x in (D, P, s))               # [B, H, n, 1, 1]
            m1s = P * m1[:, :, None] + _rows(Mc, g1)                        # [B, H, n, E, K]
            m2s = P * m2[:, :, None] + _rows(Mc, g2)                        # [B, H, n, K, E]
            W1s = D * W1[:, :, None] - s * m1[:, :, None] - _rows(Cc, g1)
            W2s = D * W2[:, :, None] - s * m2[:, :, None] - _rows(Cc, g2)
            W1, W2, m1, m2 = W1s[:, :, -1], W2s[:, :, -1], m1s[:, :, -1], m2s[:, :, -1]
            stacks.append((W1s, W2s, m1s, m2s))
        return tuple(torch.cat(x, 2) for x in zip(*stacks)), (W1, W2, m1, m2)

    def forward(self, q, k, v, state, lr=None, momentum=None, decay=None):
        """Each token reads through its own weights theta_t (Eq. 31 / 36) without forming them
        (the "dual form" of TTT and Titans): theta_t is W0 minus a weighted sum of the chunk's
        rank-one gradients, so its readout needs only dot products with the chunk's tokens:
            q W2_t = D_t q W2_0 - s_t q m2_0 - sum_j Cc[t, j] (q . k_j) dz_j,   a = gelu(q W2_t)
            a W1_t = D_t a W1_0 - s_t a m1_0 - sum_j Cc[t, j] (a . h_j) dy_j
        No [B, H, n, E, K] stacks of per-token weights; without momentum the m0 terms vanish."""
        W1, W2, m1, m2 = state
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))                 # [B, H, T, K]
        outs = []
        for span, (D, P, s, Mc, Cc) in self._chunks(k, lr, momentum, decay):
            qc, kc, vc = qt[:, :, span], kt[:, :, span], vt[:, :, span]     # [B, H, n, K]
            h, dy, dz = self._factors(W1, W2, kc, vc)                       # [B, H, n, E/K/E]
            Dn, sn = D[..., None], s[..., None]                             # [B, H, n, 1]
            zq = (Dn * qc) @ W2 - (Cc * (qc @ kc.transpose(-1, -2))) @ dz   # [B, H, n, E]
            if momentum is not None:
                zq = zq - (sn * qc) @ m2
            a = F.gelu(zq)
            y = qc + Dn * (a @ W1) - (Cc * (a @ h.transpose(-1, -2))) @ dy  # [B, H, n, K]
            outs.append(y if momentum is None else y - sn * (a @ m1))
            c_last, m_last = Cc[..., -1, :, None], Mc[..., -1, :, None]     # [B, H, n, 1]
            g1, n1 = (h.transpose(-1, -2) @ torch.cat([c_last * dy, m_last * dy], -1)).chunk(2, -1)
            g2, n2 = (kc.transpose(-1, -2) @ torch.cat([c_last * dz, m_last * dz], -1)).chunk(2, -1)
            D, P, s = (x[..., -1, None, None] for x in (D, P, s))           # [B, H, 1, 1]
            W1, W2 = D * W1 - s * m1 - g1, D * W2 - s * m2 - g2             # the next chunk's W0
            m1, m2 = P * m1 + n1, P * m2 + n2
        return torch.cat(outs, 2).transpose(1, 2), (W1, W2, m1, m2)        # [B, T, H, K]

    def read(self, stack, q):
        W1, W2 = stack[:2]                                  # [B, H, N, E, K], [B, H, N, K, E]
        h = F.gelu(torch.einsum("bthk,bhnke->bthne", q, W2))                # [B, T, H, N, E]
        return q[:, :, :, None] + torch.einsum("bthne,bhnek->bthnk", h, W1)

    def read_each(self, stack, q):
        W1, W2 = stack[:2]                                  # [B, H, T, E, K], [B, H, T, K, E]
        h = F.gelu(torch.einsum("bthk,bhtke->bthe", q, W2))                 # [B, T, H, E]
        return q + torch.einsum("bthe,bhtek->bthk", h, W1)


def _rows(A, g):
    """sum_j A[..., t, j] g[..., j, :, :]: A [B, H, n, n], g [B, H, n, X, Y] -> [B, H, n, X, Y]."""
    return (A @ g.flatten(3)).view_as(g)


def _gelu_backward(grad, z):
    """grad * gelu'(z) in one fused op (autograd's own, differentiable twice)."""
    return torch.ops.aten.gelu_backward(grad, z)


class DLAMemory(DeepMemory):
    """Deep Linear Attention (Eq. 30-31): loss -<M(k), v>, plain gradient descent with lr_t.
    (DLA and Titans come from the authors' earlier work; this paper caches them.)"""
    token_args = {"lr": "[0, inf)"}
    layer_scalars = {"lr": (0.0, 1.0)}             # lr starts at 0.5: its writes only add

    def _dloss(self, y, v):
        return -v


class TitansMemory(DeepMemory):
    """Titans' memory (Eq. 34-36): loss ||M(k) - v||^2, with momentum and decay:
        m_t = momentum_t m_{t-1} + lr_t grad,   theta_t = decay_t theta_{t-1} - m_t.
    Decision: gradient *descent*; the paper's Eq. 34-35, read literally, ascend."""
    token_args = {"lr": "[0, inf)", "momentum": "[0, 1)", "decay": "(0, 1]"}
    layer_scalars = {"lr": (-3.0, 1.0), "momentum": (0.0, 0.5), "decay": (5.0, 1.0)}
    curvature = 2

    def _dloss(self, y, v):
        return 2 * (y - v)


MEMORIES = {"linear": LinearMemory, "delta": DeltaMemory, "swla": SWLAMemory, "dla": DLAMemory,
            "titans": TitansMemory}


def make_memory(memory, options):
    """The memory named ``memory`` and its per-token inputs: ``options`` holds per-token
    [B, T, H] tensors (named in the class's ``token_args``) and settings (``chunk_size``, and
    ``weights`` for deep memories). Unknown option names are errors."""
    check_choice("memory", memory, MEMORIES)
    cls = MEMORIES[memory]
    unknown = sorted(set(options) - set(cls.token_args) - set(cls.settings))
    if unknown:
        raise ValueError(f"memory={memory!r} does not take {unknown}; it takes per-token "
                         f"{sorted(cls.token_args)} and settings {sorted(cls.settings)}")
    if cls.deep and options.get("weights") is None:
        raise ValueError(f"memory={memory!r} needs weights=(W1 [H, E, K], W2 [H, K, E]) "
                         "(see minimc.init_deep_weights)")
    settings = {n: x for n, x in options.items() if n in cls.settings}
    if "chunk_size" in settings:
        check_positive_int(chunk_size=settings["chunk_size"])
    per_token = {n: options[n] for n in cls.token_args if options.get(n) is not None}
    return cls(**settings), per_token


def check_memory_args(q, k, v, mem, per_token, check_nan=True):
    """q, k: [B, T, H, K], v: [B, T, H, V], per-token options [B, T, H] in their ranges, one dtype
    and device; deep weights W1 [H, E, K], W2 [H, K, E]."""
    check_tensor("q", q, (None,) * 4, ("B", "T", "H", "K"))
    B, T, H, K = q.shape
    if T < 1:
        raise ValueError(f"q must hold at least one token, got T = {T}")
    check_tensor("k", k, q.shape, ("B", "T", "H", "K"))
    check_tensor("v", v, (B, T, H, None), ("B", "T", "H", "V"))
    for name, x in (("k", k), ("v", v), *per_token.items()):
        check_like(name, x, q)
    name = type(mem).__name__
    if q.dtype not in mem.dtypes:
        raise TypeError(f"{name} computes in {[str(d) for d in mem.dtypes]}, got {q.dtype}: "
                        "convert q, k, v (e.g. .float())")
    for opt, x in per_token.items():
        check_tensor(opt, x, (B, T, H), ("B", "T", "H"))
    if check_nan:
        check_finite(q=q, k=k, v=v, **per_token)
    for opt, x in per_token.items():
        check_range(opt, x, mem.token_args[opt])
    if mem.deep:
        if v.shape[-1] != K:
            raise ValueError(f"{name} maps keys to values through x + W1 gelu(W2 x): it needs "
                             f"K == V, got K = {K}, V = {v.shape[-1]}")
        w = mem.weights
        if not (isinstance(w, (tuple, list)) and len(w) == 2):
            raise ValueError(f"weights must be a pair (W1 [H, E, K], W2 [H, K, E]), got "
                             f"{type(w).__name__}")
        check_tensor("weights[0] (W1)", w[0], (H, None, K), ("H", "E", "K"))
        check_tensor("weights[1] (W2)", w[1], (H, K, w[0].shape[1]), ("H", "K", "E"))
        for i, x in enumerate(w):
            check_like(f"weights[{i}]", x, q)
        if check_nan:
            check_finite(W1=w[0], W2=w[1])


def recurrent_memory(q, k, v, memory="linear", *, scale=None, initial_state=None,
                     reference=False, check_nan=True, **memory_options):
    """Run one memory over a sequence: (o [B, T, H, V], final state). ``reference=True`` runs
    the token loop (the definition) instead of the fast form. Queries are multiplied by
    ``scale`` (default K ** -0.5) before readout; ``initial_state`` is a state as returned."""
    mem, opts = make_memory(memory, memory_options)
    check_memory_args(q, k, v, mem, opts, check_nan)
    if scale is not None:
        check_number("scale", scale)
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    state = mem.init_state(q, k, v)
    if initial_state is not None:
        check_state("initial_state", initial_state, state)
        state = tuple(initial_state)
    return (mem.recurrent if reference else mem.forward)(q, k, v, state, **opts)


def init_deep_weights(H, K, expansion=4, generator=None, dtype=torch.float32):
    """Random initial weights theta_0 = (W1 [H, E, K], W2 [H, K, E]) for a deep memory.
    (Decision: never zeros: with W1 = W2 = 0 the DLA readout ignores the query.)"""
    E = expansion * K
    W1 = torch.randn(H, E, K, generator=generator, dtype=dtype) * E ** -0.5
    W2 = torch.randn(H, K, E, generator=generator, dtype=dtype) * K ** -0.5
    return W1, W2
