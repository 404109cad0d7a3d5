"""The experiments behind the course's chapter 12: the Memory Caching paper's claims at toy scale,
on a CPU. Each experiment writes <name>.json (every run's config, evaluation and timing) and
<name>.png; summary.md holds the tables and the verdicts, summary.json the machine and sizes.

    python scripts/experiments.py --size smoke --out /tmp/x     # code paths only (tests, ~1 min)
    python scripts/experiments.py --size quick                  # the book's live size
    make results      # the committed results/full: ~1.5 h on 2 cores (2.4 h in one process)
    python scripts/experiments.py --size full --out results/full --only cost,niah
    python scripts/experiments.py --size full --out results/full --figures-only

Experiments (MQAR unless said; a "seed" fixes the initialisation and the training data):
  lr           a learning rate per headline model: grid per model, chosen on a validation set
               with a training seed (10) that no test run uses
  recall       headline: attention, linear memory, + GRM, + SSC (C = 8) at their chosen rates
  parity       accuracy against the numbers held between tokens (model.state_size(128)): GRM at
               C = 8, 16, 32 against attention, the plain memory and a wider plain memory
  log_linear   Log-Linear++ (GRM over logarithmic segments) against constant segments holding
               the same number of states, at T = 255 (at T = 128 the log scheme is one segment)
  ablations    the paper's Table 5 at toy scale, around linear + GRM (C = 8)
  niah         single-needle retrieval (RULER S-NIAH style): the recall models at depth x length
  extrapolation  caching added after training, at up to 8x the training length
  deep         Memory Caching on the memories that learn (delta, DLA, Titans): GRM, Soup, SSC
  lm           byte-level language models on the Python standard library's source
  cost         forward + backward time and memory against length and against C
  plateau      every MQAR run above that ended on the chance plateau, retrained with 3x steps
  plateau_lr   the same runs retrained with half the learning rate (same steps)

Verdicts follow rules fixed here before the full run (VERDICT_RULE): a paired comparison over
the seeds that share data, "better" only when every seed agrees and the mean gain is at least
MIN_GAIN; otherwise "within noise".
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
from minimc.data import byte_windows, mqar, niah, stdlib_corpus                # noqa: E402
from minimc.layers import tiny_lm, with_caching                              # noqa: E402
from minimc.train import EVAL_SEED, batch, evaluate, evaluate_on, fit, set_seed  # noqa: E402

T, TRAIN_KV, EVAL_KV = 128, [8, 16, 32], [4, 8, 16, 32]
VALID_SEED = 1 << 41        # validation sequences (learning-rate choice): not the test sequences
SELECT_SEED = 10            # training seed of the learning-rate sweep: no test run uses it
NIAH_SEED = 1 << 42
RECALL = ["attention", "linear", "linear-grm", "linear-ssc"]
EXPERIMENTS = ["lr", "recall", "parity", "log_linear", "ablations", "niah", "extrapolation",
               "deep", "lm", "cost", "plateau", "plateau_lr"]
# MQAR runs sit on a loss plateau at ln(vocab / 2) (chance) before a sudden drop, at a step that
# varies with the seed. A run whose held-out accuracy stays below PLATEAU at every evaluated pair
# count ended on it: the plateau experiments retrain exactly those runs with 3x the steps, and
# with half the learning rate. (Rule added after the first full run showed such runs; it picks
# runs by their accuracy alone.)
PLATEAU = 0.10

# The verdict rule, fixed before the full run: a comparison of a against b over paired seeds is
# "better" (or "worse") when every seed's difference has that sign and the mean difference is at
# least MIN_GAIN (accuracy: 1 point; bits per byte: 0.01); anything else is "within noise".
# One seed (the quick size) gives no verdict at all: "every seed agrees" would be trivially true.
MIN_GAIN = {"accuracy": 0.01, "bpb": 0.01}
VERDICT_RULE = ("paired over seeds: 'better' if a beats b on every seed and by at least "
                "MIN_GAIN on average (1 accuracy point; 0.01 bits per byte), 'worse' likewise, "
                "else 'within noise'; one seed: no verdict")


def caching(variant, C=8, top_k=None, **options):
    """Model options for Memory Caching (independent segments); top_k only for SSC."""
    if variant == "ssc":
        options["top_k"] = top_k or 4
    return dict(caching=dict(variant=variant, segment_len=C, mode="independent", **options))


# name -> (preset, options): every model an experiment trains. PRESETS give the base set-up.
MODELS = {
    "attention": ("attention", {}), "linear": ("linear", {}),
    "linear-grm": ("linear-grm", {}), "linear-ssc": ("linear-ssc", {}),
    "linear@K32": ("linear", dict(head_dim=32)),
    "linear-grm@C16": ("linear", caching("grm", 16)),
    "linear-grm@C32": ("linear", caching("grm", 32)),
    "linear-grm@log": ("linear", dict(caching=dict(variant="grm", segment_len=1,
                                                   segmentation="log", mode="independent"))),
    "linear-grm-position": ("linear", caching("grm", gates="position", max_segments=16)),
    "linear-grm-u=q": ("linear", caching("grm", connector=False)),
    "linear-grm-sum": ("linear", caching("grm", pool="sum")),
    "linear-grm-checkpoint": ("linear-grm-checkpoint", {}),
    "linear-ssc-k1": ("linear", caching("ssc", top_k=1)),
}
DEEP_VARIANTS = {"delta": ["", "-grm", "-ssc"], "dla": ["", "-grm", "-soup", "-ssc"],
                 "titans": ["", "-grm", "-soup", "-ssc"], "linear": ["", "-grm"]}
for _m, _vs in DEEP_VARIANTS.items():                            # the deep experiment (T = 64)
    for _v in _vs:
        MODELS[f"{_m}{_v}@64"] = (_m, caching(_v[1:], top_k=2) if _v else {})
LM_C = 32                                                           # LM segments (T = 256: 8)
LM_MODELS = ["attention@lm", "linear@lm", "linear-grm@lm", "linear-ssc@lm", "dla@lm",
             "dla-grm@lm", "dla-soup@lm", "dla-ssc@lm"]
for _n in LM_MODELS:
    _m, _, _v = _n[:-3].partition("-")
    MODELS[_n] = (_m, caching(_v, LM_C, top_k=2) if _v else {})
ABLATIONS = {   # row -> (model, what the paper's Table 5 calls it, what changes)
    "linear-grm": ("GRM (C = 8)", "the full model: content gates, u = x W_u, mean pooling, "
                   "independent segments"),
    "linear": ("- Gating (Residual)", "Residual on a linear memory with independent segments IS "
               "the plain memory (Eq. 12-13); not retrained"),
    "linear-grm-position": ("- Context-dependent", "gates from learned per-segment keys"),
    "linear-grm-u=q": ("- Shared u and q (paper: no numbers)", "u = q, no connector"),
    "linear-grm-sum": ("sum pooling (paper §3.3)", "segment summaries are key sums"),
    "linear-grm-checkpoint": ("checkpoint segments (§3.4, promised)", "segments continue "
                              "the previous state"),
    "linear-ssc": ("SSC, k = 4", "top-4 of up to 15 cached segments"),
    "linear-ssc-k1": ("SSC, k = 1", "top-1"),
}
DEEP_MEMORIES = ["delta", "dla", "titans"]

SIZES = {   # "smoke" only checks the code paths (tests/test_train.py); its numbers mean nothing
    "smoke": dict(experiments=EXPERIMENTS, seeds=[0], steps=3, eval_n=24, lrs=[1e-2, 2e-2],
                  select_seeds=[SELECT_SEED], parity=["linear-grm@C32"],
                  ablations=["linear-grm", "linear", "linear-grm-u=q"],
                  log=dict(seq_len=255, batch_size=4, steps=3),
                  niah=dict(lengths=[128, 256], depths=[0.0, 1.0], n=8),
                  extrap_lengths=[128, 256],
                  deep=dict(seq_len=64, pairs=[8, 16], steps=3, seeds=[0],
                            memories=["delta", "dla"]),
                  lm=dict(seq_len=64, batch_size=4, steps=3, eval_n=8, seeds=[0],
                          models=["linear@lm", "dla-soup@lm"]),
                  cost=dict(lengths=[64, 128, 256], seq_len=256, segment_lens=[8, 64],
                            step_segment_lens=[8, 32]), plateau_factor=2),
    "quick": dict(experiments=["recall", "niah", "extrapolation", "lm"], seeds=[0], steps=500,
                  eval_n=500, lrs=[1e-2], select_seeds=[], parity=[], ablations=[], log=None,
                  niah=dict(lengths=[128, 256, 512], depths=[0.0, 0.5, 1.0], n=100),
                  extrap_lengths=[128, 256, 512], deep=None,
                  lm=dict(seq_len=256, batch_size=8, steps=150, eval_n=64, seeds=[0],
                          models=["attention@lm", "linear@lm", "linear-grm@lm"]),
                  cost=None),
    "full": dict(experiments=EXPERIMENTS, seeds=[0, 1, 2], steps=1000, eval_n=1000,
                 lrs=[3e-3, 1e-2, 2e-2], select_seeds=[SELECT_SEED],
                 parity=["linear-grm@C16", "linear-grm@C32", "linear@K32"],
                 ablations=list(ABLATIONS), log=dict(seq_len=255, batch_size=16, steps=1000),
                 niah=dict(lengths=[128, 256, 512, 1024], depths=[0.0, 0.25, 0.5, 0.75, 1.0],
                           n=200),
                 extrap_lengths=[128, 256, 512, 1024],
                 deep=dict(seq_len=64, pairs=[8, 16], steps=500, seeds=[0, 1, 2],
                           memories=DEEP_MEMORIES + ["linear"]),
                 lm=dict(seq_len=256, batch_size=8, steps=300, eval_n=512, seeds=[0, 1, 2],
                         models=LM_MODELS),
                 cost=dict(lengths=[512, 1024, 2048, 4096, 8192], seq_len=2048,
                           segment_lens=[4, 8, 16, 32, 64, 128, 512],
                           step_segment_lens=[8, 16, 32]), plateau_factor=3),
}


# ---------------------------------------------------------------------------------- helpers
def colour(name):
    """The book's colour for a model (minimc.viz), e.g. "linear-grm@C16" -> GRM's colour."""
    try:
        from minimc.viz import color
        return color(name.split("@")[0])
    except (ImportError, KeyError):
        return None


def mean_std(xs):
    """Mean and sample standard deviation (0 for one value)."""
    xs = list(xs)
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0


def compare(a, b, metric="accuracy"):
    """The verdict rule (VERDICT_RULE) for a against b: dicts {seed: value} over shared seeds.
    For bits per byte lower is better. Returns a plain dict."""
    seeds = sorted(set(a) & set(b))
    sign = -1 if metric == "bpb" else 1
    d = [sign * (a[s] - b[s]) for s in seeds]                # > 0: a is better
    m, s = mean_std(d)
    gain = MIN_GAIN[metric]
    verdict = ("one seed: no verdict" if len(d) < 2 else
               "better" if all(x > 0 for x in d) and m >= gain else
               "worse" if all(x < 0 for x in d) and -m >= gain else "within noise")
    return dict(seeds=seeds, diffs=d, mean=m, std=s, verdict=verdict, metric=metric)


def acc_at(r, kv, seq_len=T):
    return next(e["accuracy"] for e in r["eval"]
                if e["num_kv_pairs"] == kv and e["seq_len"] == seq_len)


def by_seed(runs, name, value):
    """{seed: value(run)} of the runs of model ``name``."""
    return {r["config"]["seed"]: value(r) for r in runs if r["config"]["model"] == name}


def mqar_run(name, seed, size, lr=1e-2, models=None, seq_len=T, batch_size=32, pairs=TRAIN_KV,
             evals=None, eval_seed=EVAL_SEED, steps=None, eval_n=None, verbose=True):
    """Train the model ``name`` (MODELS) on the MQAR mixture; evaluate on held-out sequences
    (``eval_seed``: EVAL_SEED = test, VALID_SEED = validation). Keeps the module in ``models``."""
    preset, options = MODELS[name]
    evals = evals or [(seq_len, kv) for kv in EVAL_KV if 4 * kv <= seq_len]
    n = eval_n or size["eval_n"]
    config = dict(task="mqar", steps=steps or size["steps"], batch_size=batch_size,
                  seq_len=seq_len, num_kv_pairs=list(pairs), lr=lr, seed=seed, eval_n=n,
                  eval_seed=eval_seed, preset=preset)
    holder = {}

    def make():
        set_seed(seed)
        holder["model"] = tiny_lm(preset, **options)
        return holder["model"]
    r = fit(make(), lambda step: batch(step, batch_size, seq_len, list(pairs), 256, seed),
            lambda m: [evaluate(m, s, kv, n=n, seed=eval_seed) for s, kv in evals],
            config=config, steps=config["steps"], lr=lr, seed=seed, log_every=250,
            threads=1, device="cpu", verbose=verbose, name=name)
    r["config"]["model_options"] = options
    if models is not None:
        models[name, seed] = holder["model"]
    return r


def table_of(runs, names, kvs=EVAL_KV):
    """{name: {kv: (mean, std) over seeds}} at T = 128."""
    return {n: {str(kv): mean_std(acc_at(r, kv) for r in runs if r["config"]["model"] == n)
                for kv in kvs} for n in names if any(r["config"]["model"] == n for r in runs)}


# ---------------------------------------------------------------------------------- experiments
def exp_lr(size):
    """Sweep the learning rate of every headline model on SELECT_SEED; choose the rate with the
    best validation accuracy at 32 pairs (VALID_SEED sequences), ties to the smaller rate."""
    runs = [mqar_run(n, s, size, lr=lr, eval_seed=VALID_SEED, evals=[(T, 32)])
            for n in RECALL for lr in size["lrs"] for s in size["select_seeds"]]
    chosen = {}
    for n in RECALL:
        score = {lr: mean_std(acc_at(r, 32) for r in runs if r["config"]["model"] == n
                              and r["config"]["lr"] == lr)[0] for lr in size["lrs"]}
        chosen[n] = max(size["lrs"], key=lambda lr: (score[lr], -lr))
        print(f"lr  {n:>12}: " + ", ".join(f"{lr:g} {a:.1%}" for lr, a in score.items())
              + f" -> {chosen[n]:g}", flush=True)
    return dict(runs=runs, grid=size["lrs"], chosen=chosen, select_seeds=size["select_seeds"],
                criterion="validation accuracy at 32 pairs (VALID_SEED), training seed "
                          f"{size['select_seeds']}; ties -> smaller rate")


def chosen_lr(res, name):
    """The chosen rate of a headline model (lr experiment), else 1e-2."""
    family = {"linear@K32": "linear", "linear-ssc-k1": "linear-ssc"}.get(name, name)
    if family.startswith("linear-grm"):
        family = "linear-grm"
    return (res.get("lr") or {}).get("chosen", {}).get(family, 1e-2)


def exp_recall(size, res, models):
    runs = [mqar_run(n, s, size, lr=chosen_lr(res, n), models=models)
            for s in size["seeds"] for n in RECALL]
    return recall_result(runs)


def recall_result(runs):
    """The recall experiment's record from its runs (the notebook's live cells use it too)."""
    acc32 = {n: by_seed(runs, n, lambda r: acc_at(r, 32)) for n in RECALL}
    return dict(runs=runs, table=table_of(runs, RECALL),
                lr={n: next(r["config"]["lr"] for r in runs if r["config"]["model"] == n)
                    for n in RECALL},
                verdicts={"grm_vs_linear": compare(acc32["linear-grm"], acc32["linear"]),
                          "ssc_vs_linear": compare(acc32["linear-ssc"], acc32["linear"]),
                          "attention_vs_grm": compare(acc32["attention"], acc32["linear-grm"]),
                          "grm_vs_ssc": compare(acc32["linear-grm"], acc32["linear-ssc"])})


def exp_parity(size, res):
    runs = [mqar_run(n, s, size, lr=chosen_lr(res, n)) for s in size["seeds"]
            for n in size["parity"]]
    every = runs + res["recall"]["runs"]
    names = ["attention", "linear", "linear@K32", "linear-grm", "linear-grm@C16",
             "linear-grm@C32", "linear-ssc"]
    points = []
    for n in names:
        mine = [r for r in every if r["config"]["model"] == n]
        if mine:
            m, s = mean_std(acc_at(r, 32) for r in mine)
            C = (MODELS[n][1].get("caching") or {}).get("segment_len", 8 if "-" in n else None)
            points.append(dict(model=n, state_size=mine[0]["state_size"], accuracy=m, std=s,
                               seeds=len(mine), segment_len=C))
    acc = {n: by_seed(every, n, lambda r: acc_at(r, 32)) for n in names}
    v = {}
    if acc["linear-grm@C32"] and acc["linear@K32"]:
        v["grm_C32_vs_linear_K32"] = compare(acc["linear-grm@C32"], acc["linear@K32"])
    for c in ("linear-grm@C16", "linear-grm@C32"):
        if acc[c]:
            v[f"attention_vs_{c}"] = compare(acc["attention"], acc[c])
            v[f"{c}_vs_linear"] = compare(acc[c], acc["linear"])
            v[f"grm_C8_vs_{c}"] = compare(acc["linear-grm"], acc[c])
    return dict(runs=runs, points=points, verdicts=v,
                attention_state=next(p["state_size"] for p in points if p["model"] == "attention"))


def exp_log_linear(size, res):
    L = size["log"]
    names = ["linear-grm@log", "linear-grm@C32"]
    runs = [mqar_run(n, s, size, lr=chosen_lr(res, "linear-grm"), seq_len=L["seq_len"],
                     batch_size=L["batch_size"], steps=L["steps"],
                     evals=[(L["seq_len"], kv) for kv in (8, 16, 32)])
            for s in size["seeds"] for n in names]
    from minimc.caching import segment_bounds
    acc = {n: by_seed(runs, n, lambda r: acc_at(r, 32, L["seq_len"])) for n in names}
    table = {n: {str(kv): mean_std(acc_at(r, kv, L["seq_len"]) for r in runs
                                   if r["config"]["model"] == n) for kv in (8, 16, 32)}
             for n in names}
    return dict(runs=runs, table=table, seq_len=L["seq_len"], batch_size=L["batch_size"],
                bounds={"log": segment_bounds(L["seq_len"], 1, "log"),
                        "constant C=32": segment_bounds(L["seq_len"], 32),
                        "log at T=128": segment_bounds(128, 1, "log")},
                state_size={n: next(r["state_size"] for r in runs if r["config"]["model"] == n)
                            for n in names},
                verdicts={"constant_vs_log": compare(acc["linear-grm@C32"],
                                                     acc["linear-grm@log"])})


def exp_ablations(size, res):
    have = {(r["config"]["model"], r["config"]["seed"]) for r in res["recall"]["runs"]}
    runs = [mqar_run(n, s, size, lr=chosen_lr(res, n)) for s in size["seeds"]
            for n in size["ablations"] if (n, s) not in have]
    every = runs + [r for r in res["recall"]["runs"] if r["config"]["model"] in ABLATIONS]
    acc = {n: by_seed(every, n, lambda r: acc_at(r, 32)) for n in size["ablations"]}
    rows = [dict(model=n, row=ABLATIONS[n][0], change=ABLATIONS[n][1],
                 accuracy=mean_std(acc[n].values()), seeds=sorted(acc[n]))
            for n in size["ablations"] if acc[n]]
    base = "linear-grm"
    verdicts = {f"{base}_vs_{n}": compare(acc[base], acc[n]) for n in size["ablations"]
                if n not in (base, "linear-ssc") and acc[n]}
    if "linear-ssc-k1" in acc and "linear-ssc" in acc:
        verdicts["ssc_k4_vs_k1"] = compare(acc["linear-ssc"], acc["linear-ssc-k1"])
    return dict(runs=runs, rows=rows, verdicts=verdicts)


def niah_grid(model, size, seed_offset=0):
    """Accuracy of a trained model on the S-NIAH grid: {length: {depth: accuracy}}."""
    g = size["niah"]
    out = {}
    for L in g["lengths"]:
        out[str(L)] = {}
        for d in g["depths"]:
            x, y = niah(g["n"], L, d, seed=NIAH_SEED + 1000 * L + int(100 * d) + seed_offset)
            out[str(L)][str(d)] = evaluate_on(model, x, y, batch_size=50)["accuracy"]
    return out


def exp_niah(size, models):
    rows = []
    for (name, seed), model in sorted(models.items()):
        if name in RECALL:
            rows.append(dict(model=name, seed=seed, grid=niah_grid(model, size)))
            print(f"niah  {name:>11} seed {seed}: " + "  ".join(
                f"T{L} " + "/".join(f"{a:.0%}" for a in by_d.values())
                for L, by_d in rows[-1]["grid"].items()), flush=True)
    return niah_result(rows, size)


def niah_result(rows, size):
    def mean_grid(r):
        return mean_std(a for by_d in r["grid"].values() for a in by_d.values())[0]

    def longest(r):
        return mean_std(r["grid"][str(max(size["niah"]["lengths"]))].values())[0]
    names = [n for n in RECALL if any(r["model"] == n for r in rows)]
    overall = {n: {r["seed"]: mean_grid(r) for r in rows if r["model"] == n} for n in names}
    long = {n: {r["seed"]: longest(r) for r in rows if r["model"] == n} for n in names}
    def at_length(r, L):
        return mean_std(r["grid"][str(L)].values())[0]
    v = {}
    for n in ("linear-grm", "linear-ssc"):
        if n in overall and "linear" in overall:
            v[f"{n}_vs_linear"] = compare(overall[n], overall["linear"])
            v[f"{n}_vs_linear_longest"] = compare(long[n], long["linear"])
            for L in size["niah"]["lengths"]:                   # mean over depths, per length
                a, b = ({r["seed"]: at_length(r, L) for r in rows if r["model"] == m}
                        for m in (n, "linear"))
                v[f"{n}_vs_linear_T{L}"] = compare(a, b)
    if "attention" in overall and "linear-grm" in overall:
        v["attention_vs_grm"] = compare(overall["attention"], overall["linear-grm"])
    return dict(rows=rows, lengths=size["niah"]["lengths"], depths=size["niah"]["depths"],
                n=size["niah"]["n"], train_seq_len=T, verdicts=v,
                overall={n: mean_std(o.values()) for n, o in overall.items()},
                longest={n: mean_std(o.values()) for n, o in long.items()})


POST = {"plain": None, "grm u=q C=32": dict(variant="grm", segment_len=32),
        "mean C=32": dict(variant="mean", segment_len=32),
        "mean C=128": dict(variant="mean", segment_len=128)}


def exp_extrapolation(size, models, kv=32):
    """Post-training caching: evaluate models trained at T = 128 on longer sequences."""
    rows = []
    for (name, seed), model in sorted(models.items()):
        if name not in ("attention", "linear", "linear-grm"):
            continue
        for label, c in (POST.items() if name == "linear" else [("as trained", None)]):
            m = model if c is None else with_caching(model, mode="checkpoint", **c)
            for L in size["extrap_lengths"]:
                acc = evaluate(m, L, kv, n=min(size["eval_n"], 500 if L > 256 else 1000))
                rows.append(dict(model=name, seed=seed, caching=label, seq_len=L,
                                 num_kv_pairs=kv, accuracy=acc["accuracy"]))
                print(f"extrapolation  {name:>11} seed {seed}  {label:>13}  T {L:5d}: "
                      f"{acc['accuracy']:.1%}", flush=True)
    return extrapolation_result(rows, size)


def extrapolation_result(rows, size):
    L = max(size["extrap_lengths"])
    at = {c: {r["seed"]: r["accuracy"] for r in rows if r["model"] == "linear"
              and r["caching"] == c and r["seq_len"] == L} for c in POST}
    v = {f"{c} vs plain at T={L}": compare(at[c], at["plain"]) for c in POST
         if c != "plain" and at[c]}
    return dict(rows=rows, train_seq_len=T, num_kv_pairs=32, mode="checkpoint", verdicts=v)


def extrapolation_table(rows):
    """{(model, caching): {length: (mean, std) over seeds}}, rows in the order they first appear."""
    table = {}
    for r in rows:
        table.setdefault((r["model"], r["caching"]), {}).setdefault(r["seq_len"], []).append(
            r["accuracy"])
    return {key: {L: mean_std(a) for L, a in sorted(by_len.items())}
            for key, by_len in table.items()}


def exp_deep(size):
    D = size["deep"]
    names = [f"{m}{v}@64" for m in D["memories"] for v in DEEP_VARIANTS[m]]
    evals = [(D["seq_len"], kv) for kv in D["pairs"]]
    runs = [mqar_run(n, s, size, seq_len=D["seq_len"], pairs=D["pairs"], steps=D["steps"],
                     evals=evals) for s in D["seeds"] for n in names]
    kv = max(D["pairs"])
    acc = {n: by_seed(runs, n, lambda r: acc_at(r, kv, D["seq_len"])) for n in names}
    table = {n: {str(k): mean_std(acc_at(r, k, D["seq_len"]) for r in runs
                                  if r["config"]["model"] == n) for k in D["pairs"]}
             for n in names}
    v = {}
    for m in D["memories"]:
        for var in DEEP_VARIANTS[m][1:]:
            v[f"{m}{var}_vs_{m}"] = compare(acc[f"{m}{var}@64"], acc[f"{m}@64"])
        if "-soup" in DEEP_VARIANTS[m]:
            v[f"{m}-grm_vs_{m}-soup"] = compare(acc[f"{m}-grm@64"], acc[f"{m}-soup@64"])
        if m != "linear" and "linear-grm@64" in acc:           # Table 5's "- Linear Memory"
            v[f"{m}-grm_vs_linear-grm"] = compare(acc[f"{m}-grm@64"], acc["linear-grm@64"])
    nan = {r["config"]["model"] + f" seed {r['config']['seed']}" for r in runs
           if any(not math.isfinite(h["loss"]) for h in r["history"])}
    return dict(runs=runs, table=table, verdicts=v, seq_len=D["seq_len"], pairs=D["pairs"],
                steps=D["steps"], nan_runs=sorted(nan))


LM_BINS = [(0, 16), (16, 64), (64, 128), (128, 256)]


def lm_data(size):
    """Training corpus, and the validation windows every model is scored on."""
    L = size["lm"]
    train_bytes, valid_bytes = stdlib_corpus("train"), stdlib_corpus("valid")
    return train_bytes, byte_windows(valid_bytes, L["eval_n"], L["seq_len"], seed=EVAL_SEED)


def lm_run(name, seed, size, data=None, verbose=True):
    """A byte-level LM of model ``name`` on the standard library's source: bits per byte on the
    held-out files, overall and at every position of the context."""
    L = size["lm"]
    train_bytes, (vx, vy) = data or lm_data(size)
    preset, options = MODELS[name]
    config = dict(task="lm", steps=L["steps"], batch_size=L["batch_size"], seq_len=L["seq_len"],
                  lr=1e-2, seed=seed, eval_n=L["eval_n"], preset=preset)
    set_seed(seed)
    model = tiny_lm(preset, **options)

    def evaluate_fn(m):
        out = evaluate_on(m, vx, vy, batch_size=32, by_position=True)
        return [dict(accuracy=out["accuracy"], bpb=out["loss"] / math.log(2),
                     bpb_by_position=[x / math.log(2) for x in out["loss_by_position"]])]
    r = fit(model, lambda step: byte_windows(train_bytes, L["batch_size"], L["seq_len"],
                                             seed=seed * 1_000_003 + step),
            evaluate_fn, config=config, steps=L["steps"], lr=1e-2, seed=seed, log_every=100,
            threads=1, device="cpu", verbose=verbose, name=name)
    r["config"]["model_options"] = options
    r["bpb"] = r["eval"][0]["bpb"]
    return r


def exp_lm(size):
    data = lm_data(size)
    runs = [lm_run(n, s, size, data) for s in size["lm"]["seeds"] for n in size["lm"]["models"]]
    return lm_result(runs, size)


def binned(curve, bins):
    return [sum(curve[a:b]) / len(curve[a:b]) for a, b in bins if a < len(curve)]


def lm_result(runs, size):
    names = [n for n in LM_MODELS if any(r["config"]["model"] == n for r in runs)]
    T_lm = size["lm"]["seq_len"]
    bins = [(a, min(b, T_lm)) for a, b in LM_BINS if a < T_lm]
    bpb = {n: by_seed(runs, n, lambda r: r["bpb"]) for n in names}
    last = {n: by_seed(runs, n, lambda r: binned(r["eval"][0]["bpb_by_position"], bins)[-1])
            for n in names}
    table = {n: dict(bpb=mean_std(bpb[n].values()),
                     bins=[mean_std(binned(r["eval"][0]["bpb_by_position"], bins)[i]
                                    for r in runs if r["config"]["model"] == n)
                           for i in range(len(bins))]) for n in names}
    v = {}
    for base in ("linear", "dla"):
        for var in ("-grm", "-soup", "-ssc"):
            a, b = f"{base}{var}@lm", f"{base}@lm"
            if a in bpb and b in bpb:
                v[f"{a}_vs_{b}"] = compare(bpb[a], bpb[b], "bpb")
                v[f"{a}_vs_{b}_last_bin"] = compare(last[a], last[b], "bpb")
    if "dla-grm@lm" in bpb and "dla-soup@lm" in bpb:
        v["dla-grm@lm_vs_dla-soup@lm"] = compare(bpb["dla-grm@lm"], bpb["dla-soup@lm"], "bpb")
    if "attention@lm" in bpb:
        for n in names:
            if n != "attention@lm":
                v[f"attention@lm_vs_{n}"] = compare(bpb["attention@lm"], bpb[n], "bpb")
    return dict(runs=runs, table=table, bins=bins, verdicts=v, seq_len=T_lm,
                python=sys.version.split()[0], corpus="stdlib *.py, split by file (sha1)")


def fwd_bwd_cost(model, seq_len, batch=2, repeats=3, pairs=None):
    """Seconds of one forward + backward pass (the fastest of ``repeats`` after a warm-up: on a
    shared machine the minimum is the least disturbed), and the bytes autograd saves for
    backward (the activation memory that grows with length)."""
    if pairs is None:
        x, y = mqar(batch, seq_len, min(32, seq_len // 4), seed=1)
    else:
        x, y = batch_fn_cost(batch, seq_len, pairs)
    saved = {}

    def pack(t):
        saved[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if i == 0 \
                else nullcontext():
            loss, _ = model(x, y)
        loss.backward()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return dict(seconds=min(times[1:]), saved_mib=sum(saved.values()) / 2 ** 20)


def batch_fn_cost(n, seq_len, pairs):
    return batch(0, n, seq_len, pairs, 256, 0)


def slope(xs, ys):
    """Least-squares slope of log y against log x: the growth exponent."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


