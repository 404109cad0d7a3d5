"""Input validation: bad input gets an error naming the argument, what it got and what was expected."""
import torch


def check_tensor(name, x, shape, names):
    """x must be a floating tensor of rank len(names); shape entries that are None are free."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    want = "[" + ", ".join(names) + "]"
    if x.dim() != len(names):
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)} (rank {x.dim()})")
    for n, got, exp in zip(names, x.shape, shape):
        if exp is not None and got != exp:
            raise ValueError(f"{name} must have shape {want} = {tuple(s if s is not None else '?' for s in shape)}, "
                             f"got {tuple(x.shape)} ({n} = {got}, expected {exp})")


def check_finite(**tensors):
    """A NaN or Inf makes the sum non-finite: one cheap reduction, the exact test only then."""
    for name, x in tensors.items():
        if isinstance(x, torch.Tensor) and not torch.isfinite(x.detach().sum()) and not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).nonzero()[0].tolist()
            raise ValueError(f"{name} contains NaN or Inf (first at index {bad}); "
                             "pass check_nan=False to skip this check")


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_positive_int(name, value):
    if isinstance(value, bool) or not hasattr(value, "__index__") or value < 1:   # int, numpy int
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_memory_args(q, k, v, memory, options, check_nan=True):
    """q, k: [B, T, H, K], v: [B, T, H, V], per-token options [B, T, H], deep weights [H, E, K]/[H, K, E]."""
    from .memories import MEMORIES
    check_choice("memory", memory, sorted(MEMORIES))
    check_tensor("q", q, (None,) * 4, ("B", "T", "H", "K"))
    B, T, H, K = q.shape
    if T < 1:
        raise ValueError(f"q must hold at least one token, got T = {T}")
    check_tensor("k", k, q.shape, ("B", "T", "H", "K"))
    check_tensor("v", v, (B, T, H, None), ("B", "T", "H", "V"))
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype or x.device != q.device:
            raise TypeError(f"{name} must match q's dtype and device ({q.dtype}, {q.device}), got ({x.dtype}, {x.device})")
    cls = MEMORIES[memory]
    for name in getattr(cls, "func", cls).token_args:
        if options.get(name) is not None:
            check_tensor(name, options[name], (B, T, H), ("B", "T", "H"))
    if memory in ("dla", "titans"):
        if v.shape[-1] != K:
            raise ValueError(f"memory={memory!r} maps keys to values through x + W1 gelu(W2 x): it needs "
                             f"K == V, got K = {K}, V = {v.shape[-1]}")
        w = options.get("weights")
        if not (isinstance(w, (tuple, list)) and len(w) == 2):
            raise ValueError(f"memory={memory!r} needs weights=(W1 [H, E, K], W2 [H, K, E]) "
                             "(see minimc.init_deep_weights), got " + (type(w).__name__ if w is not None else "none"))
        check_tensor("weights[0] (W1)", w[0], (H, None, K), ("H", "E", "K"))
        check_tensor("weights[1] (W2)", w[1], (H, K, w[0].shape[1]), ("H", "K", "E"))
    if check_nan:
        check_finite(q=q, k=k, v=v, **{n: x for n, x in options.items() if isinstance(x, torch.Tensor)})


def check_caching_args(q, k, v, u, memory, variant, segment_len, segmentation, mode, top_k, pool,
                       options, check_nan=True):
    from .caching import VARIANTS
    check_choice("variant", variant, VARIANTS)
    check_choice("segmentation", segmentation, ("constant", "log"))
    check_choice("mode", mode, ("checkpoint", "independent"))
    check_choice("pool", pool, ("mean", "sum"))
    check_positive_int("segment_len", segment_len)
    check_positive_int("top_k", top_k)
    check_memory_args(q, k, v, memory, options, check_nan)
    check_tensor("u", u, q.shape, ("B", "T", "H", "K"))
    if check_nan:
        check_finite(u=u)
