"""Why a memory does or does not learn MQAR: measurements of the memory inside a (trained) TinyLM.

    python scripts/diagnose_memories.py                  # every memory, trained 600 steps
    python scripts/diagnose_memories.py --old            # the same under the issue-12 recipe
    python scripts/diagnose_memories.py --memories titans --steps 0 --chunks 64,16,8,4,1
    python scripts/diagnose_memories.py --table          # accuracy, seeds 0, 1, 2 (~5 min)
    python scripts/diagnose_memories.py --ablate         # the ablation table (~15 min)
    python scripts/diagnose_memories.py --speed          # training-step times side by side

The task is issue 12's: MQAR with 8 pairs at T = 64, vocabulary 256, batch 32, 600 steps of
train()'s defaults. Each function takes a model and a batch and returns plain numbers, so a
book chapter can print them:

    pair_influence   what the memory holds at a query: the share of the readout that the
                     answer's own pair moves, and how much more than the other pairs
    scalar_summary   the per-token scalars (decay, beta, lr, ...) the layer produces
    grad_norms       the outer gradient of every parameter group (does training get signal?)
    inner_losses     deep memories: the inner loss before / after each write and at the end
    chunk_gain       deep memories: the largest step gain of one chunk's mini-batch update
                     (> 2 overshoots: the chunk's step raises the loss on its own tokens)
    weight_growth    deep memories: max |theta| along the sequence for several chunk sizes
    step_times       training-step CPU time of several presets, interleaved in one process
    recipe           a context manager that swaps the layers' recipe tables (for ablations)
"""
import argparse
from contextlib import contextmanager
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minimc.layers import tiny_lm                                             # noqa: E402
from minimc.memories import MEMORIES, DeepMemory, make_memory                # noqa: E402
from minimc.train import batch, train                                         # noqa: E402

DUAL = DeepMemory.forward
TASK = dict(batch_size=32, seq_len=64, num_kv_pairs=8, vocab_size=256)
# The recipe of issue 12, under which only the linear memory learned (changes to layers' tables).
OLD = dict(scalars={"delta": {"beta": (0.0, 1.0)}, "swla": {"a": (0.0, 1.0)},
                    "dla": {"lr": (0.0, 0.1)},
                    "titans": {"lr": (0.0, 0.1), "momentum": (0.0, 0.5)}},
           features={"delta": ("l2", None), "dla": ("l2", "l2"), "titans": ("l2", "l2")},
           deep={"normalize": False})
