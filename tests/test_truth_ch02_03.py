"""Facts chapters 2 and 3 state about the library and the math (issues 11, 12 and 13).

Chapter 2: the delta rule's chunked form is one triangular solve per chunk (the UT transform),
and reading S after instead of before a token's own write is a different computation; minimc's
decay is one scalar per token and head (not GLA's per-dimension gate); the delta rule's layer
recipe (non-negative unit keys, beta starting near 0.047) and why beta must start small on such
keys. Chapter 3: the deep memory's chunked closed form and dual form, built independently of
minimc, equal minimc's forward; the normalised step divides by kappa tr(J J^T) / K; minimc's
Titans step descends and the paper's literal sign ascends; the deep layers' recipe; the issue-12
diagnosis at initialisation (raw chunk steps overshoot, the normalised step does not); the
worked example of the exercise.
"""
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import minimc
from minimc.layers import MemoryLayer, tiny_lm
from minimc.memories import (DeltaMemory, DLAMemory, TitansMemory, decay_matrix,
                             init_deep_weights)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import diagnose_memories as dm  # noqa: E402

D64 = dict(dtype=torch.float64)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), **D64)


# ---- chapter 2 -----------------------------------------------------------------------------------

def delta_chunked(q, k, v, beta, C, strict=True):
    """One head: q, k [T, K], v [T, V], beta [T]; (I + tril(diag(b) K K^T, -1)) U = diag(b)(V - KS).
    strict=False keeps the diagonal: the error read after the token's own write (a bug)."""
    k = F.normalize(k, dim=-1)
    S, outs = q.new_zeros(k.shape[1], v.shape[1]), []
    for a in range(0, len(q), C):
        qc, kc, vc, bc = q[a:a + C], k[a:a + C], v[a:a + C], beta[a:a + C, None]
        A = (bc * (kc @ kc.T)).tril(-1 if strict else 0)
        U = torch.linalg.solve_triangular(torch.eye(len(kc), **D64) + A, bc * (vc - kc @ S),
                                          upper=False)
        outs.append(qc @ S + (qc @ kc.T).tril() @ U)
        S = S + kc.T @ U
    return torch.cat(outs), S


@pytest.mark.parametrize("T", [1, 16, 37, 100])
@pytest.mark.parametrize("C", [1, 4, 16, 64])
def test_delta_rule_chunks_are_one_triangular_solve(T, C):
    B, H, K, V = 2, 2, 5, 3
    q, k, v = randn(B, T, H, K, seed=1), randn(B, T, H, K, seed=2), randn(B, T, H, V, seed=3)
    beta = torch.rand(B, T, H, generator=torch.Generator().manual_seed(4), **D64)
    o_ref, (S_ref,) = minimc.recurrent_memory(q, k, v, "delta", beta=beta, scale=1.0,
                                              reference=True)
    for b in range(B):
        for h in range(H):
            o, S = delta_chunked(q[b, :, h], k[b, :, h], v[b, :, h], beta[b, :, h], C)
            torch.testing.assert_close(o, o_ref[b, :, h])
            torch.testing.assert_close(S, S_ref[b, h])


def test_reading_s_after_the_write_in_the_error_is_wrong():
    q, k, v = randn(20, 4, seed=1), randn(20, 4, seed=2), randn(20, 3, seed=3)
    beta = torch.full((20,), 0.5, **D64)
    o, _ = delta_chunked(q, k, v, beta, 8)
    o_bug, _ = delta_chunked(q, k, v, beta, 8, strict=False)
    assert not torch.allclose(o, o_bug)


def test_decay_is_one_scalar_per_token_and_head_not_per_dimension():
    q = randn(1, 5, 2, 4)
    assert set(minimc.MEMORIES["linear"].token_args) == {"decay"}
    with pytest.raises(ValueError, match=r"\[B, T, H\]"):
        minimc.recurrent_memory(q, q, q, "linear", decay=torch.rand(1, 5, 2, 4, **D64))


def delta_layer_inputs(changes=None):
    x, _ = dm.task_batch(step=10_000, seed=0, batch_size=8, seq_len=32, num_kv_pairs=4)
    with dm.recipe(**(changes or {})):
        torch.manual_seed(0)
        model = tiny_lm("delta")
        _, _, _, k, _, opts = dm.mixer_inputs(model, x)
    return k, opts["beta"]


