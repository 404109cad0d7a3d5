"""The Triton cached-readout kernel (minimc.kernel), cached part of Eq. 9 / 17:

    o[b, t, h] = sum_i gates[b, t, h, i] S[b, h, i]^T q[b, t, h]

Argument checks before any launch, kernel == reference (awkward sizes, dense / sparse / zero gates,
fp16), block skipping, the autograd wrapper, and memory_caching(backend="triton") == "torch".
Without a GPU this runs in Triton's interpreter (minimc.kernel sets TRITON_INTERPRET=1 when
imported); its cost grows with programs x loop steps, so the grids here are tiny.
"""
import pytest
import torch

import minimc
from minimc import kernel
from minimc.kernel import cached_readout_triton, tiles_read
from minimc.readout import cached_readout, cached_readout_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAN = float("nan")


def make(B=1, T=37, H=1, K=16, V=16, N=3, gates="dense", dtype=torch.float32, seed=0):
    """q [B, T, H, K], S [B, H, N, K, V], gates [B, T, H, N]. Token t lies in segment N t // T
    and may read segments before it (causal). 'sparse': SSC-like, top-2 of those."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g)
    S = torch.randn(B, H, N, K, V, generator=g) / K ** 0.5
    w = torch.rand(B, T, H, N, generator=g) + 0.1
    seg = torch.arange(T) * (N + 1) // T                                    # [T]: N + 1 segments
    w = w * (torch.arange(N) < seg[:, None])[None, :, None]                 # causal: [T, 1, N] mask
    if gates == "sparse":
        top = w.topk(min(2, N), dim=-1).indices                            # [B, T, H, 2]
        w = w * torch.zeros_like(w, dtype=torch.bool).scatter(-1, top, True)
    elif gates == "zero":
        w = torch.zeros_like(w)
    return tuple(x.to(DEVICE, dtype) for x in (q, S, w))


def nan_out(q, S):
    """An output buffer full of NaN: any tile the kernel does not write stays NaN and fails."""
    B, T, H, _ = q.shape
    return torch.full((B, T, H, S.shape[-1]), NAN, dtype=q.dtype, device=q.device)


def reference(q, S, gates):
    """The definition, in float64 from the (possibly fp16-rounded) inputs."""
    return cached_readout_reference(q.double(), S.double(), gates.double())


def assert_close(got, want, tol, what="output"):
    assert torch.isfinite(got).all(), f"{what}: NaN/Inf left in it (an unwritten tile?)"
    err = (got.double() - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), (
        f"{what}: max abs error {err:.3g} > {tol:g}")


# ---- kernel == reference -------------------------------------------------------------------------

SIZES = [  # (B, T, H, K, V, N): T = 1, 63, 130; K, V = 16, 60, 64; N = 1, 5
    (1, 1, 1, 16, 16, 1), (2, 63, 2, 60, 64, 5), (1, 130, 2, 64, 60, 5), (2, 130, 1, 16, 60, 1),
    (1, 63, 1, 64, 16, 1), (1, 1, 2, 60, 60, 5), (1, 130, 1, 60, 60, 5),
]


@pytest.mark.parametrize("gates", ["dense", "sparse"])
@pytest.mark.parametrize("B,T,H,K,V,N", SIZES)
def test_kernel_matches_reference(B, T, H, K, V, N, gates):
    q, S, g = make(B, T, H, K, V, N, gates)
    o = cached_readout_triton(q, S, g, out=nan_out(q, S))
    assert o.shape == (B, T, H, V) and o.dtype == q.dtype
    assert_close(o, reference(q, S, g), 1e-5)


@pytest.mark.parametrize("B,T,H,K,V,N", [SIZES[1], SIZES[2]])
def test_kernel_fp16_inputs(B, T, H, K, V, N):
    q, S, g = make(B, T, H, K, V, N, dtype=torch.float16)
    o = cached_readout_triton(q, S, g, out=nan_out(q, S))
    assert o.dtype == torch.float16
    assert_close(o, reference(q, S, g), 2e-3)                    # ~ one fp16 rounding of the output


def test_kernel_fp16_accumulates_in_fp32():
    """0.125 + 2048 - 2048: an fp16 accumulator rounds 2048.125 to 2048 and returns 0; fp32
    keeps 0.125."""
    q = torch.zeros(1, 16, 1, 16, dtype=torch.float16, device=DEVICE)
    q[..., 0] = 1
    S = torch.zeros(1, 1, 3, 16, 16, dtype=torch.float16, device=DEVICE)
    S[0, 0, :, 0] = torch.tensor([0.125, 2048.0, -2048.0])[:, None]        # row 0 of states 0, 1, 2
    g = torch.ones(1, 16, 1, 3, dtype=torch.float16, device=DEVICE)
    o = cached_readout_triton(q, S, g, BT=16, out=nan_out(q, S))
    assert torch.equal(o, torch.full_like(o, 0.125))


def test_zero_gates_give_zeros_and_write_every_tile():
    q, S, g = make(1, 130, 2, 60, 60, 5, "zero")
    o = cached_readout_triton(q, S, g, out=nan_out(q, S))
    assert torch.equal(o, torch.zeros_like(o))


def test_block_size_does_not_change_the_result():
    q, S, g = make(1, 70, 1, 16, 16, 4, "sparse")
    assert_close(cached_readout_triton(q, S, g, BT=16, out=nan_out(q, S)), reference(q, S, g), 1e-5)


# ---- block skipping ------------------------------------------------------------------------------

def test_kernel_reads_exactly_the_tiles_in_tiles_read():
    """Poison one state with NaN: a token block's output is NaN iff the kernel loaded that state
    for the block (a loaded state times a zero gate would still give NaN)."""
    BT, N = 16, 4
    q, S, g = make(1, 64, 1, 16, 16, N, "sparse", seed=3)
    read = tiles_read(g, BT)[0, 0]                                          # [T / BT, N]
    assert read.any() and not read.all()                             # the test can tell skips apart
    for i in range(N):
        Sp = S.clone()
        Sp[:, :, i] = NAN
        o = cached_readout_triton(q, Sp, g, BT=BT)                           # [1, 64, 1, V]
        poisoned = o[0, :, 0].isnan().any(-1).reshape(-1, BT).any(-1)      # [T / BT]
        assert torch.equal(poisoned, read[:, i]), (
            f"state {i}: read {poisoned.tolist()}, expected {read[:, i].tolist()}")


def test_tiles_read_definition():
    _, _, g = make(2, 37, 3, 16, 16, 5, "sparse")
    got = tiles_read(g, 16)                                                 # [B, H, 3, N]
    for b in range(2):
        for h in range(3):
            for j, a in enumerate(range(0, 37, 16)):
                assert torch.equal(got[b, h, j], (g[b, a:a + 16, h] != 0).any(0))


# ---- errors before any launch --------------------------------------------------------------------

class NoLaunch:
    """Stands in for the kernel: any launch fails the test."""
    def __getitem__(self, grid):
        raise AssertionError("the kernel was launched with invalid arguments")


def _bad_cases():
    q, S, g = make(1, 8, 2, 16, 16, 3)
    return {
        "q not a tensor": ((q.tolist(), S, g), TypeError, "q must be a torch.Tensor"),
        "q rank 3": ((q[0], S, g), ValueError, "q must have shape"),
        "S wrong K": ((q, S[..., :15, :], g), ValueError, "S must have shape"),
        "S wrong H": ((q, S[:, :1], g), ValueError, "H = 1, expected 2"),
        "gates wrong N": ((q, S, g[..., :2]), ValueError, "N = 2, expected 3"),
        "gates wrong T": ((q, S, g[:, :7]), ValueError, "T = 7, expected 8"),
        "q non-contiguous": ((q.transpose(1, 2).contiguous().transpose(1, 2), S, g), ValueError,
                             "q must be contiguous"),
        "gates non-contiguous": ((q, S, torch.cat([g, g], -1)[..., :3]), ValueError,
                                 "gates must be contiguous"),
        "S on another device": ((q, S.to("meta"), g), ValueError, "S must be on q's device"),
        "bfloat16": ((q.bfloat16(), S.bfloat16(), g.bfloat16()), TypeError, "float32 or float16"),
        "float64": ((q.double(), S.double(), g.double()), TypeError, "float32 or float16"),
        "mixed dtypes": ((q, S, g.half()), TypeError, "got gates torch.float16, q torch.float32"),
        "integer q": ((q.long(), S, g), TypeError, "floating-point"),
        "K > 256": ((torch.zeros(1, 8, 2, 300), torch.zeros(1, 2, 3, 300, 16), g), ValueError,
                    "K must be <= 256"),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_get_clear_errors_before_launch(case, monkeypatch):
    monkeypatch.setattr(kernel, "cached_readout_kernel", NoLaunch())
    args, err, msg = BAD[case]
    with pytest.raises(err, match=msg):
        cached_readout_triton(*args)


@pytest.mark.parametrize("kw, msg", [
    (dict(BT=48), "BT must be a power of two"),
    (dict(BT=8), "BT must be"),
    (dict(out=torch.empty(1, 8, 2, 15)), "out must have shape"),
    (dict(out=torch.empty(1, 8, 2, 16, dtype=torch.float16)), "got out torch.float16"),
])
def test_bad_options_get_clear_errors_before_launch(kw, msg, monkeypatch):
    monkeypatch.setattr(kernel, "cached_readout_kernel", NoLaunch())
    q, S, g = make(1, 8, 2, 16, 16, 3)
    with pytest.raises((ValueError, TypeError), match=msg):
        cached_readout_triton(q, S, g, **kw)


def test_no_gpu_and_no_interpreter_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(kernel, "cached_readout_kernel", NoLaunch())
    monkeypatch.setattr(kernel, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    q, S, g = make(1, 8, 1, 16, 16, 2)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        cached_readout_triton(q, S, g)


def test_compiled_triton_needs_cuda_tensors(monkeypatch):
    monkeypatch.setattr(kernel, "cached_readout_kernel", NoLaunch())
    monkeypatch.setattr(kernel, "INTERPRET", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    q, S, g = (x.cpu() for x in make(1, 8, 1, 16, 16, 2))
    with pytest.raises(ValueError, match="must be on cuda for compiled Triton, got cpu"):
        cached_readout_triton(q, S, g)


# ---- autograd wrapper ----------------------------------------------------------------------------

@pytest.mark.parametrize("blocks", [None, "segments"])
def test_gradients_match_reference(blocks):
    B, T, H, N = 1, 37, 2, 3
    q, S, g = make(B, T, H, 16, 20, N, "sparse")
    seg = torch.arange(T) * (N + 1) // T                                  # the segments make() used
    blk = None if blocks is None else [(int((seg < s).sum()), int((seg <= s).sum()), s)
                                       for s in range(N + 1)]
    do = torch.randn(B, T, H, 20, dtype=q.dtype, device=q.device)
    leaves = [x.clone().requires_grad_() for x in (q, S, g)]
    (cached_readout(*leaves, blocks=blk, backend="triton") * do).sum().backward()
    refs = [x.double().requires_grad_() for x in (q, S, g)]
    (cached_readout_reference(*refs) * do.double()).sum().backward()
    if blk is not None:      # blocks declare gates beyond them structurally zero: no gradient there
        r = refs[2].grad
        causal = torch.arange(N, device=r.device) < seg.to(r.device)[:, None]     # [T, N]
        refs[2].grad = r * causal[None, :, None]
    for name, a, r in zip("q S gates".split(), leaves, refs):
        assert_close(a.grad, r.grad, 1e-5, f"d{name}")


# ---- memory_caching(backend="triton") ------------------------------------------------------------

@pytest.mark.parametrize("variant", ["grm", "residual", "ssc"])
def test_memory_caching_triton_equals_torch(variant, monkeypatch):
    launches = []

    def counted(*a, **kw):
        launches.append(1)
        return cached_readout_triton(*a, **kw)

    monkeypatch.setattr(kernel, "cached_readout_triton", counted)
    g = torch.Generator().manual_seed(1)
    q, k, u = (torch.randn(1, 40, 2, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    v = torch.randn(1, 40, 2, 20, generator=g).to(DEVICE).requires_grad_()
    kw = dict(memory="linear", variant=variant, segment_len=8, top_k=2)     # N = 5 segments
    outs, grads = [], []
    for backend in ("torch", "triton"):
        o = minimc.memory_caching(q, k, v, u, backend=backend, **kw)
        (o * torch.linspace(-1, 1, o.numel(), device=DEVICE).reshape(o.shape)).sum().backward()
        outs.append(o.detach())
        grads.append([torch.zeros_like(x) if x.grad is None else x.grad.clone()
                      for x in (q, k, v, u)])
        for x in (q, k, v, u):
            x.grad = None
    assert launches == [1]                                # the triton run used the kernel (SSC too)
    assert_close(outs[1], outs[0].double(), 1e-5)
    for name, a, b in zip("q k v u".split(), *grads):
        assert_close(a, b.double(), 1e-5, f"d{name}")


def test_memory_caching_triton_rejects_float64_clearly():
    q = torch.randn(1, 16, 1, 16, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="float32 or float16"):
        minimc.memory_caching(q, q, q, memory="linear", segment_len=4, backend="triton")


# ---- test configuration --------------------------------------------------------------------------

def test_interpreter_is_set_only_without_a_gpu():
    """minimc.kernel owns the rule: without a GPU it set TRITON_INTERPRET=1 before decorating."""
    import os
    if not torch.cuda.is_available():
        assert os.environ.get("TRITON_INTERPRET") == "1" and kernel.INTERPRET


def test_only_the_kernel_module_imports_triton():
    import subprocess
    import sys
    code = ("import sys, minimc, minimc.layers, minimc.data, minimc.train, minimc.viz; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'triton'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