SIGNED = {m: ("l2", None if m == "delta" else "rms") for m in ("delta", "dla", "titans")}
UNIT_V = {m: ("elu+1, l2", "l2") for m in ("dla", "titans")}
# Ablation rows: (memory, change, layer recipe changes, train() options, seeds).
ABLATIONS = [
    ("linear", "signed unit q, k (l2)", dict(features={"linear": ("l2", None)}), {}, [0]),
    ("linear", "elu+1 then l2", dict(features={"linear": ("elu+1, l2", None)}), {}, [0]),
    ("delta", "issue-12 recipe", OLD, {}, [0]),
    ("delta", "+ beta bias -3 only", dict(features=SIGNED), {}, [0]),
    ("delta", "+ elu+1 features only", dict(scalars={"delta": {"beta": (0.0, 1.0)}}), {}, [0]),
    ("swla", "issue-12 recipe", OLD, {}, [0]),
    ("swla", "a bias 3", dict(scalars={"swla": {"a": (3.0, 1.0)}}), {}, [0]),
    ("dla", "issue-12 recipe", OLD, dict(expansion=4), [0]),
    ("dla", "without the normalised step", dict(deep={"normalize": False}), {}, [0]),
    ("dla", "signed unit q, k", dict(features=SIGNED), {}, [0]),
    ("dla", "unit values", dict(features=UNIT_V), {}, [0]),
    ("titans", "issue-12 recipe", OLD, dict(expansion=4), [0]),
    ("titans", "without the normalised step", dict(deep={"normalize": False}), {}, [0]),
    ("titans", "signed unit q, k", dict(features=SIGNED), {}, [0]),
    ("titans", "unit values", dict(features=UNIT_V), {}, [0]),
    ("titans", "lr bias 0 (0.5)", dict(scalars={"titans": {"lr": (0.0, 1.0)}}), {}, [0]),
    ("titans", "momentum bias -3", dict(scalars={"titans": {"momentum": (-3.0, 0.5)}}), {}, [0]),
    ("titans", "lr bias -2", dict(scalars={"titans": {"lr": (-2.0, 1.0)}}), {}, [0]),
    ("titans", "lr bias -2, chunks of 4",
     dict(scalars={"titans": {"lr": (-2.0, 1.0)}}, deep={"chunk_size": 4}), {}, [0]),
    ("titans", "lr bias -4", dict(scalars={"titans": {"lr": (-4.0, 1.0)}}), {}, [0]),
    ("titans", "chunks of 8", dict(deep={"chunk_size": 8}), {}, [0]),
    ("titans", "chunks of 4", dict(deep={"chunk_size": 4}), {}, [0]),
    ("titans", "expansion 4", {}, dict(expansion=4), [0]),
    ("titans", "outer lr 5e-3", {}, dict(lr=5e-3), [0]),
    ("titans", "outer lr 2e-2", {}, dict(lr=2e-2), [0]),
]


@contextmanager
def recipe(scalars=None, features=None, deep=None):
    """Change the memories' recipe (class attributes in minimc.memories: layer_scalars,
    feature_map and value_map, a deep memory's layer_settings) while models are built inside the
    block; a model keeps the recipe it was built with."""
    saved = {name: dict(vars(cls)) for name, cls in MEMORIES.items()}
    try:
        for memory, table in (scalars or {}).items():
            MEMORIES[memory].layer_scalars = {**MEMORIES[memory].layer_scalars, **table}
        for memory, (feature_map, value_map) in (features or {}).items():
            MEMORIES[memory].feature_map, MEMORIES[memory].value_map = feature_map, value_map
        for memory in ("dla", "titans"):
            MEMORIES[memory].layer_settings = {**MEMORIES[memory].layer_settings, **(deep or {})}
        yield
    finally:
        for name, cls in MEMORIES.items():
            for attr in ("layer_scalars", "feature_map", "value_map", "layer_settings"):
                if attr in saved[name]:
                    setattr(cls, attr, saved[name][attr])
                elif attr in vars(cls):
                    delattr(cls, attr)                   # back to the inherited value


def task_batch(step=0, seed=0, **task):
    task = {**TASK, **task}
    return batch(step, task["batch_size"], task["seq_len"], [task["num_kv_pairs"]],
                 task["vocab_size"], seed)


def mixer_inputs(model, x):
    """The first memory layer, its memory object and inputs for token ids x: (layer, mem,
    q (scaled), k, v, per-token options), exactly as the layer's forward builds them."""
    layer = model.blocks[0].mixer
    q, k, v, u, opts, _ = layer.inputs(model.blocks[0].norm1(model.embed(x)))
    mem, per_token = make_memory(layer.memory, opts)
    q = q * (q.shape[-1] ** -0.5 if layer.scale is None else layer.scale)
    return layer, mem, q, k, v, per_token


def _answers(x, y, num_kv_pairs):
    """Answer positions sorted per sequence [B, N] and the index of the pair each one asks for."""
    B = x.shape[0]
    t = (y != -100).nonzero()[:, 1].view(B, num_kv_pairs)                  # [B, N]
    keys = x[:, 0:2 * num_kv_pairs:2]                                       # [B, N]
    pair = (keys[:, None, :] == x.gather(1, t)[..., None]).float().argmax(-1)  # [B, N]
    return t, pair


