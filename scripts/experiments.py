"""The MQAR sweep behind the course's experiments chapter: six claims of the Memory Caching paper,
reproduced at toy scale on a CPU. Writes one JSON file and one PNG figure per claim, a summary.json
and a summary.md (the headline table), and prints progress as it goes.

    python scripts/experiments.py --size quick --out results/quick    # the book runs this (~5 min)
    python scripts/experiments.py --size full  --out results/full     # committed results (~1 hour)
    python scripts/experiments.py --size full --out results/full --only cost,extrapolation

Claims (see results/README.md for what came out):
  recall         accuracy vs number of key-value pairs: attention, linear memory, + GRM, + SSC
  state_size     accuracy vs state size (Zoology's plot): caching moves a memory along the axis
  deep           deep memory (Titans) plain, + GRM, + Memory Soup
  segment_len    accuracy and cost as the segment length C varies (O(L^2 / C))
  extrapolation  post-training caching: a plain linear memory trained at T = 128, evaluated longer
  cost           forward + backward time and memory vs sequence length, fitted growth exponents
"""
import argparse
from contextlib import nullcontext
import json
import math
import os
import platform
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minimc.data import mqar                                                  # noqa: E402
from minimc.layers import tiny_lm, with_caching                              # noqa: E402
from minimc.train import evaluate, set_seed, train                           # noqa: E402

RECALL = ["attention", "linear", "linear-grm", "linear-ssc"]
DEEP = ["titans", "titans-grm", "titans-soup"]
CLAIMS = ["recall", "state_size", "segment_len", "extrapolation", "cost", "deep"]
SIZES = {   # "smoke" only checks the code paths (tests/test_train.py); its numbers mean nothing
    "smoke": dict(claims=CLAIMS, seeds=[0], steps=6, eval_n=40, deep_seeds=[0], segment_lens=[16], widths=[("linear", 8)],
                  extrap_lengths=[128, 256], cost_lengths=[64, 128, 256], cost_seq_len=256,
                  cost_segment_lens=[8, 64]),
    "quick": dict(claims=["recall", "state_size", "extrapolation", "cost"], seeds=[0], steps=600, eval_n=1000,
                  deep_seeds=[], segment_lens=[], widths=[], extrap_lengths=[128, 256, 512],
                  cost_lengths=[256, 512, 1024, 2048], cost_seq_len=2048, cost_segment_lens=[8, 64]),
    "full": dict(claims=CLAIMS, seeds=[0, 1, 2], steps=1000, eval_n=1000, deep_seeds=[0], segment_lens=[4, 16, 64],
                 widths=[("linear", 8), ("linear", 32), ("linear-grm", 8)], extrap_lengths=[128, 256, 512, 1024],
                 cost_lengths=[512, 1024, 2048, 4096, 8192], cost_seq_len=2048,
                 cost_segment_lens=[4, 8, 16, 32, 64, 128, 256, 512]),
}
TRAIN_KV, EVAL_KV, T = [8, 16, 32], [4, 8, 16, 32], 128
DEEP_OPTIONS = dict(expansion=1)           # the deep memory's MLP at width K (4x is ~3x slower on a CPU)
POST = {"plain": "#1f77b4", "mean C=32": "#2ca02c", "mean C=128": "#98df8a", "grm u=q C=32": "#ff7f0e"}


def colour(name):
    """The book's colour for a model (minimc.viz), e.g. "linear-grm@C16" -> GRM's colour."""
    try:
        from minimc.viz import color
        return color(name.split("@")[0])
    except (ImportError, KeyError):
        return None


def run(name, seed, size, models=None, **options):
    """Train one model on the MQAR mixture; keep the trained module (for post-training caching)."""
    set_seed(seed)
    model = tiny_lm(name.split("@")[0], **options)
    r = train(model, name=name, steps=size["steps"], num_kv_pairs=TRAIN_KV, seq_len=T, seed=seed,
              evals=[(T, kv) for kv in EVAL_KV], eval_n=size["eval_n"], log_every=250, threads=1)
    r["config"]["model_options"] = options
    if models is not None:
        models[name, seed] = model
    return r


def acc_at(r, kv):
    return next(e["accuracy"] for e in r["eval"] if e["num_kv_pairs"] == kv)


def mean_std(xs):
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0


