"""Benchmark the cached-readout kernel (minimc.kernel; the cached part of Eq. 9 / 17):

    o[b, t, h] = sum_i gates[b, t, h, i] S[b, h, i]^T q[b, t, h]

On a GPU: T = 4k, 16k, 64k, N = T / 256 segments, K = V = 64, dense GRM gates (causal softmax,
Eq. 9) and SSC top-2 gates (Eq. 16-17). Everything is timed side by side in one run:
  kernel     cached_readout_triton (skips every tile no token of the block reads)
  torch      the library's torch path: blocked cached_readout (GRM), sparse_readout (SSC)
  dense      cached_readout_reference: one einsum that materialises every read [B, T, H, N, V]
  budget     (SSC) the same kernel when every token block reads exactly k + 1 states
Achieved bandwidth counts the bytes the kernel needs: q and the output once, every gate, and each
state once per token block that reads it; it is compared with the device's peak (datasheet,
looked up from the device name or --peak-gbps) and with a device-to-device copy measured here.
Targets (H100): kernel >= 3x faster than torch at 16k; dense gates >= 50% of peak bandwidth;
SSC time <= 1.5x the time of reading k + 1 states per token.

On a CPU the kernel runs in Triton's interpreter: tiny sizes, correctness and tile counts only.

    python scripts/bench_kernel.py [--dtype float16] [--tf32] [--peak-gbps 3350] [--json out.json]
"""
import argparse
import json
import time

import torch

import minimc
from minimc.kernel import cached_readout_triton, tiles_read   # without a GPU: the interpreter
from minimc.readout import cached_readout, cached_readout_reference, sparse_readout

# Datasheet GB/s; first match wins.
PEAK_GBPS = [("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350),
             ("GH200", 4000), ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555),
             ("L40S", 864), ("RTX 4090", 1008), ("A10G", 600)]


def make_gates(B, T, H, N, seg_len, variant, top_k, device, dtype, gen):
    """GRM or SSC gates over the N cached segments from random scores: [B, T, H, N]."""
    scores = torch.randn(B, T, H, N, generator=gen, device=device)
    online = torch.randn(B, T, H, generator=gen, device=device)
    seg = torch.arange(T, device=device) // seg_len
    valid = seg[:, None, None] > torch.arange(N, device=device)             # [T, 1, N]: causal
    gates, _ = minimc.gate(scores, online, valid, variant, top_k)           # [B, T, H, N + 1]
    return gates[..., :N].to(dtype).contiguous()


def budget_gates(B, T, H, N, seg_len, reads, device, dtype):
    """Every token reads the `reads` most recent completed segments: each token block reads
    `reads` states."""
    seg = torch.arange(T, device=device)[:, None] // seg_len                # [T, 1]
    i = torch.arange(N, device=device)
    g = ((i < seg) & (i >= seg - reads)).to(dtype) / reads                   # [T, N]
    return g[None, :, None].expand(B, T, H, N).contiguous()


def timer(device):
    if device == "cuda":
        from triton.testing import do_bench
        return lambda fn: do_bench(fn, warmup=10, rep=50, return_mode="median")
    def once(fn):                                           # interpreter: one call is enough
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return once


def peak_gbps(args):
    if args.peak_gbps:
        return args.peak_gbps, "--peak-gbps"
    name = torch.cuda.get_device_name()
    for key, gbps in PEAK_GBPS:
        if key in name:
            return gbps, f"datasheet for {name}"
    return None, f"unknown device {name!r}: pass --peak-gbps"


def copy_gbps(bench):
    x = torch.empty(2 ** 28, dtype=torch.float32, device="cuda")            # 1 GiB
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / bench(lambda: y.copy_(x)) / 1e6              # read + write, GB/s