def test_delta_layer_recipe_non_negative_unit_keys_small_first_beta():
    assert DeltaMemory.feature_map == "elu+1, l2"
    assert DeltaMemory.layer_scalars == {"beta": (-3.0, 1.0)}
    k, beta = delta_layer_inputs()
    assert (k >= 0).all() and torch.allclose(k.norm(dim=-1), torch.ones(()))
    assert abs(beta.mean().item() - 1 / (1 + math.exp(3))) < 0.03
    cos = torch.einsum("bthk,bshk->bhts", k, k)                          # [B, H, T, T]
    off = cos[..., ~torch.eye(cos.shape[-1], dtype=torch.bool)]
    assert off.mean() > 0.5                          # elu+1 keys of a fresh layer: near parallel
    k_old, beta_old = delta_layer_inputs(dm.OLD)     # issue 12: signed unit keys, beta ~ 0.5
    off_old = torch.einsum("bthk,bshk->bhts", k_old, k_old)[..., ~torch.eye(32, dtype=bool)]
    assert abs(off_old.mean()) < 0.2 and abs(beta_old.mean().item() - 0.5) < 0.05


# ---- chapter 3 -----------------------------------------------------------------------------------

def gelu_slope(z):
    return 0.5 * (1 + torch.erf(z / 2 ** 0.5)) + z * torch.exp(-z ** 2 / 2) / (2 * math.pi) ** 0.5


def factors(W1, W2, k, v, objective, normalize):
    z = k @ W2
    h = F.gelu(z)
    delta = -v if objective == "dot" else 2 * (k + h @ W1 - v)
    dz = (delta @ W1.transpose(-1, -2)) * gelu_slope(z)
    if normalize:
        rows = (W1 * W1).sum(-1) / W1.shape[-1]
        c = (h * h).sum(-1) + (k * k).sum(-1) * (gelu_slope(z) ** 2 * rows[..., None, :]).sum(-1)
        c = c * (1 if objective == "dot" else 2)
        delta, dz = delta / c[..., None], dz / c[..., None]
    return h, delta, dz


def coefficients(lr, momentum, decay):
    log = lambda x: x.clamp_min(1e-30).log()                            # noqa: E731
    L_mu, L_alpha = decay_matrix(log(momentum)), decay_matrix(log(decay))
    Mc = L_mu * lr[None, :]
    return decay.cumprod(0), momentum.cumprod(0), L_alpha @ momentum.cumprod(0), Mc, L_alpha @ Mc


def stacked(q, k, v, W1, W2, lr, momentum, decay, b, objective, normalize):
    """Every token's weights from the chunked closed form, then each token reads its own."""
    m1, m2, ys = torch.zeros_like(W1), torch.zeros_like(W2), []
    rows = lambda A, g: torch.einsum("tj,jxy->txy", A, g)               # noqa: E731
    for a in range(0, len(k), b):
        s_ = slice(a, a + b)
        D, P, s, Mc, Cc = coefficients(lr[s_], momentum[s_], decay[s_])
        D, P, s = (x[:, None, None] for x in (D, P, s))
        h, delta, dz = factors(W1, W2, k[s_], v[s_], objective, normalize)
        g1, g2 = h[:, :, None] * delta[:, None, :], k[s_][:, :, None] * dz[:, None, :]
        M1, M2 = P * m1 + rows(Mc, g1), P * m2 + rows(Mc, g2)
        T1, T2 = D * W1 - s * m1 - rows(Cc, g1), D * W2 - s * m2 - rows(Cc, g2)
        ys.append(q[s_] + (F.gelu(q[s_, None, :] @ T2) @ T1)[:, 0])
        W1, W2, m1, m2 = T1[-1], T2[-1], M1[-1], M2[-1]
    return torch.cat(ys)