def claim_recall(size, models):
    runs = [run(n, s, size, models) for s in size["seeds"] for n in RECALL]
    table = {n: {kv: mean_std([acc_at(r, kv) for r in runs if r["config"]["model"] == n]) for kv in EVAL_KV}
             for n in RECALL}
    return dict(runs=runs, table={n: {str(kv): v for kv, v in t.items()} for n, t in table.items()})


def claim_state_size(size, recall):
    runs = [run(f"{n}@K{K}", 0, size, head_dim=K) for n, K in size["widths"]]   # other head dims, seed 0
    points = [dict(model=r["config"]["model"], state_size=r["state_size"], accuracy=acc_at(r, 32))
              for r in recall["runs"] + runs]
    return dict(runs=runs, points=points)


def claim_deep(size):
    runs = [run(n, s, size, **DEEP_OPTIONS) for s in size["deep_seeds"] for n in DEEP]
    table = {n: {kv: mean_std([acc_at(r, kv) for r in runs if r["config"]["model"] == n]) for kv in EVAL_KV}
             for n in DEEP}
    return dict(runs=runs, table={n: {str(kv): v for kv, v in t.items()} for n, t in table.items()},
                options=DEEP_OPTIONS)


def fwd_bwd_cost(model, seq_len, batch=2, repeats=3):
    """Seconds of one forward + backward pass (the fastest of ``repeats`` after a warm-up: on a
    shared machine the minimum is the least disturbed), and the bytes autograd saves for backward
    (the activation memory that grows with length; on a GPU also the allocator's peak)."""
    x, y = mqar(batch, seq_len, min(32, seq_len // 4), seed=1)
    saved = {}

    def pack(t):
        saved[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t
    cuda = torch.cuda.is_available()
    model = model.to("cuda" if cuda else "cpu")
    x, y = x.to(next(model.parameters()).device), y.to(next(model.parameters()).device)
    times = []
    for i in range(repeats + 1):
        if cuda:
            torch.cuda.synchronize(), torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if i == 0 else nullcontext():
            loss, _ = model(x, y)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    out = dict(seconds=min(times[1:]), saved_mib=sum(saved.values()) / 2 ** 20)
    if cuda:
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return out


def slope(xs, ys):
    """Least-squares slope of log y against log x: the growth exponent."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def cost_models(C=64):
    lin = lambda v, **o: ("linear", dict(caching=dict(variant=v, segment_len=C, mode="independent", **o)))  # noqa
    return {"attention": ("attention", {}), "linear": ("linear", {}), "linear-residual": lin("residual"),
            "linear-grm": lin("grm"), "linear-soup": lin("soup"), "linear-ssc": lin("ssc", top_k=4)}


def claim_cost(size, C=64):
    """Claim 6 (time and memory vs length) and the cost half of claim 4 (vs segment length),
    measured side by side in one loop so that every number sees the same machine load."""
    torch.set_num_threads(1)
    rows, by_c, L = [], [], size["cost_seq_len"]

    def measure(preset, opts, T):
        set_seed(0)
        return fwd_bwd_cost(tiny_lm(preset, **opts), T, repeats=5)
    for T in size["cost_lengths"]:
        for name, (preset, opts) in cost_models(C).items():
            rows.append(dict(model=name, seq_len=T, segment_len=C, **measure(preset, opts, T)))
            print(f"cost  {name:>16}  T {T:5d}  {rows[-1]['seconds'] * 1e3:8.1f} ms  "
                  f"{rows[-1]['saved_mib']:7.1f} MiB saved", flush=True)
    for c in size["cost_segment_lens"]:
        by_c.append(dict(model="linear-grm", seq_len=L, segment_len=c,
                         **measure("linear", dict(caching=dict(variant="grm", segment_len=c, mode="independent")), L)))
        print(f"cost  linear-grm  C {c:4d}  T {L:5d}  {by_c[-1]['seconds'] * 1e3:8.1f} ms", flush=True)
    top = size["cost_lengths"][-3:]
    fits = {n: {k: slope(top, [r[k] for r in rows if r["model"] == n and r["seq_len"] in top])
                for k in ("seconds", "saved_mib")} for n in cost_models(C)}
    for n, f in fits.items():
        print(f"growth exponent over T in {top}: {n:>16}  time {f['seconds']:.2f}  memory {f['saved_mib']:.2f}")
    c_fit = slope([r["segment_len"] for r in by_c], [r["seconds"] for r in by_c]) if len(by_c) > 1 else None
    return dict(rows=rows, exponents=fits, exponent_lengths=top, by_segment_len=by_c, segment_len_exponent=c_fit,
                batch=2, note="1 thread; time = fastest of 5 after a warm-up; memory = bytes autograd saves "
                "for backward (deduplicated storages)")


def claim_segment_len(size, recall):
    """Claim 4, accuracy half: linear + GRM trained with several segment lengths (seed 0)."""
    runs = [r for r in recall["runs"] if r["config"]["model"] == "linear-grm" and r["config"]["seed"] == 0]
    runs += [run(f"linear-grm@C{C}", 0, size, caching=dict(variant="grm", segment_len=C, mode="independent"))
             for C in size["segment_lens"]]
    rows = sorted((dict(segment_len=r["config"]["model_options"].get("caching", {}).get("segment_len", 8),
                        accuracy=acc_at(r, 32), state_size=r["state_size"],
                        train_seconds_per_step=r["train_seconds"] / r["config"]["steps"]) for r in runs),
                  key=lambda x: x["segment_len"])
    return dict(runs=runs[1:], rows=rows)


def claim_extrapolation(size, models, kv=32):
    """Post-training caching: evaluate models trained at T = 128 on longer sequences (kv fixed)."""
    variants = {"plain": None, "mean C=32": dict(variant="mean", segment_len=32),
                "mean C=128": dict(variant="mean", segment_len=128), "grm u=q C=32": dict(variant="grm", segment_len=32)}
    rows = []
    for (name, seed), model in sorted(models.items()):
        for label, c in (variants.items() if name == "linear" else [("as trained", None)]):
            m = model if c is None else with_caching(model, mode="checkpoint", **c)
            for L in size["extrap_lengths"]:
                acc = evaluate(m, L, kv, n=min(size["eval_n"], 500 if L > 256 else 1000))["accuracy"]
                rows.append(dict(model=name, seed=seed, caching=label, seq_len=L, num_kv_pairs=kv, accuracy=acc))
                print(f"extrapolation  {name:>11} seed {seed}  {label:>13}  T {L:5d}: {acc:.1%}", flush=True)
    return dict(rows=rows, train_seq_len=T, num_kv_pairs=kv, mode="checkpoint")


def extrapolation_table(rows):
    """{(model, caching): {length: (mean, std) over seeds}}, rows in the order they first appear."""
    table = {}
    for r in rows:
        table.setdefault((r["model"], r["caching"]), {}).setdefault(r["seq_len"], []).append(r["accuracy"])
    return {key: {L: mean_std(accs) for L, accs in sorted(by_len.items())} for key, by_len in table.items()}


# ---------------------------------------------------------------------------------------- figures
def figures(res, out=None, claims=None):
    """Draw one figure per claim in ``res`` (or only ``claims``): saved as ``out/<claim>.png`` and
    closed when ``out`` is given; otherwise left open, so a notebook shows them inline."""
    import matplotlib.pyplot as plt
    draw = [c for c in res if claims is None or c in claims]

    def save(fig, name):
        if fig.get_layout_engine() is None:          # the book's style already lays figures out
            fig.tight_layout()
        if out is not None:
            fig.savefig(os.path.join(out, name), dpi=120)
            plt.close(fig)

    def logx(ax, ticks):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()

    def pm(table, n):
        return [table[n][str(kv)][0] for kv in EVAL_KV], [table[n][str(kv)][1] for kv in EVAL_KV]

    if "recall" in draw:
        fig, ax = plt.subplots(figsize=(6, 4))
        for n in RECALL:
            m, s = pm(res["recall"]["table"], n)
            ax.errorbar(EVAL_KV, m, yerr=s, marker="o", capsize=3, label=n, color=colour(n))
        n_seeds = len(res["recall"]["runs"]) // len(RECALL)
        logx(ax, EVAL_KV)
        ax.set(xlabel="key-value pairs (T = 128)", ylabel="accuracy",
               title=f"MQAR recall (mean ± std over {n_seeds} seeds)" if n_seeds > 1 else "MQAR recall (1 seed)")
        ax.legend(), save(fig, "recall.png")
    if "state_size" in draw:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        pts = {}                                           # (family, label) -> (state size, [accuracies])
        for p in res["state_size"]["points"]:
            family, _, width = p["model"].partition("@")
            label = f"K={width[1:]}" if width else ("K=16" if family == "linear" else "")
            pts.setdefault((family, label), (p["state_size"], []))[1].append(p["accuracy"])
        for r in res.get("segment_len", {}).get("rows", []):
            if r["segment_len"] != 8:
                pts[("linear-grm", f"C={r['segment_len']}")] = (r["state_size"], [r["accuracy"]])
        for family in ("attention", "linear", "linear-grm", "linear-ssc"):
            mine = sorted((v[0], sum(v[1]) / len(v[1]), lab) for (f, lab), v in pts.items() if f == family)
            ax.plot([m[0] for m in mine], [m[1] for m in mine], "o" + ("-" if family == "linear" else ""),
                    color=colour(family), label=family + (" (K = head dim)" if family == "linear" else ""))
            for x, y, lab in mine:
                ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax.set(xscale="log", xlabel="state size at T = 128 (numbers held between tokens)", ylabel="accuracy, 32 pairs",
               title="Accuracy vs state size (GRM: K = 16, C = 8 unless marked)")
        ax.legend(fontsize=8, loc="lower right"), save(fig, "state_size.png")
    if "deep" in draw and res["deep"]["runs"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, n in enumerate(DEEP):
            m, s = pm(res["deep"]["table"], n)
            ax.bar([j + 0.27 * (i - 1) for j in range(len(EVAL_KV))], m, 0.27, yerr=s, capsize=3, label=n, color=colour(n))
        ax.axhline(1 / 128, color="gray", ls=":", label="chance (1/128)")
        ax.set(xticks=range(len(EVAL_KV)), xticklabels=EVAL_KV, xlabel="key-value pairs", ylabel="accuracy",
               ylim=(0, 1), title="Deep memory (Titans): plain, GRM, Memory Soup")
        ax.legend(), save(fig, "deep.png")
    if "segment_len" in draw and res["segment_len"]["rows"]:
        rows = res["segment_len"]["rows"]
        Cs = [r["segment_len"] for r in rows]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        a1.plot(Cs, [r["accuracy"] for r in rows], "o-", color=colour("linear-grm"), label="linear + GRM (seed 0)")
        if "recall" in res:
            a1.axhline(res["recall"]["table"]["linear"]["32"][0], color=colour("linear"), ls="--", label="linear (C = T)")
        logx(a1, Cs)
        a1.set(xlabel="segment length C (T = 128)", ylabel="accuracy, 32 pairs", title="Accuracy vs segment length")
        a1.legend()
        by_c = res.get("cost", {}).get("by_segment_len", [])
        if by_c:
            L, Cc = by_c[0]["seq_len"], [r["segment_len"] for r in by_c]
            a2.plot(Cc, [r["seconds"] * 1e3 for r in by_c], "o-", color=colour("linear-grm"),
                    label=f"linear + GRM, T = {L} (slope {res['cost']['segment_len_exponent']:.2f})")
            plain = [r["seconds"] for r in res["cost"]["rows"] if r["model"] == "linear" and r["seq_len"] == L]
            if plain:
                a2.axhline(plain[0] * 1e3, color=colour("linear"), ls="--", label=f"linear, T = {L}")
            logx(a2, Cc)
            a2.set(yscale="log", xlabel="segment length C", ylabel="forward + backward, ms (batch 2)",
                   title="Cost vs segment length (O(L^2 / C) reads)")
            a2.legend(fontsize=8)
        save(fig, "segment_len.png")
    if "extrapolation" in draw:
        rows = res["extrapolation"]["rows"]
        fig, ax = plt.subplots(figsize=(8, 4))
        for key, by_len in extrapolation_table(rows).items():
            Ls, ms = list(by_len), list(by_len.values())
            style = "-" if key[0] == "linear" else ":"
            ax.errorbar(Ls, [m for m, _ in ms], yerr=[s for _, s in ms], marker="o", ls=style, capsize=3,
                        label=f"{key[0]} ({key[1]})", color=POST.get(key[1]) or colour(key[0]))
        logx(ax, Ls)
        ax.set(xlabel="evaluation length (trained at 128), 32 pairs", ylabel="accuracy",
               title="Post-training caching and length extrapolation")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5)), save(fig, "extrapolation.png")
    if "cost" in draw:
        rows, ex = res["cost"]["rows"], res["cost"]["exponents"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, label in zip(axes, ("seconds", "saved_mib"), ("forward + backward, s", "saved for backward, MiB")):
            for n in ex:
                pts = [(r["seq_len"], r[key]) for r in rows if r["model"] == n]
                ax.plot(*zip(*pts), "o-", label=f"{n} (slope {ex[n][key]:.2f})", color=colour(n))
            logx(ax, sorted({r["seq_len"] for r in rows}))
            ax.set(yscale="log", xlabel="sequence length T (batch 2)", ylabel=label,
                   title=f"Cost vs length (caching: C = {rows[0]['segment_len']})")
            ax.legend(fontsize=7)
        save(fig, "cost.png")


# ---------------------------------------------------------------------------------------- summary
def summary(res):
    lines = []
    over = lambda n: f"mean ± std over {n} seeds" if n > 1 else "1 seed"       # noqa: E731
    pm = lambda m, s, n: f"{m:.1%} ± {s:.1%}" if n > 1 else f"{m:.1%}"          # noqa: E731
    if "recall" in res:
        n_seeds = len(res["recall"]["runs"]) // len(RECALL)
        lines += [f"Recall (accuracy, {over(n_seeds)}); trained on 8/16/32 pairs, T = 128", "",
                  "| model | " + " | ".join(f"{kv} pairs" for kv in EVAL_KV) + " |", "|---|" + "---|" * len(EVAL_KV)]
        lines += [f"| {n} | " + " | ".join(pm(m, s, n_seeds) for m, s in t.values()) + " |"
                  for n, t in res["recall"]["table"].items()]
    if "deep" in res and res["deep"]["runs"]:
        n_seeds = len(res["deep"]["runs"]) // len(DEEP)
        lines += ["", f"Deep memory (Titans, expansion 1; {over(n_seeds)})", "",
                  "| model | " + " | ".join(f"{kv} pairs" for kv in EVAL_KV) + " |", "|---|" + "---|" * len(EVAL_KV)]
        lines += [f"| {n} | " + " | ".join(pm(m, s, n_seeds) for m, s in t.values()) + " |"
                  for n, t in res["deep"]["table"].items()]
    if "state_size" in res:
        lines += ["", "Accuracy at 32 pairs vs state size (mean over the seeds run; n = number of seeds)", "",
                  "| model | state size | accuracy |", "|---|---|---|"]
        seen = {}
        for p in res["state_size"]["points"]:
            seen.setdefault((p["model"], p["state_size"]), []).append(p["accuracy"])
        lines += [f"| {m} | {s} | {mean_std(a)[0]:.1%} (n={len(a)}) |" for (m, s), a in seen.items()]
    if "segment_len" in res and res["segment_len"]["rows"]:
        lines += ["", "Segment length (linear + GRM, seed 0, T = 128)", "",
                  "| C | accuracy, 32 pairs | state size | train step (B = 32; under varying load) |", "|---|---|---|---|"]
        lines += [f"| {r['segment_len']} | {r['accuracy']:.1%} | {r['state_size']} | "
                  f"{r['train_seconds_per_step'] * 1e3:.0f} ms |" for r in res["segment_len"]["rows"]]
    if res.get("cost", {}).get("by_segment_len"):
        by_c = res["cost"]["by_segment_len"]
        lines += ["", f"Cost vs segment length: linear + GRM, forward + backward at T = {by_c[0]['seq_len']}, batch 2 "
                  f"(fitted exponent in C: {res['cost']['segment_len_exponent']:.2f})", "",
                  "| C | " + " | ".join(str(r["segment_len"]) for r in by_c) + " |", "|---|" + "---|" * len(by_c),
                  "| ms | " + " | ".join(f"{r['seconds'] * 1e3:.0f}" for r in by_c) + " |",
                  "| MiB saved | " + " | ".join(f"{r['saved_mib']:.0f}" for r in by_c) + " |"]
    if "extrapolation" in res:
        rows = res["extrapolation"]["rows"]
        Ls = sorted({r["seq_len"] for r in rows})
        lines += ["", "Length extrapolation, 32 pairs (trained at T = 128; mean ± std over the seeds)", "",
                  "| model | caching at inference | " + " | ".join(f"T={L}" for L in Ls) + " |",
                  "|---|---|" + "---|" * len(Ls)]
        n_seeds = len({r["seed"] for r in rows})
        for key, by_len in extrapolation_table(rows).items():
            lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(pm(m, s, n_seeds) for m, s in by_len.values()) + " |")
    if "cost" in res:
        c = res["cost"]
        Ls = sorted({r["seq_len"] for r in c["rows"]})
        lines += ["", f"Cost: forward + backward, batch 2, 1 thread (caching C = {c['rows'][0]['segment_len']}); "
                  f"exponents fitted over T in {c['exponent_lengths']}", "",
                  "| model | " + " | ".join(f"T={L}" for L in Ls) + " | time exponent | memory exponent |",
                  "|---|" + "---|" * (len(Ls) + 2)]
        for n, f in c["exponents"].items():
            ms = [next(r["seconds"] for r in c["rows"] if r["model"] == n and r["seq_len"] == L) for L in Ls]
            lines.append(f"| {n} | " + " | ".join(f"{t * 1e3:.0f} ms" for t in ms) +
                         f" | {f['seconds']:.2f} | {f['saved_mib']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=SIZES, default="quick")
    p.add_argument("--out", default=None, help="output folder (default results/<size>)")
    p.add_argument("--only", default=None, help="comma-separated claims (default: all of the size's)")
    p.add_argument("--figures-only", action="store_true", help="redraw figures and summary.md from the JSON files")
    a = p.parse_args(argv)
    out, size = a.out or os.path.join("results", a.size), SIZES[a.size]
    claims = size["claims"]
    only = [] if a.figures_only else a.only.split(",") if a.only else claims
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    start, res, models = time.perf_counter(), {}, {}

    def need(c):
        """Earlier claims' results: from this run, else from a JSON written by an earlier run."""
        if c not in res and os.path.exists(os.path.join(out, f"{c}.json")):
            res[c] = json.load(open(os.path.join(out, f"{c}.json")))
        return res.get(c)

    for c in claims:
        if c not in only:
            continue
        t0 = time.perf_counter()
        print(f"=== {c} ({a.size}) ===", flush=True)
        if c == "recall":
            res[c] = claim_recall(size, models)
        elif c == "state_size":
            res[c] = claim_state_size(size, need("recall"))
        elif c == "deep":
            res[c] = claim_deep(size)
        elif c == "segment_len":
            res[c] = claim_segment_len(size, need("recall"))
        elif c == "extrapolation":
            if not models:                                                  # retrain what it evaluates
                for s in size["seeds"]:
                    for n in ("attention", "linear", "linear-grm"):
                        run(n, s, size, models)
            res[c] = claim_extrapolation(size, {k: m for k, m in models.items() if k[0] != "linear-ssc"})
        elif c == "cost":
            res[c] = claim_cost(size)
        res[c].update(claim=c, size=a.size, seconds=time.perf_counter() - t0)
        with open(os.path.join(out, f"{c}.json"), "w") as f:
            json.dump(res[c], f, indent=1)
    for c in claims:
        need(c)
    figures(res, out)
    table = summary(res)
    total = sum(res[c]["seconds"] for c in claims if c in res)                # all claims, even from earlier runs
    command = f"python scripts/experiments.py --size {a.size} --out {out}"
    if only:
        meta = dict(command=command, size=a.size, claims=claims, wall_seconds=total, machine=platform.platform(),
                    processor=platform.processor(), cpus=os.cpu_count(), torch=torch.__version__,
                    threads=torch.get_num_threads(), device="cuda" if torch.cuda.is_available() else "cpu",
                    git=_git("rev-parse", "HEAD"), git_dirty=bool(_git("status", "--porcelain", "minimc")),
                    load_average=os.getloadavg() if hasattr(os, "getloadavg") else None, sizes=size)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(meta, f, indent=1)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(f"<!-- written by {command} (claims took {total / 60:.1f} min in all) -->\n\n" + table)
    print(table + f"\nwall time of the claims {total / 60:.1f} min; wrote {out}/", flush=True)
    return res


def _git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    import matplotlib
    matplotlib.use("Agg")                  # files only, no window
    main()