def pair_influence(model, x, y, num_kv_pairs=8):
    """What the memory holds at a query: for every answer at t asking for pair i, the Jacobian
    J_tj = d o_t / d v_j of the memory's readout with respect to the value written at pair j's
    value position (2 j + 1). Returns
        share:       the answer's own pair's share of the readout, ||J_ti|| ||v_i|| / ||o_t||
                     (||J|| = ||J||_F / sqrt(H V), an average gain; for a linear memory this is
                     exactly |q_t . k_i| ||v_i|| / ||o_t||); geometric mean over answers
        selectivity: median over answers of ||J_ti|| / mean_{j != i} ||J_tj||  (1: no recall)."""
    layer, mem, q, k, v, opts = mixer_inputs(model, x)
    q, k, v = (z.detach().double() for z in (q, k, v))
    opts = {n: z.detach().double() for n, z in opts.items()}
    if hasattr(mem, "weights"):
        mem.weights = tuple(w.detach().double() for w in mem.weights)
    v.requires_grad_(True)
    o, _ = mem.forward(q, k, v, mem.init_state(q, k, v), **opts)           # [B, T, H, V]
    t, pair = _answers(x, y, num_kv_pairs)
    B, N, (H, V) = t.shape[0], num_kv_pairs, o.shape[2:]
    value_pos = 2 * torch.arange(N) + 1                                     # [N]
    v_norm = v.detach()[:, value_pos].flatten(2).norm(dim=-1)               # [B, N]
    share, select = [], []
    for i in range(N):
        o_i = o[torch.arange(B), t[:, i]].flatten(1)                         # [B, H * V]
        sq = torch.zeros(B, N, dtype=torch.float64)
        for d in range(H * V):                                              # exact Frobenius norm
            g, = torch.autograd.grad(o_i[:, d].sum(), v, retain_graph=True)  # [B, T, H, V]
            sq += g[:, value_pos].pow(2).sum((-1, -2))
        gain = (sq / (H * V)).sqrt()                                        # [B, N]
        is_match = torch.arange(N)[None] == pair[:, i, None]
        share.append((gain * v_norm)[is_match] / o_i.detach().norm(dim=-1))
        select.append(gain[is_match] / gain[~is_match].view(B, N - 1).mean(-1))
    return dict(share=_gmean(torch.cat(share)), selectivity=torch.cat(select).median().item())


def _gmean(z):
    return z.clamp_min(1e-300).log().mean().exp().item()


def scalar_summary(model, x):
    """Mean (min, max) of every per-token scalar, and for decays the product over a 40-token gap."""
    *_, opts = mixer_inputs(model, x)
    out = {}
    for n, z in opts.items():
        out[n] = dict(mean=z.mean().item(), min=z.min().item(), max=z.max().item())
        if n in ("a", "decay"):
            out[n]["over_40_tokens"] = z.log().mean().mul(40).exp().item()
    return out


def grad_norms(model, x, y):
    """Outer-loss gradient norm of each parameter group (one batch, no clipping)."""
    model.zero_grad(set_to_none=True)
    model(x, y)[0].backward()
    groups = {}
    for name, p in model.named_parameters():
        mixer_part = name.startswith("blocks.0.mixer.") and name.count(".") > 3
        key = (name.split(".")[-2] if mixer_part else name).replace("blocks.0.", "")
        groups[key] = groups.get(key, 0.0) + p.grad.pow(2).sum().item()
    model.zero_grad(set_to_none=True)
    return {n: math.sqrt(s) for n, s in groups.items()}


def _shifted(stack, state):
    """theta_{t-1} for every t (theta_0 first): leaves [B, H, T, ...]."""
    return tuple(torch.cat([s0[:, :, None], s[:, :, :-1]], 2) for s, s0 in zip(stack, state))


