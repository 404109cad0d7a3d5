"""Core benchmark: speed and memory ratios measured side by side in one run (CPU).

    python scripts/bench.py            # full sizes (a few minutes)
    python scripts/bench.py --quick    # small sizes, for a smoke test

Targets (issue "minimc core"): chunked linear attention >= 20x faster than the token loop at
T = 2048; GRM caching (linear memory, C = 256) fwd+bwd >= 2x faster than causal softmax attention
(SDPA) at T >= 8k; SSC (top-2) forward <= 1.5x the plain memory's; caching forward peak memory
<= 2x the plain memory's at T = 8k. The machine is shared and noisy: every ratio compares runs
interleaved in the same process, each time is the median CPU time of several repeats on one thread.
"""
import argparse
import math
import statistics
import time
import weakref

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import minimc


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensor storage allocated by the ops run inside the context (deterministic,
    unlike RSS). A storage counts from the op that creates it until its tensor is freed."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.live:
                key, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
                self.live[key] = size
                self.now += size
                self.peak = max(self.peak, self.now)
                weakref.finalize(t, self._free, key)
        return out

    def _free(self, key):
        self.now -= self.live.pop(key, 0)


def peak_bytes(fn):
    with torch.no_grad(), PeakMemory() as m:
        fn()
    return m.peak


def timeit(fns, repeat=5):
    """Median CPU time of each function (one thread: CPU time is what the work costs, and unlike
    wall time it does not grow when other processes share the cores); the functions are
    interleaved so cache and memory-bandwidth contention hits them alike."""
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def qkv(T, B=1, H=4, K=64, V=64, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, T, H, d, generator=g) * 0.5 for d in (K, K, V, K)]   # q, k, v, u
    xs[1] = F.elu(xs[1]) + 1                                  # positive keys, as in the layers
    return [x.requires_grad_(grad) for x in xs]


def fwd_bwd(fn, *xs):
    def run():
        for x in xs:
            x.grad = None
        fn(*xs).sum().backward()
    return run


def main(quick=False):
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    rows = []

    T = 512 if quick else 2048
    for H, D in ((4, 64), (2, 16)):                   # bench heads; the course's model heads
        q, k, v, u = qkv(T, H=H, K=D, V=D)
        t = timeit({"loop": lambda: minimc.recurrent_memory(q, k, v, reference=True,
                                                            check_nan=False),
                    "chunked": lambda: minimc.recurrent_memory(q, k, v, check_nan=False)},
                   repeat=3)
        rows.append((f"chunked vs token-loop linear attention, T={T}, H={H}, K=V={D}",
                     t["loop"] / t["chunked"], ">= 20x faster"))
        print(f"[1] T={T}, H={H}, K=V={D}: token loop {t['loop'] * 1e3:.1f} ms, "
              f"chunked {t['chunked'] * 1e3:.1f} ms -> {t['loop'] / t['chunked']:.1f}x")

    Ts = [256, 512, 1024, 2048] if quick else [1024, 4096, 8192, 16384]
    C = 64 if quick else 256
    res = []

    def grm(q, k, v, u):
        return minimc.memory_caching(q, k, v, u, segment_len=C, check_nan=False)

    def att(q, k, v):
        return F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)),
                                              is_causal=True)

    for T in Ts:
        q, k, v, u = qkv(T, grad=True)
        t = timeit({"grm": fwd_bwd(grm, q, k, v, u), "attention": fwd_bwd(att, q, k, v)}, repeat=3)
        res.append((T, t["grm"], t["attention"]))
        print(f"[2] T={T:6d}: GRM (C={C}) fwd+bwd {t['grm'] * 1e3:8.1f} ms, "
              f"attention {t['attention'] * 1e3:8.1f} ms "
              f"-> GRM {t['attention'] / t['grm']:.2f}x faster")

    def slope(xs, ys):
        return statistics.linear_regression([math.log(x) for x in xs],
                                            [math.log(y) for y in ys]).slope

    e_grm, e_att = slope(Ts, [r[1] for r in res]), slope(Ts, [r[2] for r in res])
    print(f"    growth exponents (time ~ T^e): GRM {e_grm:.2f}, attention {e_att:.2f}")
    for T, tg, ta in res[2:]:
        rows.append((f"GRM (C={C}) fwd+bwd vs attention, T={T}", ta / tg, ">= 2x faster"))

    T = 2048 if quick else 8192
    q, k, v, u = qkv(T)
    with torch.no_grad():
        t = timeit({"plain": lambda: minimc.recurrent_memory(q, k, v, check_nan=False),
                    "ssc": lambda: minimc.memory_caching(q, k, v, u, variant="ssc", top_k=2,
                                                         segment_len=C, check_nan=False),
                    "grm": lambda: minimc.memory_caching(q, k, v, u, variant="grm",
                                                         segment_len=C, check_nan=False)})
    print(f"[3] T={T}: forward plain {t['plain'] * 1e3:.1f} ms, "
          f"SSC top-2 {t['ssc'] * 1e3:.1f} ms ({t['ssc'] / t['plain']:.2f}x), "
          f"GRM {t['grm'] * 1e3:.1f} ms ({t['grm'] / t['plain']:.2f}x)")
    rows.append((f"SSC top-2 forward / plain memory forward, T={T}", t["ssc"] / t["plain"],
                 "<= 1.5x"))

    mem = {"plain": peak_bytes(lambda: minimc.recurrent_memory(q, k, v, check_nan=False)),
           "grm": peak_bytes(lambda: minimc.memory_caching(q, k, v, u, segment_len=C,
                                                           check_nan=False)),
           "ssc": peak_bytes(lambda: minimc.memory_caching(q, k, v, u, variant="ssc",
                                                           segment_len=C, check_nan=False))}
    print(f"[4] T={T}: forward peak memory plain {mem['plain'] / 2**20:.1f} MiB, "
          f"GRM {mem['grm'] / 2**20:.1f} MiB ({mem['grm'] / mem['plain']:.2f}x), "
          f"SSC {mem['ssc'] / 2**20:.1f} MiB ({mem['ssc'] / mem['plain']:.2f}x)")
    rows.append((f"GRM forward peak memory / plain, T={T}", mem["grm"] / mem["plain"], "<= 2x"))

    # [5] issue 12: a deep-memory training step vs a linear one at the course's sizes (TinyLM
    # presets: d 32, 2 heads of 16, MQAR with 8 pairs at T = 64, batch 32), interleaved.
    from minimc.layers import tiny_lm
    from minimc.train import batch
    x, y = batch(0, 8 if quick else 32, 64, [8], 256, seed=0)
    models = {}
    for name in ("linear", "delta", "dla", "titans", "titans-grm", "titans-soup"):
        torch.manual_seed(0)
        models[name] = tiny_lm(name)

    def step(model):
        def run():
            model(x, y)[0].backward()
            model.zero_grad(set_to_none=True)
        return run
    t = timeit({name: step(m) for name, m in models.items()}, repeat=5 if quick else 15)
    print(f"[5] training step (fwd + bwd), B={x.shape[0]}, T=64: " + ", ".join(
        f"{n} {t[n] * 1e3:.1f} ms ({t[n] / t['linear']:.2f}x)" for n in models))
    for name in ("dla", "titans"):
        rows.append((f"{name} training step / linear training step, T=64", t[name] / t["linear"],
                     "<= 4x"))

    print("\n| measurement | ratio | target |\n|---|---|---|")
    for name, ratio, target in rows:
        print(f"| {name} | {ratio:.2f} | {target} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the machine is shared)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    main(a.quick)