def needed_bytes(q, S, g, BT):
    """Bytes the kernel must move: q and o once (per V block), every gate, each state once per
    reading block."""
    B, T, H, K = q.shape
    V, e = S.shape[-1], q.element_size()
    v_blocks = -(-V // min(64, max(16, 1 << (V - 1).bit_length())))
    tiles = int(tiles_read(g, BT).sum())
    return (B * T * H * K * v_blocks + g.numel() + tiles * K * V + B * T * H * V) * e, tiles


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, nargs="+", help="sequence lengths (GPU: 4096 16384 65536)")
    p.add_argument("--segment-len", type=int, help="tokens per segment (GPU: 256)")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--K", type=int, default=64)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--BT", type=int, nargs="+", default=[64], help="token block sizes to time")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 in float32 products (kernel and torch alike)")
    p.add_argument("--peak-gbps", type=float, help="peak memory bandwidth of the device, GB/s")
    p.add_argument("--dense-max-gb", type=float, default=20.0,
                   help="skip the dense einsum above this size")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args()

    gpu = torch.cuda.is_available()
    device, dtype = ("cuda" if gpu else "cpu"), getattr(torch, args.dtype)
    Ts = args.T or ([4096, 16384, 65536] if gpu else [256, 512])
    C = args.segment_len or (256 if gpu else 64)
    B, H, K, k = args.B, (args.H if gpu else 1), args.K, args.top_k
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    bench = timer(device)
    if gpu:
        peak, source = peak_gbps(args)
        copy = copy_gbps(bench)
        print(f"device: {torch.cuda.get_device_name()}; peak {peak or '?'} GB/s ({source}); "
              f"device-to-device copy measured here: {copy:.0f} GB/s")
    else:
        peak = copy = None
        print("No GPU: the kernel runs in Triton's interpreter at tiny sizes. "
              "Times below measure Python, not the\n"
              "kernel; GPU figures (times, bandwidth, the targets) need a GPU. "
              "Tile counts and errors are real.")
    print(f"B={B} H={H} K=V={K} segment_len={C} dtype={args.dtype} tf32={args.tf32} top_k={k}\n")

    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for T in Ts:
        N = T // C
        q = torch.randn(B, T, H, K, generator=gen, device=device).to(dtype)
        S = (torch.randn(B, H, N, K, K, generator=gen, device=device) / K).to(dtype)
        # segment s reads states [:s]
        blocks = [(s * C, min((s + 1) * C, T), s) for s in range(-(-T // C))]
        dense_gb = B * T * H * N * K * q.element_size() * 2 / 1e9
        for variant in ("grm", "ssc"):
            g = make_gates(B, T, H, N, C, variant, k, device, dtype, gen)
            times = {}
            if variant == "grm":
                times["torch"] = bench(lambda: cached_readout(q, S, g, blocks))
            else:
                w, sel = g.topk(min(k, N), -1)                              # [B, T, H, k]
                sel = sel.masked_fill(w == 0, -1)
                times["torch"] = bench(lambda: sparse_readout(q, S, w, sel))
            times["dense"] = (bench(lambda: cached_readout_reference(q, S, g))
                              if dense_gb <= args.dense_max_gb else float("nan"))
            want = cached_readout(q.float(), S.float(), g.float(), blocks)
            for BT in args.BT:
                t = bench(lambda: cached_readout_triton(q, S, g, BT=BT))
                err = (cached_readout_triton(q, S, g, BT=BT).float() - want).abs().max().item()
                nbytes, tiles = needed_bytes(q, S, g, BT)
                row = dict(T=T, N=N, gates=variant, BT=BT, kernel_ms=t, torch_ms=times["torch"],
                           dense_ms=times["dense"], speedup_vs_torch=times["torch"] / t,
                           speedup_vs_dense=times["dense"] / t, max_err=err,
                           tiles_read=tiles / (B * H * -(-T // BT) * N),
                           states_per_block=tiles / (B * H * -(-T // BT)),
                           gbps=nbytes / t / 1e6)
                if variant == "ssc":
                    gb = budget_gates(B, T, H, N, C, k + 1, device, dtype)
                    row["budget_ms"] = bench(lambda: cached_readout_triton(q, S, gb, BT=BT))
                    row["ssc_vs_budget"] = t / row["budget_ms"]
                    floor = (B * T * H * (k + 1) * K * K * q.element_size() / (peak * 1e6)
                             if peak else float("nan"))
                    row["ssc_vs_k1_per_token_floor"] = t / floor
                rows.append(row)
                report(row, gpu, peak, copy, k)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name() if gpu else "cpu (interpreter)",
                           args=vars(args), rows=rows), f, indent=1)


def report(r, gpu, peak, copy, k):
    line = (f"T={r['T']:6d} N={r['N']:4d} {r['gates']:3s} BT={r['BT']:3d} | "
            f"kernel {r['kernel_ms']:9.3f} ms | "
            f"torch {r['torch_ms']:9.3f} ms ({r['speedup_vs_torch']:5.1f}x) | "
            f"dense {r['dense_ms']:9.3f} ms "
            f"({r['speedup_vs_dense']:5.1f}x) | tiles read {100 * r['tiles_read']:5.1f}% "
            f"({r['states_per_block']:.1f} states/block) | max err {r['max_err']:.1e}")
    if gpu:
        line += f" | {r['gbps']:6.0f} GB/s"
        if peak:
            line += f" = {100 * r['gbps'] / peak:4.1f}% of peak"
        line += f", {100 * r['gbps'] / copy:4.1f}% of copy"
    print(line)
    if "budget_ms" in r:
        extra = (f"    SSC vs the same kernel reading k + 1 = {k + 1} states per block: "
                 f"{r['budget_ms']:.3f} ms -> {r['ssc_vs_budget']:.2f}x"
                 + (" (target <= 1.5x)" if gpu else ""))
        if gpu and peak:
            extra += ("; vs reading k + 1 states per token at peak bandwidth: "
                      f"{r['ssc_vs_k1_per_token_floor']:.2f}x")
        print(extra)
    if gpu and r["T"] == 16384 and r["gates"] == "grm":
        fast = r["speedup_vs_torch"] >= 3
        print(f"    target at 16k: >= 3x faster than torch: {'met' if fast else 'NOT met'}; "
              f">= 50% of peak: {'met' if peak and r['gbps'] >= 0.5 * peak else 'NOT met'}")


if __name__ == "__main__":
    main()