def dual(q, k, v, W1, W2, lr, momentum, decay, b, objective, normalize):
    """The same readouts from scores and rank-one factors, no per-token weights."""
    m1, m2, ys = torch.zeros_like(W1), torch.zeros_like(W2), []
    for a in range(0, len(k), b):
        s_ = slice(a, a + b)
        qc, kc = q[s_], k[s_]
        D, P, s, Mc, Cc = coefficients(lr[s_], momentum[s_], decay[s_])
        h, delta, dz = factors(W1, W2, kc, v[s_], objective, normalize)
        zq = D[:, None] * (qc @ W2) - s[:, None] * (qc @ m2) - (Cc * (qc @ kc.T)) @ dz
        aq = F.gelu(zq)
        ys.append(qc + D[:, None] * (aq @ W1) - s[:, None] * (aq @ m1)
                  - (Cc * (aq @ h.T)) @ delta)
        c, m = Cc[-1][:, None], Mc[-1][:, None]
        W1, m1 = D[-1] * W1 - s[-1] * m1 - (c * h).T @ delta, P[-1] * m1 + (m * h).T @ delta
        W2, m2 = D[-1] * W2 - s[-1] * m2 - (c * kc).T @ dz, P[-1] * m2 + (m * kc).T @ dz
    return torch.cat(ys)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("memory", ["dla", "titans"])
@pytest.mark.parametrize("b", [1, 5, 16])
def test_deep_chunked_closed_form_and_dual_form_equal_minimc(memory, b, normalize):
    B, T, H, K = 2, 23, 2, 4
    g = torch.Generator().manual_seed(7)
    W = init_deep_weights(H, K, generator=g, dtype=torch.float64)
    q, k, v = (F.normalize(torch.randn(B, T, H, K, generator=g, **D64), dim=-1)
               for _ in range(3))
    lr = 0.3 * torch.rand(B, T, H, generator=g, **D64)
    mom = 0.9 * torch.rand(B, T, H, generator=g, **D64)
    dec = 1 - 0.1 * torch.rand(B, T, H, generator=g, **D64)
    opts = dict(lr=lr) if memory == "dla" else dict(lr=lr, momentum=mom, decay=dec)
    full = (lr, torch.zeros_like(lr), torch.ones_like(lr)) if memory == "dla" else (lr, mom, dec)
    o, _ = minimc.recurrent_memory(q, k, v, memory, weights=W, chunk_size=b, scale=1.0,
                                   normalize=normalize, **opts)
    objective = "dot" if memory == "dla" else "l2"
    for bi in range(B):
        for h in range(H):
            args = (q[bi, :, h], k[bi, :, h], v[bi, :, h], W[0][h], W[1][h],
                    *(x[bi, :, h] for x in full), b, objective, normalize)
            torch.testing.assert_close(stacked(*args), o[bi, :, h])
            torch.testing.assert_close(dual(*args), o[bi, :, h])


@pytest.mark.parametrize("cls,kappa", [(DLAMemory, 1.0), (TitansMemory, 2.0)])
def test_normalised_step_divides_by_the_gauss_newton_trace(cls, kappa):
    W1, W2 = (w[0] for w in init_deep_weights(1, 5, generator=torch.Generator().manual_seed(3),
                                              dtype=torch.float64))         # [E, K], [K, E]
    k, v = F.normalize(randn(5, seed=4), dim=0), randn(5, seed=5)
    J = torch.autograd.functional.jacobian(lambda a, b: k + F.gelu(k @ b) @ a, (W1, W2))
    trace = sum(j.pow(2).sum() for j in J) / 5                           # tr(J J^T) / K
    one = lambda x: x[None, None, None]                                  # noqa: E731
    _, dy_raw, _ = cls(None)._factors(W1[None, None], W2[None, None], one(k), one(v))
    _, dy_norm, _ = cls(None, normalize=True)._factors(W1[None, None], W2[None, None],
                                                       one(k), one(v))
    torch.testing.assert_close(dy_raw / dy_norm, torch.full_like(dy_raw, kappa * trace.item()))


