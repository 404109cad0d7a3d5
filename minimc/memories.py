"""Recurrent memories (paper §2, §4.3): key->value maps that learn at test time.

Every memory shares one small interface, so caching code never asks which memory it holds.
A *state* is a tuple of tensors, each ``[B, H, ...]``; a *stack* of states has an extra axis
after ``H`` (``[B, H, N, ...]``: N cached states, or one state per token).

    init_state(q, k, v)             zero state (deep memory: its learned initial weights)
    step(state, k, v, **opts_t)     one token's update (the definition)
    recurrent(q, k, v, state, **o)  token loop: (o [B, T, H, V], final state)
    forward(q, k, v, state, **o)    fast form, same result (deep memory: chunked gradient steps)
    token_states(q, k, v, state)    every token's own state, a stack (Memory Soup needs it)
    read(stack, q)                  every query read by every state: [B, T, H, N, V]
    read_each(stack, q)             token t read by state t:         [B, T, H, V]
    read_cached(stack, q, gates, blocks, selected)  sum_i gates_i M_i(q) (cached part of Eq. 9)

Queries arrive already multiplied by ``scale``. Per-token options (decay, beta, lr, ...) are
``[B, T, H]`` tensors named in ``token_args``; ``None`` means the default.
"""
import math
from functools import partial

import torch
import torch.nn.functional as F

from . import kernel


def decay_matrix(log_a):
    """L[..., t, j] = prod_{j < l <= t} a_l for j <= t, else 0. log_a: [..., T] -> [..., T, T]."""
    cs = log_a.cumsum(-1)
    diff = cs[..., :, None] - cs[..., None, :]                            # [..., T, T]
    causal = torch.ones(diff.shape[-2:], dtype=torch.bool, device=diff.device).tril()
    return diff.masked_fill(~causal, float("-inf")).exp()


def _log(x, like):
    """log of a per-token scalar [B, T, H] as [B, H, T]; None means 1 (no decay)."""
    if x is None:
        return like.new_zeros(like.shape[0], like.shape[2], like.shape[1])
    return x.clamp_min(1e-30).log().transpose(1, 2)


class Memory:
    token_args = ()
    matrix = False

    def init_state(self, q, k, v):
        raise NotImplementedError

    def step(self, state, k, v, **opts):
        raise NotImplementedError

    def forward(self, q, k, v, state, **opts):
        return self.recurrent(q, k, v, state, **opts)

    def state_size(self, K, V):
        raise NotImplementedError

    def recurrent(self, q, k, v, state, **opts):
        """The definition: update with token t, then read with query t (Eq. 1)."""
        outs = []
        for t, (qt, kt, vt) in enumerate(zip(q.unbind(1), k.unbind(1), v.unbind(1))):
            state = self.step(state, kt, vt, **_at(opts, t))
            outs.append(self.read_each(_stack([state]), qt[:, None]))
        return torch.cat(outs, 1), state

    def token_states(self, q, k, v, state, **opts):
        states = []
        for t in range(q.shape[1]):
            state = self.step(state, k[:, t], v[:, t], **_at(opts, t))
            states.append(state)
        return _stack(states), state

    def read_cached(self, stack, q, gates, blocks=None, selected=None, backend="torch"):
        """sum_i gates[..., i] M_i(q) (cached part of Eq. 9 / 17). Generic path: every query reads
        every state it may read, then the reads are weighed (SSC's zero gates mask the rest).
        Matrix memories override this with a blocked (and, for SSC, sparse) readout."""
        if backend != "torch":
            raise ValueError(f"backend={backend!r} is only available for matrix memories; use 'torch'")
        blocks = [(0, q.shape[1], gates.shape[-1])] if blocks is None else blocks
        return torch.cat([torch.einsum("bthn,bthnv->bthv", gates[:, a:b, :, :n],
                                       self.read(tuple(x[:, :, :n] for x in stack), q[:, a:b]))
                          for a, b, n in blocks], 1)                        # block: tokens a:b read [:n]


def _at(opts, t):
    return {n: (x[:, t] if x is not None else None) for n, x in opts.items()}


def _stack(states):
    """list of states -> one stacked state, new axis 2: leaves [B, H, N, ...]."""
    return tuple(torch.stack(leaves, 2) for leaves in zip(*states))


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

    def read_cached(self, stack, q, gates, blocks=None, selected=None, backend="torch"):
        if selected is not None and backend == "torch":                     # SSC: read only the chosen
            return kernel.sparse_readout(q, stack[0], gates.gather(-1, selected.clamp_min(0)), selected)
        return kernel.cached_readout(q, stack[0], gates, blocks, backend=backend)  # Triton skips zero-gate tiles


