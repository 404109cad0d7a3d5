"""Recurrent memories: the fast forms equal the token loops (the definitions), split-and-resume,
and agreement with independent references (fla's naive kernels, autograd for deep memory)."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import minimc
from minimc.memories import DLAMemory, TitansMemory
from _inputs import DEEP, MEMORIES, inputs


def close(a, b, tol=1e-10):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err < tol, f"max abs difference {err:.3g} >= {tol}"


@pytest.mark.parametrize("T", [1, 63, 100])
@pytest.mark.parametrize("memory", MEMORIES + ["linear-decay", "dla-normalize",
                                               "titans-normalize"])
def test_fast_form_equals_token_loop(memory, T):
    name = memory.split("-")[0]
    q, k, v, u, opts = inputs(name, T=T, decay="decay" in memory)
    if "normalize" in memory:
        opts["normalize"] = True
    chunk = 1 if name in DEEP else 16                                      # deep: b = 1 is exact
    o_ref, s_ref = minimc.recurrent_memory(q, k, v, name, reference=True, **opts)
    o, s = minimc.recurrent_memory(q, k, v, name, chunk_size=chunk, **opts)
    close(o, o_ref)
    for a, b in zip(s, s_ref):
        close(a, b)
    if name not in DEEP:                                                    # default chunk (64) too
        close(minimc.recurrent_memory(q, k, v, name, **opts)[0], o_ref)


@pytest.mark.parametrize("memory", MEMORIES)
def test_token_states_end_in_final_state(memory):
    q, k, v, u, opts = inputs(memory, T=20)
    mem, per_token = minimc.make_memory(memory, opts)
    q = q * q.shape[-1] ** -0.5
    stack, final = mem.token_states(q, k, v, mem.init_state(q, k, v), **per_token)
    o, final2 = mem.forward(q, k, v, mem.init_state(q, k, v), **per_token)
    for x, f in zip(stack, final2):
        close(x[:, :, -1], f)
    close(mem.read_each(stack, q), o)                                      # token t reads state t


@pytest.mark.parametrize("memory", MEMORIES)
def test_split_and_resume_with_initial_state(memory):
    q, k, v, u, opts = inputs(memory, T=50)
    whole, s_whole = minimc.recurrent_memory(q, k, v, memory, **opts)

    def cut(d, a, b):
        return {n: (x[:, a:b] if n != "weights" else x) for n, x in d.items()}

    o1, s1 = minimc.recurrent_memory(q[:, :32], k[:, :32], v[:, :32], memory, **cut(opts, 0, 32))
    o2, s2 = minimc.recurrent_memory(q[:, 32:], k[:, 32:], v[:, 32:], memory, initial_state=s1,
                                     **cut(opts, 32, 50))
    close(torch.cat([o1, o2], 1), whole)
    for a, b in zip(s2, s_whole):
        close(a, b)


def test_decay_one_is_plain_linear_attention():
    q, k, v, u, opts = inputs("linear", T=40)
    plain, _ = minimc.recurrent_memory(q, k, v, "linear")
    ones, _ = minimc.recurrent_memory(q, k, v, "linear", decay=torch.ones_like(q[..., 0]))
    close(plain, ones)
    decayed, _ = minimc.recurrent_memory(q, k, v, "linear", decay=torch.full_like(q[..., 0], 0.5))
    assert (decayed - plain).abs().max() > 1e-3                            # decay does something


def test_swla_with_b_zero_is_gated_linear_attention():
    q, k, v, u, opts = inputs("swla", T=40)
    o, _ = minimc.recurrent_memory(q, k, v, "swla", a=opts["a"], b=torch.zeros_like(opts["b"]))
    ref, _ = minimc.recurrent_memory(q, k, v, "linear", decay=opts["a"])
    close(o, ref)


def _fla(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return __import__(name, fromlist=["_"])


def test_linear_attention_matches_fla_naive():
    fla = _fla("fla.ops.linear_attn.naive")
    q, k, v, u, _ = inputs("linear", B=2, T=70, H=3, K=16, V=32, dtype=torch.float32)
    o, s = minimc.recurrent_memory(q, k, v, "linear")
    o_ref, s_ref = fla.naive_recurrent_linear_attn(q, k, v, output_final_state=True)
    close(o, o_ref, 1e-4)
    close(s[0], s_ref, 1e-4)


def test_delta_rule_matches_fla_naive():
    fla = _fla("fla.ops.delta_rule.naive")
    q, k, v, u, opts = inputs("delta", B=2, T=70, H=3, K=16, V=32, dtype=torch.float32)
    o, s = minimc.recurrent_memory(q, k, v, "delta", **opts)
    kn = F.normalize(k, dim=-1)                                      # minimc normalises keys itself
    o_ref, s_ref = fla.delta_rule_recurrence(*(x.transpose(1, 2) for x in (q, kn, v, opts["beta"])))
    close(o, o_ref.transpose(1, 2), 1e-4)                                   # fla: [B, H, T, D]
    close(s[0], s_ref, 1e-4)


def _minibatch_reference(mem, q, k, v, lr, momentum, decay, b):
    """Deep memory with mini-batch gradient steps, gradients from autograd (not the closed form).
    With ``mem.normalize`` each gradient is divided by (2 for l2) ||dM(k_t)/dtheta||_F^2 / K."""
    W1, W2, m1, m2 = mem.init_state(q, k, v)
    outs = []
    loss_fn = ((lambda y, v: -(y * v).sum()) if isinstance(mem, DLAMemory)
               else (lambda y, v: ((y - v) ** 2).sum()))
    for a in range(0, q.shape[1], b):
        grads = []
        for t in range(a, min(a + b, q.shape[1])):
            w1, w2 = W1.detach().requires_grad_(), W2.detach().requires_grad_()
            kt = k[:, t, :, None, :]                                        # [B, H, 1, K]
            y = kt + F.gelu(kt @ w2) @ w1
            g = torch.autograd.grad(loss_fn(y, v[:, t, :, None, :]), (w1, w2), retain_graph=True)
            if mem.normalize:                                               # Jacobian row by row
                K = y.shape[-1]
                sq = sum(sum(x.pow(2).sum((-1, -2))
                             for x in torch.autograd.grad(y[..., 0, i].sum(), (w1, w2),
                                                          retain_graph=True))
                         for i in range(K))                                 # ||J||_F^2: [B, H]
                c = (1 if isinstance(mem, DLAMemory) else 2) * sq / K
                g = tuple(x / c[..., None, None] for x in g)
            grads.append(g)
        for j, t in enumerate(range(a, min(a + b, q.shape[1]))):
            def e(x):
                return x[:, t, :, None, None]

            m1, m2 = e(momentum) * m1 + e(lr) * grads[j][0], e(momentum) * m2 + e(lr) * grads[j][1]
            W1, W2 = e(decay) * W1 - m1, e(decay) * W2 - m2
            qt = q[:, t, :, None, :]
            outs.append((qt + F.gelu(qt @ W2) @ W1)[:, :, 0])
        W1, W2 = W1.detach(), W2.detach()
    return torch.stack(outs, 1)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("objective", ["dot", "l2"])
@pytest.mark.parametrize("b", [1, 4, 16])
def test_deep_chunked_form_is_minibatch_gradient_descent(objective, b, normalize):
    q, k, v, u, opts = inputs("titans", T=37)
    mem = {"dot": DLAMemory, "l2": TitansMemory}[objective](opts["weights"], chunk_size=b,
                                                            normalize=normalize)
    o, _ = mem.forward(q, k, v, mem.init_state(q, k, v), lr=opts["lr"], momentum=opts["momentum"],
                       decay=opts["decay"])
    ref = _minibatch_reference(mem, q, k, v, opts["lr"], opts["momentum"], opts["decay"], b)
    close(o, ref)


def test_deep_readout_depends_on_query():
    q, k, v, u, opts = inputs("dla", T=5)
    o1, _ = minimc.recurrent_memory(q, k, v, "dla", **opts)
    o2, _ = minimc.recurrent_memory(2 * q, k, v, "dla", **opts)
    assert not torch.allclose(o1, o2 / 2)                                  # M(q) is not linear in q


@pytest.mark.parametrize("memory", MEMORIES + ["dla-normalize", "titans-normalize"])
def test_gradcheck_memories(memory):
    name = memory.split("-")[0]
    q, k, v, u, opts = inputs(name, B=1, T=6, H=1, K=3, requires_grad=True)
    opts = {**opts, "chunk_size": 4, **({"normalize": True} if "normalize" in memory else {})}

    def f(q, k, v):
        return minimc.recurrent_memory(q, k, v, name, **opts)[0]
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_soup_token_states_equal_the_dual_form():
    """forward (dual form, no per-token weights) reads what token_states' weights read."""
    for name in ("dla", "titans"):
        q, k, v, u, opts = inputs(name, T=37)
        mem, per_token = minimc.make_memory(name, {**opts, "chunk_size": 8, "normalize": True})
        state = mem.init_state(q, k, v)
        stack, final = mem.token_states(q, k, v, state, **per_token)
        o, final2 = mem.forward(q, k, v, state, **per_token)
        close(mem.read_each(stack, q), o)
        for a, b in zip(final, final2):
            close(a, b)