def inner_losses(model, x, chunk_size=None):
    """Deep memories: mean over tokens of ||M(k_t) - v_t||^2 (and cos(M(k_t) - k_t, v_t)) with the
    weights before the write of t, right after it, and at the end of the sequence."""
    layer, mem, q, k, v, opts = mixer_inputs(model, x)
    mem.chunk_size = chunk_size or mem.chunk_size
    with torch.no_grad():
        state = mem.init_state(q, k, v)
        stack, final = mem.token_states(q, k, v, state, **opts)
        reads = {"before write": mem.read_each(_shifted(stack, state), k),
                 "after write": mem.read_each(stack, k),
                 "end of sequence": mem.read(tuple(s[:, :, None] for s in final), k)[..., 0, :]}
    return {n: dict(l2=(y - v).pow(2).sum(-1).mean().item(),
                    cos=torch.cosine_similarity(y - k, v, dim=-1).mean().item())
            for n, y in reads.items()}


def chunk_gain(model, x, chunk_size):
    """Deep memories (l2 objective): one chunk's mini-batch step changes the chunk's residuals
    r_i = M(k_i) - v_i by -2 sum_j eta_j J_i J_j^T r_j (linearised; J_i = dM(k_i)/dtheta at the
    chunk-start weights; eta_j = lr_j, or lr_j / c_j with the normalised step; momentum ignored).
    Returns, over chunks, the mean and max of the largest eigenvalue of 2 E^1/2 G E^1/2
    (G = [J_i J_j^T], E = diag(eta)): above 2 the step overshoots. Gauss-Newton:
        J_i J_j^T = (h_i . h_j) I + (k_i . k_j) W1^T diag(s_i * s_j) W1,   s = gelu'(k W2)."""
    layer, mem, q, k, v, opts = mixer_inputs(model, x)
    gains = []
    with torch.no_grad():
        W1, W2, m1, m2 = mem.init_state(q, k, v)
        mem.chunk_size = chunk_size
        stack, _ = mem.token_states(q, k, v, (W1, W2, m1, m2), **opts)
        for a in range(0, k.shape[1], chunk_size):
            if a:
                W1, W2 = stack[0][:, :, a - 1], stack[1][:, :, a - 1]       # chunk-start weights
            kc = k[:, a:a + chunk_size].transpose(1, 2)                     # [B, H, b, K]
            z = kc @ W2                                                     # [B, H, b, E]
            h, s = F.gelu(z), torch.ops.aten.gelu_backward(torch.ones_like(z), z)
            b, K = kc.shape[2], kc.shape[3]
            hh = (h @ h.transpose(-1, -2))[..., :, None, :, None] * torch.eye(K)[:, None, :]
            kk = (kc @ kc.transpose(-1, -2))[..., :, None, :, None]
            G = hh + kk * torch.einsum("bhie,bhje,bhea,bhec->bhiajc", s, s, W1, W1)  # [B,H,b,K,b,K]
            eta = opts["lr"][:, a:a + chunk_size].transpose(1, 2)           # [B, H, b]
            if mem.normalize:                                               # c: mean eigenvalue x 2
                blocks = torch.diagonal(G, dim1=3, dim2=5).sum(-1)          # traces [B, H, b, b]
                trace = blocks.diagonal(dim1=-2, dim2=-1)                   # [B, H, b]
                eta = eta / (2 * trace / K)
            r = eta.sqrt()
            rr = (r[..., :, None, None, None] * r[..., None, None, :, None]).expand_as(G)
            M = 2 * (G * rr).reshape(*G.shape[:2], b * K, b * K).double()
            ok = M.isfinite().all(-1).all(-1)                               # blown-up weights: inf
            gain = torch.full(M.shape[:2], float("inf"), dtype=M.dtype)
            gain[ok] = torch.linalg.eigvalsh(M[ok])[..., -1]
            gains.append(gain)                                              # [B, H]
    g = torch.stack(gains, -1)
    return dict(mean=g.mean().item(), max=g.max().item())