class LinearMemory(MatrixMemory):
    """Linear attention, Eq. 2 / 12: S_t = a_t S_{t-1} + k_t v_t^T, y_t = S_t^T q_t.

    ``decay`` a_t in (0, 1] ([B, T, H]); None is plain linear attention (a_t = 1)."""
    token_args = ("decay",)

    def __init__(self, chunk_size=64):
        self.chunk_size = chunk_size

    def step(self, state, k, v, decay=None):
        S = state[0] if decay is None else state[0] * decay[..., None, None]
        return (S + k[..., :, None] * v[..., None, :],)

    def forward(self, q, k, v, state, decay=None):
        """Chunkwise-parallel form: all chunks at once for the intra-chunk part (Q K^T * L) V and each
        chunk's write K^T V; a short scan over chunks for the states; then inter-chunk Q S_chunk_start."""
        B, T, H, K = q.shape
        C = min(self.chunk_size, T)
        pad = (-T) % C                                                      # zero keys/values write nothing
        qc, kc, vc = ((F.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x).transpose(1, 2).contiguous().unflatten(2, (-1, C))
                      for x in (q, k, v))                                   # [B, H, n, C, D]
        if decay is None:                                                   # L is the causal mask
            L = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
            scores, writes = (qc @ kc.transpose(-1, -2)).masked_fill_(~L, 0), kc.transpose(-1, -2) @ vc
            a, qd = torch.ones_like(writes[..., 0, 0]), qc                  # chunk decay 1, queries as is
        else:
            log_a = F.pad(_log(decay, k), (0, pad)).unflatten(-1, (-1, C)) # [B, H, n, C]
            g = log_a.cumsum(-1)                                            # decay from chunk start to t
            scores = (qc @ kc.transpose(-1, -2)) * decay_matrix(log_a)     # [B, H, n, C, C]
            writes = (kc * (g[..., -1:] - g).exp()[..., None]).transpose(-1, -2) @ vc  # [B, H, n, K, V]
            a, qd = g[..., -1].exp(), qc * g.exp()[..., None]
        S, starts = state[0], []
        for a_i, w in zip(a.unbind(2), writes.unbind(2)):                  # scan over chunks
            starts.append(S)
            S = a_i[..., None, None] * S + w
        o = torch.baddbmm(*(x.flatten(0, 2) for x in (scores @ vc, qd, torch.stack(starts, 2))))  # intra + inter
        return o.view(B, H, -1, o.shape[-1])[:, :, :T].transpose(1, 2), (S,)   # [B, T, H, V]


class DeltaMemory(MatrixMemory):
    """DeltaNet: S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T, keys L2-normalised here."""
    token_args = ("beta",)

    def __init__(self, chunk_size=64):
        self.chunk_size = chunk_size

    def step(self, state, k, v, beta=None):
        k = F.normalize(k, dim=-1)
        beta = 1.0 if beta is None else beta[..., None]
        err = v - torch.einsum("bhkv,bhk->bhv", state[0], k)               # v - S^T k
        return (state[0] + k[..., :, None] * (beta * err)[..., None, :],)

    def forward(self, q, k, v, state, beta=None):
        """Chunkwise (WY / UT-transform) form: solve (I + tril(diag(beta) K K^T, -1)) U = beta (V - K S)."""
        S, outs, k = state[0], [], F.normalize(k, dim=-1)
        beta = torch.ones_like(k[..., 0]) if beta is None else beta
        chunks = (x.transpose(1, 2).split(self.chunk_size, 2) for x in (q, k, v, beta[..., None]))
        for qc, kc, vc, bc in zip(*chunks):                                 # [B, H, C, D], bc [B, H, C, 1]
            A = (bc * kc @ kc.transpose(-1, -2)).tril(-1)                   # [B, H, C, C]
            eye = torch.eye(qc.shape[2], dtype=q.dtype, device=q.device)
            u = torch.linalg.solve_triangular(eye + A, bc * (vc - kc @ S), upper=False)
            o = qc @ S + (qc @ kc.transpose(-1, -2)).tril() @ u
            S = S + kc.transpose(-1, -2) @ u
            outs.append(o)
        return torch.cat(outs, 2).transpose(1, 2), (S,)