def test_titans_descends_and_the_papers_literal_sign_ascends():
    W = init_deep_weights(1, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mem = TitansMemory(W)
    k, v = F.normalize(randn(1, 1, 6, seed=3), dim=-1), randn(1, 1, 6, seed=4)   # [B, H, K]
    state = mem.init_state(k[:, None], k[:, None], v[:, None])
    loss = lambda s: ((k + F.gelu(k @ s[1][0]) @ s[0][0] - v) ** 2).sum()  # noqa: E731
    step = lambda lr: mem.step(state, k, v, lr=torch.full((1, 1), lr, **D64))   # noqa: E731
    assert loss(step(0.01)) < loss(state) < loss(step(-0.01))   # -lr: Eq. 34-35 read literally


def test_deep_layer_recipe():
    layer = MemoryLayer(32, n_heads=2, head_dim=16, memory="titans")
    mem = layer.new_memory()
    assert mem.normalize and mem.chunk_size == 16
    assert TitansMemory.layer_scalars == {"lr": (-3.0, 1.0), "momentum": (0.0, 0.5),
                                          "decay": (5.0, 1.0)}
    assert DLAMemory.layer_scalars == {"lr": (0.0, 1.0)}
    assert tiny_lm("titans").blocks[0].mixer.w1.shape[1] == 2 * 16       # presets: E = 2K
    torch.manual_seed(0)
    q, k, v, _, opts, _ = layer.inputs(torch.randn(2, 40, 32))
    assert (k >= 0).all() and (q >= 0).all()
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(2, 40, 2))
    torch.testing.assert_close(v.norm(dim=-1), torch.full((2, 40, 2), 4.0))
    assert opts["momentum"].max() <= 0.5 and abs(opts["lr"].mean().item() - 0.047) < 0.03


def test_recipe_applies_while_the_block_is_open():
    """The chapters build, measure and train inside `recipe(...)`: there the layer reads the
    changed feature map and step (a layer reads them at every forward pass)."""
    with dm.recipe(**dm.OLD):
        layer = MemoryLayer(32, memory="titans")
        assert layer.cls.feature_map == "l2" and layer.memory_settings()["normalize"] is False
        q, k, v, *_ = layer.inputs(torch.randn(1, 9, 32))
        assert (k < 0).any()                                               # signed features


def test_issue12_diagnosis_at_initialisation():
    """Titans at initialisation, seed 0: the raw step overshoots in chunks of 16 (mean chunk gain
    above 2, weights grow > 5x over one sequence) but not token by token; normalised, bounded."""
    x, _ = dm.task_batch(step=10_000, seed=0, batch_size=8)
    out = {}
    for name, changes in (("raw", dict(deep={"normalize": False})), ("now", {})):
        with dm.recipe(**changes):
            torch.manual_seed(0)
            model = tiny_lm("titans")
            growth = dm.weight_growth(model, x, (16, 1))
            out[name] = dict(gain=dm.chunk_gain(model, x, 16)["mean"],
                             grow={b: w[-1] / w[0] for b, w in growth.items()})
    assert out["raw"]["gain"] > 2 > out["now"]["gain"]
    assert out["raw"]["grow"][16] > 5 and out["raw"]["grow"][1] < 2
    assert out["now"]["grow"][16] < 3


def test_chapter3_worked_example():
    t4 = lambda x: torch.tensor(x, **D64)[None, None]                    # noqa: E731
    W1, W2, k, v = t4([[1.0], [2.0]]), t4([[1.0, -1.0]]), t4([1.0]), t4([2.0])
    g1, g2 = DLAMemory(None)._grads(W1, W2, k[:, :, None], v[:, :, None])
    torch.testing.assert_close(g1.flatten(), torch.tensor([-1.6827, 0.3173], **D64),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(g2.flatten(), torch.tensor([-2.1666, 0.3333], **D64),
                               atol=1e-4, rtol=0)
    per = lambda x: torch.full((1, 1), x, **D64)                         # noqa: E731
    new = TitansMemory(None).step((W1, W2, torch.zeros_like(W1), torch.zeros_like(W2)), k, v,
                                  lr=per(0.1), momentum=per(0.9), decay=per(1.0))
    want = ([1.0801, 1.9849], [1.1031, -1.0159], [-0.0801, 0.0151], [-0.1031, 0.0159])
    for s, w in zip(new, want):
        torch.testing.assert_close(s.flatten(), torch.tensor(w, **D64), atol=1e-4, rtol=0)