def weight_growth(model, x, chunk_sizes=(64, 16, 8, 4, 1)):
    """Deep memories: max |W1| over the batch at tokens 0, 8, 16, ... and at the end, per chunk
    size (the chunk size set on the memory object, whatever the layer's cap)."""
    layer, mem, q, k, v, opts = mixer_inputs(model, x)
    out = {}
    with torch.no_grad():
        for b in chunk_sizes:
            mem.chunk_size = b
            stack, _ = mem.token_states(q, k, v, mem.init_state(q, k, v), **opts)
            w = stack[0].abs().amax(dim=(0, 1, 3, 4))                       # [T]
            out[b] = [w[t].item() for t in range(0, len(w), 8)] + [w[-1].item()]
    return out


def stack_forward(mem, q, k, v, state, **opts):
    """DeepMemory's forward before the dual form: every token's weights as [B, H, T, E, K]
    stacks (token_states), then each token read through its own (read_each)."""
    stack, state = mem.token_states(q, k, v, state, **opts)
    return mem.read_each(stack, q), state


def chunked(b):
    """DeepMemory's forward with chunks of b tokens (the layers cap them at 16)."""
    def forward(mem, *args, **opts):
        mem.chunk_size = b
        return DUAL(mem, *args, **opts)
    return forward


def step_times(presets, repeat=15, **task):
    """Median CPU seconds of one training step (forward + backward) for each (name, preset,
    options[, DeepMemory.forward to use]), the presets interleaved in one process so that load
    on the machine hits them alike (one thread: CPU time is what the work costs, and unlike wall
    time it does not grow when other processes share the cores)."""
    x, y = task_batch(**task)
    models, forwards = {}, {}
    for name, preset, options, *forward in presets:
        torch.manual_seed(0)
        models[name] = tiny_lm(preset, vocab_size=TASK["vocab_size"], **options)
        forwards[name] = forward[0] if forward else DeepMemory.forward
    times = {name: [] for name in models}
    dual = DeepMemory.forward
    for _ in range(repeat):
        for name, m in models.items():
            DeepMemory.forward = forwards[name]
            start = time.process_time()
            m(x, y)[0].backward()
            times[name].append(time.process_time() - start)
            DeepMemory.forward = dual
            m.zero_grad(set_to_none=True)
    return {name: statistics.median(t) for name, t in times.items()}


def profile_step(preset, rows=12, forward=None, **options):
    """torch.profiler table (self CPU time) of three training steps of a preset (optionally with
    another DeepMemory.forward, e.g. stack_forward)."""
    from torch.profiler import ProfilerActivity, profile
    x, y = task_batch()
    torch.manual_seed(0)
    model = tiny_lm(preset, vocab_size=TASK["vocab_size"], **options)
    DeepMemory.forward = forward or DUAL
    try:
        model(x, y)[0].backward()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                model(x, y)[0].backward()
    finally:
        DeepMemory.forward = DUAL
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def trained(preset, steps, seed=0, changes=None, eval_n=1000, **options):
    """A TinyLM of ``preset`` (built under the recipe ``changes``, see ``recipe``) trained ``steps``
    steps on the task with train()'s defaults, and train()'s result (None when steps = 0).
    ``options``: train() arguments (lr) or model options (expansion)."""
    torch.manual_seed(seed)
    train_args = {n: options.pop(n) for n in ("lr",) if n in options}
    with recipe(**(changes or {})):
        model = tiny_lm(preset, vocab_size=TASK["vocab_size"], **options)
    r = (train(model, steps=steps, seed=seed, device="cpu", verbose=False, eval_n=eval_n, **TASK,
               **train_args) if steps else None)
    return model, r