class SWLAMemory(MatrixMemory):
    """Sliding-window linear attention, window 2 (Eq. 28):
    S_t = a_t S_{t-1} + b_t k_{t-1} v_{t-1}^T + c_t k_t v_t^T. The state also keeps (k_{t-1}, v_{t-1})."""
    token_args = ("a", "b", "c")

    def __init__(self, chunk_size=64):
        self.linear = LinearMemory(chunk_size)

    def init_state(self, q, k, v):
        B, _, H, K = k.shape
        return (k.new_zeros(B, H, K, v.shape[-1]), k.new_zeros(B, H, K), v.new_zeros(B, H, v.shape[-1]))

    def state_size(self, K, V):
        return K * V + K + V

    def step(self, state, k, v, a=None, b=None, c=None):
        S, k_prev, v_prev = state
        S = S if a is None else S * a[..., None, None]
        kb = k_prev if b is None else k_prev * b[..., None]
        kc = k if c is None else k * c[..., None]
        return (S + kb[..., :, None] * v_prev[..., None, :] + kc[..., :, None] * v[..., None, :], k, v)

    def forward(self, q, k, v, state, a=None, b=None, c=None):
        """Two gated linear attentions sharing the decay a: keys c*k with values v, and keys
        b*k_{t-1} with values v_{t-1}; their states add up."""
        S, k_prev, v_prev = state
        k_shift = torch.cat([k_prev[:, None], k[:, :-1]], 1)                # [B, T, H, K]
        v_shift = torch.cat([v_prev[:, None], v[:, :-1]], 1)                # [B, T, H, V]
        kc = k if c is None else k * c[..., None]
        kb = k_shift if b is None else k_shift * b[..., None]
        o1, (S1,) = self.linear.forward(q, kc, v, (S,), decay=a)
        o2, (S2,) = self.linear.forward(q, kb, v_shift, (torch.zeros_like(S),), decay=a)
        return o1 + o2, (S1 + S2, k[:, -1], v[:, -1])


class DeepMemory(Memory):
    """A small MLP memory M(x) = x + W1 gelu(W2 x) (needs K == V), trained at test time.

    objective="dot": DLA (Eq. 30-31), loss -<M(k), v>, plain gradient descent.
    objective="l2":  Titans (Eq. 34-36), loss ||M(k) - v||^2, with momentum and decay:
        m_t = momentum_t m_{t-1} + lr_t grad,   theta_t = decay_t theta_{t-1} - m_t.
    (Decision: gradient *descent*; the paper's Eq. 34-35 literally ascend.)
    The initial weights ``weights=(W1 [H, E, K], W2 [H, K, E])`` are learned by the layer.
    The state is (W1, W2, m1, m2) with leaves [B, H, E, K], [B, H, K, E] (row-vector convention:
    M(x) = x + gelu(x @ W2) @ W1)."""
    token_args = ("lr", "momentum", "decay")

    def __init__(self, weights, objective="l2", chunk_size=16):
        if objective not in ("dot", "l2"):
            raise ValueError(f"objective must be 'dot' or 'l2', got {objective!r}")
        self.weights, self.objective, self.chunk_size = weights, objective, chunk_size

    def init_state(self, q, k, v):
        B = k.shape[0]
        W1, W2 = (w.to(k.dtype).expand(B, *w.shape) for w in self.weights)    # [B, H, E, K], [B, H, K, E]
        return (W1, W2, torch.zeros_like(W1), torch.zeros_like(W2))

    def state_size(self, K, V):
        return 2 * K * self.weights[0].shape[-2] * (2 if self.objective == "l2" else 1)

    def _grads(self, W1, W2, k, v):
        """Closed-form per-token gradients of the loss at fixed weights.
        k, v: [B, H, C, K]; W1 [B, H, E, K]; W2 [B, H, K, E] -> dW1 [B, H, C, E, K], dW2 [B, H, C, K, E]."""
        z = k @ W2                                                          # [B, H, C, E]
        h = F.gelu(z)
        dy = -v if self.objective == "dot" else 2 * (k + h @ W1 - v)        # dloss / dM(k)
        phi = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        dz = (dy @ W1.transpose(-1, -2)) * (0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * phi)
        return h[..., :, None] * dy[..., None, :], k[..., :, None] * dz[..., None, :]

    def step(self, state, k, v, lr=None, momentum=None, decay=None):
        W1, W2, m1, m2 = state
        g1, g2 = self._grads(W1, W2, k[:, :, None], v[:, :, None])
        s = lambda x, d: d if x is None else x[..., None, None]            # noqa: E731
        lr_, mom, dec = s(lr, 1.0), s(momentum, 0.0), s(decay, 1.0)
        m1, m2 = mom * m1 + lr_ * g1[:, :, 0], mom * m2 + lr_ * g2[:, :, 0]
        return (dec * W1 - m1, dec * W2 - m2, m1, m2)

    def token_states(self, q, k, v, state, lr=None, momentum=None, decay=None):
        """Chunked form: inside a chunk every gradient G_j is taken at the chunk-start weights
        (mini-batch gradient descent, as in Titans); both recurrences are then solved in closed form:
            m_t     = P_t m_0 + sum_j Lm[t, j] lr_j G_j                (P_t = prod momentum)
            theta_t = D_t theta_0 - sum_r Ld[t, r] m_r                 (D_t = prod decay)
        chunk_size = 1 is the exact token recurrence."""
        lr = torch.ones_like(k[..., 0]) if lr is None else lr
        log_m = _log(torch.zeros_like(lr) if momentum is None else momentum, k)
        log_d = _log(decay, k)
        W1, W2, m1, m2 = state
        ex = lambda x: x[..., None, None]                                   # noqa: E731
        stacks = []
        chunks = [x.split(self.chunk_size, -1) for x in (log_d, log_m, lr.transpose(1, 2))]   # [B, H, C]
        for kc, vc, ld, lm, lrc in zip(*(x.transpose(1, 2).split(self.chunk_size, 2) for x in (k, v)), *chunks):
            g1, g2 = self._grads(W1, W2, kc, vc)                            # [B, H, C, E, K], [B, H, C, K, E]
            Ld, P = decay_matrix(ld), lm.cumsum(-1).exp()                   # [B, H, C, C], [B, H, C]
            Mc = decay_matrix(lm) * lrc[..., None, :]                       # [B, H, C, C]
            m1s = ex(P) * m1[:, :, None] + torch.einsum("bhtj,bhjek->bhtek", Mc, g1)
            m2s = ex(P) * m2[:, :, None] + torch.einsum("bhtj,bhjke->bhtke", Mc, g2)
            D, c0, C = ld.cumsum(-1).exp(), (Ld @ P[..., None])[..., 0], Ld @ Mc
            W1s = ex(D) * W1[:, :, None] - ex(c0) * m1[:, :, None] - torch.einsum("bhtj,bhjek->bhtek", C, g1)
            W2s = ex(D) * W2[:, :, None] - ex(c0) * m2[:, :, None] - torch.einsum("bhtj,bhjke->bhtke", C, g2)
            W1, W2, m1, m2 = W1s[:, :, -1], W2s[:, :, -1], m1s[:, :, -1], m2s[:, :, -1]
            stacks.append((W1s, W2s, m1s, m2s))
        return tuple(torch.cat(x, 2) for x in zip(*stacks)), (W1, W2, m1, m2)

    def forward(self, q, k, v, state, **opts):
        """Each token reads through its own weights theta_t (Eq. 31 / 36)."""
        stack, state = self.token_states(q, k, v, state, **opts)
        return self.read_each(stack, q), state

    def read(self, stack, q):
        W1, W2 = stack[:2]                                                  # [B, H, N, E, K], [B, H, N, K, E]
        h = F.gelu(torch.einsum("bthk,bhnke->bthne", q, W2))
        return q[:, :, :, None] + torch.einsum("bthne,bhnek->bthnk", h, W1)

    def read_each(self, stack, q):
        W1, W2 = stack[:2]                                                  # [B, H, T, E, K], [B, H, T, K, E]
        h = F.gelu(torch.einsum("bthk,bhtke->bthe", q, W2))
        return q + torch.einsum("bthe,bhtek->bthk", h, W1)