COST_MODELS = {"attention": ("attention", {}), "linear": ("linear", {}),
               "linear-residual": ("linear", caching("residual", 64)),
               "linear-grm": ("linear", caching("grm", 64)),
               "linear-soup": ("linear", caching("soup", 64)),
               "linear-ssc": ("linear", caching("ssc", 64, top_k=4))}


def exp_cost(size):
    """Time and memory against length (C = 64), against C at one length, and the training step
    of the state-parity models (B = 32, T = 128), measured side by side in one process."""
    torch.set_num_threads(1)
    c = size["cost"]
    rows, by_c, steps = [], [], []

    def build(preset, opts):
        set_seed(0)
        return tiny_lm(preset, **opts)
    for L in c["lengths"]:
        for name, (preset, opts) in COST_MODELS.items():
            rows.append(dict(model=name, seq_len=L, segment_len=64,
                             **fwd_bwd_cost(build(preset, opts), L, repeats=5)))
            print(f"cost  {name:>16}  T {L:5d}  {rows[-1]['seconds'] * 1e3:8.1f} ms  "
                  f"{rows[-1]['saved_mib']:7.1f} MiB saved", flush=True)
    L = c["seq_len"]
    for C in c["segment_lens"]:
        by_c.append(dict(model="linear-grm", seq_len=L, segment_len=C,
                         **fwd_bwd_cost(build("linear", caching("grm", C)), L, repeats=5)))
        print(f"cost  linear-grm  C {C:4d}  T {L:5d}  {by_c[-1]['seconds'] * 1e3:8.1f} ms",
              flush=True)
    parity = {"attention": ("attention", {}), "linear": ("linear", {}),
              "linear@K32": MODELS["linear@K32"]}
    parity.update({f"linear-grm@C{C}": ("linear", caching("grm", C))
                   for C in c["step_segment_lens"]})
    models = {n: build(*spec) for n, spec in parity.items()}
    times = {n: [] for n in models}
    for _ in range(7):                                   # interleaved: the same load for all
        for n, m in models.items():
            times[n].append(fwd_bwd_cost(m, T, batch=32, repeats=1, pairs=TRAIN_KV)["seconds"])
    for n, m in models.items():
        steps.append(dict(model=n, seconds=sorted(times[n])[len(times[n]) // 2],
                          state_size=m.state_size(T)))
        print(f"cost  training step (B 32, T 128)  {n:>16}: {steps[-1]['seconds'] * 1e3:.1f} ms",
              flush=True)
    top = c["lengths"][-3:]
    fits = {n: {k: slope(top, [r[k] for r in rows if r["model"] == n and r["seq_len"] in top])
                for k in ("seconds", "saved_mib")} for n in COST_MODELS}
    small = [r for r in by_c if r["segment_len"] <= 32]
    return dict(rows=rows, exponents=fits, exponent_lengths=top, by_segment_len=by_c,
                segment_len_exponent=slope([r["segment_len"] for r in small],
                                           [r["seconds"] for r in small]) if len(small) > 1
                else None, train_step=steps, batch=2,
                note="1 thread; time = fastest of 5 after a warm-up; memory = bytes autograd "
                     "saves for backward (deduplicated storages); training step = median of 7, "
                     "B = 32, T = 128, interleaved")


def on_plateau(r):
    """Did an MQAR run end on the chance plateau (PLATEAU)?"""
    return r["config"].get("task") == "mqar" and max(e["accuracy"] for e in r["eval"]) < PLATEAU


def exp_plateau(size, res, lr_factor=1.0):
    """Retrain every MQAR run of the other experiments that ended on the plateau, with the same
    seed, data and evaluation but plateau_factor x the steps (a longer schedule, not a
    continuation); or, with ``lr_factor``, the same steps at lr_factor x the learning rate."""
    skip = ("lr", "plateau", "plateau_lr")
    stuck = [(c, r) for c in EXPERIMENTS if c in res and c not in skip
             for r in res[c].get("runs", []) if on_plateau(r)]
    factor = size["plateau_factor"] if lr_factor == 1.0 else 1
    rows = []
    for c, r in stuck:
        cfg = r["config"]
        evals = [(e["seq_len"], e["num_kv_pairs"]) for e in r["eval"]]
        longer = mqar_run(cfg["model"], cfg["seed"], size, lr=lr_factor * cfg["lr"],
                          seq_len=cfg["seq_len"], batch_size=cfg["batch_size"],
                          pairs=cfg["num_kv_pairs"], evals=evals, steps=factor * cfg["steps"],
                          eval_n=cfg["eval_n"], eval_seed=cfg["eval_seed"])
        rows.append(dict(experiment=c, model=cfg["model"], seed=cfg["seed"], steps=cfg["steps"],
                         lr=cfg["lr"], longer_lr=longer["config"]["lr"],
                         longer_steps=longer["config"]["steps"], accuracy=r["eval"],
                         longer_accuracy=longer["eval"],
                         loss=[(h["step"], h["loss"]) for h in r["history"]],
                         longer_loss=[(h["step"], h["loss"]) for h in longer["history"]]))
    runs = sum(len(res[c].get("runs", [])) for c in EXPERIMENTS
               if c in res and c not in skip and res[c].get("runs")
               and res[c]["runs"][0]["config"].get("task") == "mqar")
    return dict(rows=rows, threshold=PLATEAU, factor=factor, lr_factor=lr_factor,
                runs_checked=runs)


# ---------------------------------------------------------------------------------- figures
def figures(res, out=None, only=None):
    """One figure per experiment in ``res`` (or only those in ``only``): saved as
    ``out/<name>.png`` and closed when ``out`` is given; otherwise left open for a notebook."""
    import matplotlib.pyplot as plt
    draw = [c for c in EXPERIMENTS if c in res and (only is None or c in only)]

    def save(fig, name):
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        if out is not None:
            fig.savefig(os.path.join(out, name), dpi=110)
            plt.close(fig)

    def logx(ax, ticks):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()

    if "lr" in draw:
        r = res["lr"]
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for n in RECALL:
            ys = [mean_std(acc_at(x, 32) for x in r["runs"] if x["config"]["model"] == n
                           and x["config"]["lr"] == lr)[0] for lr in r["grid"]]
            ax.plot(r["grid"], ys, "o-", color=colour(n), label=f"{n} -> {r['chosen'][n]:g}")
        ax.set_xscale("log")
        ax.set(xlabel="peak learning rate", ylabel="validation accuracy, 32 pairs",
               title=f"Learning-rate choice (training seed {r['select_seeds']})")
        ax.legend(fontsize=8), save(fig, "lr.png")
    if "recall" in draw:
        fig, ax = plt.subplots(figsize=(6, 4))
        table = res["recall"]["table"]
        for n in table:
            ax.errorbar(EVAL_KV, [table[n][str(kv)][0] for kv in EVAL_KV],
                        yerr=[table[n][str(kv)][1] for kv in EVAL_KV], marker="o", capsize=3,
                        label=f"{n} (lr {res['recall']['lr'][n]:g})", color=colour(n))
        seeds = len({r["config"]["seed"] for r in res["recall"]["runs"]})
        logx(ax, EVAL_KV)
        ax.set(xlabel="key-value pairs (T = 128)", ylabel="accuracy",
               title=f"MQAR recall ({seeds} seed{'s' * (seeds > 1)}, mean ± std)")
        ax.legend(fontsize=8), save(fig, "recall.png")
    if "parity" in draw:
        p = res["parity"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        ax = axes[0]
        for pt in p["points"]:
            ax.errorbar(pt["state_size"], pt["accuracy"], yerr=pt["std"], marker="o",
                        capsize=3, color=colour(pt["model"]), ls="none")
            ax.annotate(pt["model"].replace("linear-", ""), (pt["state_size"], pt["accuracy"]),
                        textcoords="offset points", xytext=(5, -12), fontsize=8)
        ax.axvline(p["attention_state"], color="gray", ls=":", label="attention's KV cache")
        ax.set(xscale="log", xlabel="numbers held between tokens at T = 128",
               ylabel="accuracy, 32 pairs", title="State parity (mean ± std over seeds)")
        ax.legend(fontsize=8, loc="lower right")
        steps = res.get("cost", {}).get("train_step")
        if steps:
            acc = {pt["model"]: pt["accuracy"] for pt in p["points"]}
            for s in steps:
                if s["model"] in acc:
                    axes[1].scatter(s["seconds"] * 1e3, acc[s["model"]], color=colour(s["model"]))
                    axes[1].annotate(s["model"].replace("linear-", ""),
                                     (s["seconds"] * 1e3, acc[s["model"]]),
                                     textcoords="offset points", xytext=(5, -12), fontsize=8)
            axes[1].set(xlabel="training step, ms (B 32, T 128, 1 thread)",
                        ylabel="accuracy, 32 pairs", title="Accuracy against cost, same C")
        save(fig, "parity.png")
    if "log_linear" in draw:
        r = res["log_linear"]
        fig, ax = plt.subplots(figsize=(6, 3.8))
        kvs = list(next(iter(r["table"].values())))
        for i, (n, t) in enumerate(r["table"].items()):
            ax.bar([j + 0.38 * (i - 0.5) for j in range(len(kvs))], [t[k][0] for k in kvs], 0.38,
                   yerr=[t[k][1] for k in kvs], capsize=3, label=n.split("@")[1] + " segments",
                   color="#7f7f7f" if "log" in n else colour("grm"))
        ax.set(xticks=range(len(kvs)), xticklabels=kvs, xlabel=f"pairs (T = {r['seq_len']})",
               ylabel="accuracy", ylim=(0, 1), title="Log-Linear++ vs constant segments, "
               "8 segments each")
        ax.legend(fontsize=8), save(fig, "log_linear.png")
    if "ablations" in draw:
        rows = res["ablations"]["rows"]
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
        ax.barh([r["row"] for r in rows], [r["accuracy"][0] for r in rows],
                xerr=[r["accuracy"][1] for r in rows], capsize=3,
                color=[colour(r["model"]) for r in rows])
        ax.invert_yaxis()
        ax.set(xlabel="accuracy, 32 pairs (mean ± std)",
               title="Table 5 at toy scale (linear memory)")
        save(fig, "ablations.png")
    if "niah" in draw:
        r = res["niah"]
        names = [n for n in RECALL if any(x["model"] == n for x in r["rows"])]
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False,
                                 layout="constrained")
        for ax, n in zip(axes[0], names):
            grid = [[mean_std(x["grid"][str(L)][str(d)] for x in r["rows"] if x["model"] == n)[0]
                     for L in r["lengths"]] for d in r["depths"]]
            im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for i, row in enumerate(grid):
                for j, a in enumerate(row):
                    ax.text(j, i, f"{a:.0%}", ha="center", va="center", fontsize=7,
                            color="white" if a < 0.6 else "black")
            ax.set(xticks=range(len(r["lengths"])), xticklabels=r["lengths"],
                   yticks=range(len(r["depths"])), yticklabels=r["depths"], title=n,
                   xlabel="context length")
            ax.grid(False)
        axes[0][0].set_ylabel("needle depth")
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
        save(fig, "niah.png")
    if "extrapolation" in draw:
        rows = res["extrapolation"]["rows"]
        fig, ax = plt.subplots(figsize=(8, 4))
        style = {"plain": colour("linear"), "grm u=q C=32": colour("grm"),
                 "mean C=32": colour("mean"), "mean C=128": "#c5b0d5"}
        for key, by_len in extrapolation_table(rows).items():
            Ls = list(by_len)
            ax.errorbar(Ls, [m for m, _ in by_len.values()], yerr=[s for _, s in by_len.values()],
                        marker="o", ls="-" if key[0] == "linear" else ":", capsize=3,
                        label=f"{key[0]} ({key[1]})", color=style.get(key[1]) or colour(key[0]))
        logx(ax, Ls)
        ax.set(xlabel="evaluation length (trained at 128), 32 pairs", ylabel="accuracy",
               title="Caching added after training, and length extrapolation")
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        save(fig, "extrapolation.png")
    if "deep" in draw:
        r = res["deep"]
        kv = str(max(r["pairs"]))
        mems = list(dict.fromkeys(n.split("-")[0].split("@")[0] for n in r["table"]))
        variants = ["", "-grm", "-soup", "-ssc"]
        fig, ax = plt.subplots(figsize=(8, 3.8))
        for i, v in enumerate(variants):
            xs = [j + 0.2 * (i - 1.5) for j, m in enumerate(mems) if f"{m}{v}@64" in r["table"]]
            ys = [r["table"][f"{m}{v}@64"][kv] for m in mems if f"{m}{v}@64" in r["table"]]
            ax.bar(xs, [y[0] for y in ys], 0.2, yerr=[y[1] for y in ys], capsize=2,
                   label=v[1:] or "plain", color=colour(v[1:]) if v else "#aaaaaa")
        ax.set(xticks=range(len(mems)), xticklabels=mems, ylim=(0, 1), ylabel=f"accuracy, {kv} "
               f"pairs", title=f"Caching on the memories that learn (T = {r['seq_len']}, "
               f"{r['steps']} steps)")
        ax.legend(fontsize=8, ncol=4), save(fig, "deep.png")
    if "lm" in draw:
        r = res["lm"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        width = 16                                              # positions per bin
        base = next((n for n in r["table"] if n.startswith("linear@")), None)

        def curve(n):                                           # mean over seeds, per bin
            cs = [x["eval"][0]["bpb_by_position"] for x in r["runs"] if x["config"]["model"] == n]
            mean = [sum(c[t] for c in cs) / len(cs) for t in range(len(cs[0]))]
            return [sum(mean[a:a + width]) / len(mean[a:a + width])
                    for a in range(0, len(mean), width)]
        xs = [a + width / 2 for a in range(0, r["seq_len"], width)]
        for n in r["table"]:
            ls = "--" if n.startswith("dla") else "-"
            axes[0].plot(xs, curve(n), ls, marker=".", label=n.split("@")[0], color=colour(n))
            if base:
                axes[1].plot(xs, [a - b for a, b in zip(curve(n), curve(base))], ls, marker=".",
                             label=n.split("@")[0], color=colour(n))
        axes[0].set(xlabel="position in the context (bytes)", ylabel="bits per byte (held out)",
                    title=f"Bits per byte by position (bins of {width})")
        axes[1].axhline(0, color="gray", lw=0.8)
        axes[1].set(xlabel="position in the context (bytes)", ylabel="difference, bits per byte",
                    title="Minus the plain linear memory (same windows)")
        axes[0].legend(fontsize=7, ncol=2)
        save(fig, "lm.png")
    if "cost" in draw:
        rows, ex = res["cost"]["rows"], res["cost"]["exponents"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, key, label in zip(axes, ("seconds", "saved_mib"),
                                  ("forward + backward, s", "saved for backward, MiB")):
            for n in ex:
                pts = [(r["seq_len"], r[key]) for r in rows if r["model"] == n]
                ax.plot(*zip(*pts), "o-", label=f"{n} (slope {ex[n][key]:.2f})", color=colour(n))
            logx(ax, sorted({r["seq_len"] for r in rows}))
            ax.set(yscale="log", xlabel="sequence length T (batch 2)", ylabel=label,
                   title="Cost vs length (caching: C = 64)")
            ax.legend(fontsize=7)
        by_c = res["cost"]["by_segment_len"]
        axes[2].plot([r["segment_len"] for r in by_c], [r["seconds"] * 1e3 for r in by_c], "o-",
                     color=colour("grm"), label=f"linear + GRM, T = {by_c[0]['seq_len']}")
        plain = [r["seconds"] for r in rows if r["model"] == "linear"
                 and r["seq_len"] == by_c[0]["seq_len"]]
        if plain:
            axes[2].axhline(plain[0] * 1e3, color=colour("linear"), ls="--", label="linear")
        logx(axes[2], [r["segment_len"] for r in by_c])
        axes[2].set(yscale="log", xlabel="segment length C", ylabel="forward + backward, ms",
                    title="Cost vs segment length")
        axes[2].legend(fontsize=7)
        save(fig, "cost.png")

    for c in ("plateau", "plateau_lr"):
        if c not in draw or not res[c]["rows"]:
            continue
        rows, p = res[c]["rows"], res[c]
        change = (f"{p['factor']}x the steps" if c == "plateau"
                  else f"{p['lr_factor']:g}x the learning rate")
        fig, ax = plt.subplots(figsize=(8, 4))
        for i, r in enumerate(rows):
            tone = plt.cm.tab10(i % 10)
            label = f"{r['model']} seed {r['seed']}"
            ax.plot(*zip(*r["loss"]), "o-", color=tone, label=label)
            ax.plot(*zip(*r["longer_loss"]), ":", color=tone)
        ax.axhline(math.log(128), color="gray", lw=0.8)
        ax.set(xlabel="training step", ylabel="training loss",
               title=f"Runs that ended on the plateau (solid), with {change} (dotted)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        save(fig, f"{c}.png")

# ---------------------------------------------------------------------------------- summary
def pct(ms, n=2):
    m, s = ms
    return f"{m:.1%} ± {s:.1%}" if n > 1 else f"{m:.1%}"


def verdict_lines(v):
    """One line per verdict: the gain of a over b (accuracy points, or bits per byte saved)."""
    out = []
    for name, c in v.items():
        f = ((lambda x: f"{x:+.3f} bits") if c["metric"] == "bpb"
             else (lambda x: f"{100 * x:+.1f} points"))
        out.append(f"- `{name}`: **{c['verdict']}** (gain {f(c['mean'])} ± {f(c['std'])[1:]}; "
                   f"per seed {', '.join(f(d) for d in c['diffs'])})")
    return out


def summary(res):
    lines = [f"Verdict rule (fixed before the full run): {VERDICT_RULE}.", ""]

    def seeds_of(runs):
        return len({r["config"]["seed"] for r in runs})
    if "lr" in res:
        r = res["lr"]
        lines += [f"## Learning rate (grid {r['grid']}, {r['criterion']})", "",
                  "| model | " + " | ".join(f"lr {lr:g}" for lr in r["grid"]) + " | chosen |",
                  "|---|" + "---|" * (len(r["grid"]) + 1)]
        for n in RECALL:
            accs = [mean_std(acc_at(x, 32) for x in r["runs"] if x["config"]["model"] == n
                             and x["config"]["lr"] == lr)[0] for lr in r["grid"]]
            lines.append(f"| {n} | " + " | ".join(f"{a:.1%}" for a in accs)
                         + f" | {r['chosen'][n]:g} |")
        lines.append("")
    if "recall" in res:
        r, n_s = res["recall"], seeds_of(res["recall"]["runs"])
        lines += [f"## Recall (accuracy, mean ± std over {n_s} seed{'s' * (n_s > 1)}; "
                  "trained on 8/16/32 pairs, T = 128)", "",
                  "| model | lr | " + " | ".join(f"{kv} pairs" for kv in EVAL_KV)
                  + " |", "|---|---|" + "---|" * len(EVAL_KV)]
        lines += [f"| {n} | {r['lr'][n]:g} | " + " | ".join(pct(t[str(kv)], n_s)
                                                           for kv in EVAL_KV) + " |"
                  for n, t in r["table"].items()]
        lines += [""] + verdict_lines(r["verdicts"]) + [""]
    if "parity" in res:
        p = res["parity"]
        lines += ["## State parity (32 pairs, T = 128)", "",
                  "| model | state size | vs attention's | accuracy | seeds |",
                  "|---|---|---|---|---|"]
        lines += [f"| {q['model']} | {q['state_size']:,} | "
                  f"{q['state_size'] / p['attention_state']:.2f}x | "
                  f"{pct((q['accuracy'], q['std']), q['seeds'])} | {q['seeds']} |"
                  for q in sorted(p["points"], key=lambda q: q["state_size"])]
        lines += [""] + verdict_lines(p["verdicts"]) + [""]
    if "log_linear" in res:
        r = res["log_linear"]
        n_s = seeds_of(r["runs"])
        lines += [f"## Log-Linear++ vs constant segments (T = {r['seq_len']}, batch "
                  f"{r['batch_size']})", "",
                  f"log segments: {[b - a for a, b in r['bounds']['log']]}; constant: "
                  f"{[b - a for a, b in r['bounds']['constant C=32']]}; at T = 128 the log scheme "
                  f"gives {[b - a for a, b in r['bounds']['log at T=128']]} (one segment).", "",
                  "| model | state size | 8 pairs | 16 pairs | 32 pairs |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {r['state_size'][n]:,} | " + " | ".join(pct(t[k], n_s) for k in t)
                  + " |" for n, t in r["table"].items()]
        lines += [""] + verdict_lines(r["verdicts"]) + [""]
    if "ablations" in res:
        r = res["ablations"]
        lines += ["## Table 5 at toy scale (around linear + GRM, C = 8; accuracy at 32 pairs)", "",
                  "| row | model | change | accuracy | seeds |", "|---|---|---|---|---|"]
        lines += [f"| {x['row']} | {x['model']} | {x['change']} | "
                  f"{pct(x['accuracy'], len(x['seeds']))} | {len(x['seeds'])} |" for x in r["rows"]]
        lines += [""] + verdict_lines(r["verdicts"]) + [""]
    if "niah" in res:
        r = res["niah"]
        lines += [f"## Single needle (S-NIAH style), trained on MQAR at T = {r['train_seq_len']}; "
                  f"{r['n']} sequences per cell", "",
                  "| model | mean over the grid | at T = " + str(max(r["lengths"])) + " |",
                  "|---|---|---|"]
        n_s = len({x["seed"] for x in r["rows"]})
        lines += [f"| {n} | {pct(r['overall'][n], n_s)} | {pct(r['longest'][n], n_s)} |"
                  for n in r["overall"]]
        lines += [""] + verdict_lines(r["verdicts"]) + [""]
    if "extrapolation" in res:
        rows = res["extrapolation"]["rows"]
        Ls = sorted({x["seq_len"] for x in rows})
        n_s = len({x["seed"] for x in rows})
        lines += ["## Length extrapolation, 32 pairs (trained at T = 128)", "",
                  "| model | caching at inference | " + " | ".join(f"T={L}" for L in Ls) + " |",
                  "|---|---|" + "---|" * len(Ls)]
        for key, by_len in extrapolation_table(rows).items():
            lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(pct(v, n_s)
                                                                for v in by_len.values()) + " |")
        lines += [""] + verdict_lines(res["extrapolation"]["verdicts"]) + [""]
    if "deep" in res:
        r = res["deep"]
        n_s = seeds_of(r["runs"])
        lines += [f"## Caching on delta, DLA, Titans (MQAR T = {r['seq_len']}, trained on "
                  f"{r['pairs']} pairs, {r['steps']} steps, lr 0.01, C = 8)", "",
                  "| model | " + " | ".join(f"{k} pairs" for k in r["pairs"]) + " |",
                  "|---|" + "---|" * len(r["pairs"])]
        lines += [f"| {n} | " + " | ".join(pct(t[str(k)], n_s) for k in r["pairs"]) + " |"
                  for n, t in r["table"].items()]
        if r["nan_runs"]:
            lines += ["", f"NaN losses: {r['nan_runs']}"]
        lines += [""] + verdict_lines(r["verdicts"]) + [""]
    if "lm" in res:
        r = res["lm"]
        n_s = seeds_of(r["runs"])
        lines += [f"## Byte-level LM on the standard library (Python {r['python']}; T = "
                  f"{r['seq_len']}; bits per byte on held-out files, mean ± std over {n_s} "
                  f"seed{'s' * (n_s > 1)})",
                  "", "| model | all positions | " + " | ".join(f"positions {a}-{b - 1}"
                                                              for a, b in r["bins"]) + " |",
                  "|---|---|" + "---|" * len(r["bins"])]
        f = (lambda ms: f"{ms[0]:.3f} ± {ms[1]:.3f}") if n_s > 1 else (lambda ms: f"{ms[0]:.3f}")
        lines += [f"| {n.split('@')[0]} | {f(t['bpb'])} | " + " | ".join(f(b) for b in t["bins"])
                  + " |" for n, t in r["table"].items()]
        lines += [""] + verdict_lines(r["verdicts"]) + [""]
    if "cost" in res:
        c = res["cost"]
        Ls = sorted({x["seq_len"] for x in c["rows"]})
        lines += [f"## Cost: forward + backward, batch 2, 1 thread (C = 64); exponents over T in "
                  f"{c['exponent_lengths']}", "",
                  "| model | " + " | ".join(f"T={L}" for L in Ls) + " | time exp. | memory exp. |",
                  "|---|" + "---|" * (len(Ls) + 2)]
        for n, fx in c["exponents"].items():
            ms = [next(x["seconds"] for x in c["rows"] if x["model"] == n and x["seq_len"] == L)
                  for L in Ls]
            lines.append(f"| {n} | " + " | ".join(f"{t * 1e3:.0f} ms" for t in ms)
                         + f" | {fx['seconds']:.2f} | {fx['saved_mib']:.2f} |")
        by_c = c["by_segment_len"]
        lines += ["", f"By segment length, linear + GRM at T = {by_c[0]['seq_len']}: " + ", ".join(
            f"C={x['segment_len']} {x['seconds'] * 1e3:.0f} ms" for x in by_c)
            + (f" (exponent in C over C <= 32: {c['segment_len_exponent']:.2f})"
               if c["segment_len_exponent"] is not None else ""),
            "", "Training step (B 32, T 128): " + ", ".join(
                f"{x['model']} {x['seconds'] * 1e3:.0f} ms ({x['state_size']:,} numbers)"
                for x in c["train_step"]), ""]
    for c in ("plateau", "plateau_lr"):
        if c not in res:
            continue
        r = res[c]
        change = (f"{r['factor']}x the steps" if c == "plateau"
                  else f"{r.get('lr_factor', 1):g}x the learning rate, the same steps")
        lines += [f"## Runs that ended on the chance plateau (held-out accuracy < "
                  f"{r['threshold']:.0%} at every pair count): {len(r['rows'])} of "
                  f"{r['runs_checked']} MQAR runs, retrained with {change}", ""]
        if r["rows"]:
            lines += ["| experiment | model | seed | steps, lr | accuracy (each pair count) | "
                      "retrained: steps, lr | accuracy |", "|---|---|---|---|---|---|---|"]
            lines += [f"| {x['experiment']} | {x['model']} | {x['seed']} | {x['steps']}, "
                      f"{x.get('lr', '')} | "
                      + " / ".join(f"{e['accuracy']:.1%}" for e in x["accuracy"])
                      + f" | {x['longer_steps']}, {x.get('longer_lr', '')} | "
                      + " / ".join(f"{e['accuracy']:.1%}" for e in x["longer_accuracy"]) + " |"
                      for x in r["rows"]]
            lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=SIZES, default="quick")
    p.add_argument("--out", default=None, help="output folder (default results/<size>)")
    p.add_argument("--only", default=None, help="comma-separated experiments (default: all)")
    p.add_argument("--figures-only", action="store_true",
                   help="redraw figures and summary.md from the JSON files")
    a = p.parse_args(argv)
    out, size = a.out or os.path.join("results", a.size), SIZES[a.size]
    names = size["experiments"]
    only = [] if a.figures_only else [c.strip() for c in a.only.split(",")] if a.only else names
    unknown = [c for c in only if c not in names]
    if unknown:
        p.error(f"--only: {unknown} not among the {a.size} size's experiments {names}")
    if a.figures_only and not any(os.path.exists(os.path.join(out, f"{c}.json")) for c in names):
        p.error(f"--figures-only: no experiment JSON files in {out!r} to draw from")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    res, models = {}, {}
    committed = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results", "full",
                             "lr.json")
    if "lr" not in names and os.path.exists(committed):     # quick: the full run's chosen rates
        with open(committed) as f:
            res["lr"] = json.load(f)
        print(f"learning rates chosen by the full run (results/full/lr.json): "
              f"{res['lr']['chosen']}", flush=True)

    def need(c):
        """An earlier experiment's result: from this run, else from its JSON file."""
        path = os.path.join(out, f"{c}.json")
        if c not in res and os.path.exists(path):
            with open(path) as f:
                res[c] = json.load(f)
        return res.get(c)

    for c in names:
        if c not in only:
            continue
        t0, cpu0 = time.perf_counter(), time.process_time()
        print(f"=== {c} ({a.size}) ===", flush=True)
        if c in ("parity", "ablations", "log_linear", "recall"):
            need("lr")
        if c in ("parity", "ablations"):
            need("recall")
        if c in ("plateau", "plateau_lr"):
            for other in names:
                need(other)
        if c in ("niah", "extrapolation") and not models:     # retrain what they evaluate
            need("lr")
            for s in size["seeds"]:
                for n in RECALL:
                    mqar_run(n, s, size, lr=chosen_lr(res, n), models=models, verbose=False)
        res[c] = {"lr": lambda: exp_lr(size), "recall": lambda: exp_recall(size, res, models),
                  "parity": lambda: exp_parity(size, res),
                  "log_linear": lambda: exp_log_linear(size, res),
                  "ablations": lambda: exp_ablations(size, res),
                  "niah": lambda: exp_niah(size, models),
                  "extrapolation": lambda: exp_extrapolation(size, models),
                  "deep": lambda: exp_deep(size), "lm": lambda: exp_lm(size),
                  "cost": lambda: exp_cost(size),
                  "plateau": lambda: exp_plateau(size, res),
                  "plateau_lr": lambda: exp_plateau(size, res, lr_factor=0.5)}[c]()
        res[c].update(experiment=c, size=a.size, seconds=time.perf_counter() - t0,
                      cpu_seconds=time.process_time() - cpu0,
                      load_average=os.getloadavg() if hasattr(os, "getloadavg") else None)
        with open(os.path.join(out, f"{c}.json"), "w") as f:
            json.dump(res[c], f, indent=1)
    for c in names:
        need(c)
    figures(res, out)
    table = summary(res)
    total = sum(res[c]["seconds"] for c in names if c in res)
    command = "python scripts/experiments.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if only:
        meta = dict(command=command, size=a.size, experiments=names, wall_seconds=total,
                    seconds={c: res[c]["seconds"] for c in names if c in res},
                    cpu_seconds={c: res[c].get("cpu_seconds") for c in names if c in res},
                    machine=platform.platform(), processor=platform.processor(),
                    cpus=os.cpu_count(), torch=torch.__version__, python=sys.version.split()[0],
                    threads=torch.get_num_threads(), git=_git("rev-parse", "HEAD"),
                    git_dirty=bool(_git("status", "--porcelain", "minimc", "scripts")),
                    load_average=os.getloadavg() if hasattr(os, "getloadavg") else None,
                    verdict_rule=VERDICT_RULE, min_gain=MIN_GAIN, sizes=size)
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(meta, f, indent=1)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(f"<!-- written by {command} (experiments took {total / 60:.1f} min in all) -->\n\n"
                + table)
    print(table + f"\nwall time of the experiments {total / 60:.1f} min; wrote {out}/", flush=True)
    return res


def _git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "..")).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    import matplotlib
    matplotlib.use("Agg")                  # files only, no window
    main()