def accuracy_table(rows, steps=600):
    """Train every (memory, change, recipe changes, options, seeds) row; print and return
    (memory, change, [accuracy per seed], mean seconds, any NaN loss)."""
    out = []
    for memory, change, changes, options, seeds in rows:
        accs, secs, nan = [], [], False
        for seed in seeds:
            _, r = trained(memory, steps, seed, changes, **options)
            accs.append(r["accuracy"])
            secs.append(r["train_seconds"])
            nan |= any(not math.isfinite(h["loss"]) for h in r["history"])
        out.append((memory, change, accs, sum(secs) / len(secs), nan))
        print(f"| {memory} | {change} | " + " / ".join(f"{a:.1%}" for a in accs)
              + f" | {out[-1][3]:.0f} s | {'NaN' if nan else ''} |", flush=True)
    return out


def report(preset, steps, chunks, seed=0, changes=None, **options):
    model, r = trained(preset, steps, seed, changes, eval_n=500, **options)
    x, y = task_batch(step=10_000, seed=seed)
    acc = (f"held-out accuracy {r['accuracy']:.1%}, {r['train_seconds']:.0f} s" if r
           else "at initialisation")
    print(f"\n== {preset} {options or ''} after {steps} steps ({acc})")
    print("  pair influence ||do_t/dv_j||:", _fmt(pair_influence(model, x, y)))
    print("  per-token scalars:", _fmt(scalar_summary(model, x)))
    print("  outer gradient norms:", _fmt(grad_norms(model, x, y)))
    if model.blocks[0].mixer.memory in ("dla", "titans"):
        print("  inner losses:", _fmt(inner_losses(model, x)))
        if model.blocks[0].mixer.memory == "titans":
            gains = {b: chunk_gain(model, x, b) for b in chunks}
            print("  chunk gain (> 2 overshoots):", _fmt(gains))
        print("  max |W1| at t = 0, 8, ..., end:", _fmt(weight_growth(model, x, chunks)))
    return model


def _fmt(d):
    if isinstance(d, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in d.items()) + "}"
    if isinstance(d, list):
        return "[" + ", ".join(_fmt(v) for v in d) + "]"
    return f"{d:.3g}" if isinstance(d, float) else str(d)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--memories", default="linear,delta,swla,dla,titans")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunks", default="16,8,4,1", help="chunk sizes for the deep-memory checks")
    p.add_argument("--old", action="store_true", help="diagnose under the issue-12 recipe")
    p.add_argument("--speed", action="store_true", help="step times and a profile instead")
    p.add_argument("--table", action="store_true", help="accuracy of every memory, seeds 0, 1, 2")
    p.add_argument("--ablate", action="store_true", help="the ablation table (ABLATIONS)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.table or args.ablate:
        print("| memory | recipe | held-out accuracy (seeds) | train time | |")
        print("|---|---|---|---|---|")
        rows = [(m, "final", {}, {}, [0, 1, 2]) for m in args.memories.split(",")]
        accuracy_table(ABLATIONS if args.ablate else rows, args.steps)
        return
    if args.speed:
        presets = [("linear", "linear", {}), ("dla", "dla", {}), ("titans", "titans", {}),
                   ("titans E4", "titans", dict(expansion=4)),
                   ("titans E4 c32", "titans", dict(expansion=4), chunked(32)),
                   ("titans E4 stacks", "titans", dict(expansion=4), stack_forward)]
        t = step_times(presets)
        print("training step (B 32, T 64), median s:", _fmt(t),
              " ratio to linear:", _fmt({n: s / t["linear"] for n, s in t.items()}))
        stacks = profile_step("titans", forward=stack_forward, expansion=4)
        print("profile, titans E4 with weight stacks:\n" + stacks)
        print("profile, titans (dual form):\n" + profile_step("titans"))
        return
    chunks = [int(c) for c in args.chunks.split(",")]
    for preset in args.memories.split(","):
        report(preset, args.steps, chunks, args.seed, OLD if args.old else None)


if __name__ == "__main__":
    main()