MEMORIES = {"linear": LinearMemory, "delta": DeltaMemory, "swla": SWLAMemory,
            "dla": partial(DeepMemory, objective="dot"), "titans": partial(DeepMemory, objective="l2")}


def make_memory(memory, options):
    """Split ``options`` into the memory's per-token inputs ([B, T, H] tensors) and its settings."""
    if memory not in MEMORIES:
        raise ValueError(f"memory must be one of {sorted(MEMORIES)}, got {memory!r}")
    cls = MEMORIES[memory]
    names = getattr(cls, "func", cls).token_args                           # classes or partials
    per_token = {n: options[n] for n in names if options.get(n) is not None}
    settings = {n: x for n, x in options.items() if n not in names}
    try:
        return cls(**settings), per_token
    except TypeError as e:
        raise TypeError(f"memory={memory!r} got unexpected options {sorted(settings)}: {e}") from None


def recurrent_memory(q, k, v, memory="linear", *, scale=None, initial_state=None, reference=False,
                     check_nan=True, **memory_options):
    """Run one memory over a sequence: (o [B, T, H, V], final state). ``reference=True`` runs the
    token loop (the definition) instead of the fast form. Queries are multiplied by ``scale``
    (default K ** -0.5) before readout."""
    from .checks import check_memory_args
    check_memory_args(q, k, v, memory, memory_options, check_nan)
    mem, opts = make_memory(memory, memory_options)
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    state = mem.init_state(q, k, v) if initial_state is None else tuple(initial_state)
    return (mem.recurrent if reference else mem.forward)(q, k, v, state, **opts)


def init_deep_weights(H, K, expansion=4, generator=None, dtype=torch.float32):
    """Random initial weights theta_0 = (W1 [H, E, K], W2 [H, K, E]) for a deep memory.
    (Decision: never zeros: with W1 = W2 = 0 the DLA readout ignores the query.)"""
    E = expansion * K
    W1 = torch.randn(H, E, K, generator=generator, dtype=dtype) * E ** -0.5
    W2 = torch.randn(H, K, E, generator=generator, dtype=dtype) * K ** -0.5
    return W1, W2
