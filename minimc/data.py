"""Multi-query associative recall (MQAR), the Zoology task (Arora et al., 2023): a context of
key-value pairs, then the keys again as queries; the model must answer each query with its value.

    context: k1 v1 k2 v2 ... kN vN      queries: . . k2 . k1 . . . kN .      (after the context)
    labels:  -100 everywhere except at a query, where the label is that key's value

Keys come from the lower half of the vocabulary, values from the upper half (disjoint, so a
value is never mistaken for a key). Queries sit at even offsets after the context, with gaps
drawn from a power law (Zoology's a = 0.01: short gaps are frequent, long ones happen); every
other position after the context holds a random token. Accuracy = mean over answer positions.
"""
import torch

from .checks import check_choice, check_positive_int


def mqar(n, seq_len=128, num_kv_pairs=32, vocab_size=256, power_a=0.01, seed=0):
    """n sequences: (inputs [n, seq_len], labels [n, seq_len]) of int64, deterministic in ``seed``.

    The label of position t is the token the model should output *after reading* token t, so the
    value of a key sits at the key's query position (-100 = no loss there)."""
    _check(n, seq_len, num_kv_pairs, vocab_size, power_a, seed)
    g = torch.Generator().manual_seed(seed)
    half = vocab_size // 2
    # Distinct keys from 1..half-1 (0 is never a key) and distinct values from half..vocab-1.
    keys = 1 + torch.rand(n, half - 1, generator=g).argsort(-1)[:, :num_kv_pairs]       # [n, N]
    values = torch.rand(n, vocab_size - half, generator=g).argsort(-1)[:, :num_kv_pairs]
    values = half + values                                                              # [n, N]
    ctx = 2 * num_kv_pairs
    # Query slots 0..space-1 after the context, slot j at position ctx + 2j; pick N of them
    # without replacement with P(j) ~ a (j+1)^(a-1): Gumbel-top-k is exactly sequential
    # sampling without replacement.
    space = (seq_len - ctx) // 2
    logp = (power_a - 1) * torch.arange(1, space + 1, dtype=torch.float64).log()      # [space]
    gumbel = -torch.empty(n, space, dtype=torch.float64).exponential_(generator=g).log()
    slots = (logp + gumbel).topk(num_kv_pairs, dim=-1).indices                        # [n, N]
    inputs = torch.randint(vocab_size, (n, seq_len), generator=g)           # random filler
    inputs[:, 0:ctx:2], inputs[:, 1:ctx:2] = keys, values
    labels = torch.full((n, seq_len), -100, dtype=torch.long)
    pos = ctx + 2 * slots
    inputs.scatter_(1, pos, keys)
    labels.scatter_(1, pos, values)
    return inputs, labels


def _check(n, seq_len, num_kv_pairs, vocab_size, power_a, seed):
    check_positive_int(n=n, seq_len=seq_len, num_kv_pairs=num_kv_pairs, vocab_size=vocab_size)
    _check_seed(seed)
    if vocab_size < 4:
        raise ValueError(f"vocab_size must be >= 4 (keys and values split it in halves), "
                         f"got {vocab_size}")
    if num_kv_pairs > vocab_size // 2 - 1:
        raise ValueError(f"num_kv_pairs={num_kv_pairs} needs that many distinct keys, but "
                         f"vocab_size={vocab_size} has only {vocab_size // 2 - 1} "
                         "(keys use 1..vocab_size//2 - 1)")
    if 4 * num_kv_pairs > seq_len:
        raise ValueError(f"too many pairs for the length: num_kv_pairs={num_kv_pairs} needs "
                         f"seq_len >= 4 * num_kv_pairs = {4 * num_kv_pairs} (context 2N + query "
                         f"slots 2N), got {seq_len}")
    if not isinstance(power_a, (int, float)) or not 0 < power_a <= 1:
        raise ValueError(f"power_a must be in (0, 1], got {power_a!r}")


def accuracy(logits, labels):
    """Fraction of answer positions predicted right. logits: [n_labelled, vocab] (TinyLM's output
    with targets) or [B, T, vocab]; labels: [B, T] with -100 where there is no answer."""
    if logits.dim() == 3:
        logits = logits[labels != -100]
    return (logits.argmax(-1) == labels[labels != -100]).float().mean().item()


# ------------------------------------------------------------------ single-needle retrieval
def niah(n, seq_len=128, depth=None, vocab_size=256, seed=0):
    """Single-needle retrieval, in the style of RULER's S-NIAH (the paper's Table 2): one needle
    ``key value`` at a controlled depth in a haystack of distractor tokens, and the key again as
    the last token; the model must answer with the needle's value there.

        haystack ... key value ... haystack ... key      label: value at the last position only

    Keys come from 1..vocab_size//2 - 1 and values from the upper half, as in ``mqar``. The
    haystack is uniform over the whole vocabulary except the needle's key (so it holds random
    key-like and value-like tokens: distractors, but never a second copy of the key). ``depth``
    in [0, 1] puts the key at position round(depth * (seq_len - 3)) (0: first token, 1: just
    before the query); None draws a depth uniformly for every sequence (for training).
    Returns (inputs [n, seq_len], labels [n, seq_len]) of int64, deterministic in ``seed``;
    labels are -100 except at the last position."""
    check_positive_int(n=n, seq_len=seq_len, vocab_size=vocab_size)
    _check_seed(seed)
    if vocab_size < 4:
        raise ValueError(f"vocab_size must be >= 4 (keys and values split it in halves), "
                         f"got {vocab_size}")
    if seq_len < 3:
        raise ValueError(f"seq_len must be >= 3 (key, value, query), got {seq_len}")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, (int, float))
                              or not 0 <= depth <= 1):
        raise ValueError(f"depth must be a number in [0, 1] or None (random), got {depth!r}")
    g = torch.Generator().manual_seed(seed)
    half = vocab_size // 2
    keys = torch.randint(1, half, (n,), generator=g)                                # [n]
    values = torch.randint(half, vocab_size, (n,), generator=g)                     # [n]
    if depth is None:
        pos = (torch.rand(n, generator=g) * (seq_len - 2)).long()                  # [n]
    else:
        pos = torch.full((n,), round(depth * (seq_len - 3)), dtype=torch.long)      # [n]
    hay = torch.randint(vocab_size - 1, (n, seq_len), generator=g)                 # [n, T]
    inputs = hay + (hay >= keys[:, None]).long()            # skip the key: never in the hay
    rows = torch.arange(n)
    inputs[rows, pos], inputs[rows, pos + 1], inputs[:, -1] = keys, values, keys
    labels = torch.full((n, seq_len), -100, dtype=torch.long)
    labels[:, -1] = values
    return inputs, labels


# ------------------------------------------------------------------ bytes of Python source
# Held out by file: a file belongs to the validation split when the first byte of the SHA-1 of
# its path (relative to the stdlib folder, '/'-separated) is below valid_fraction * 256.
SKIP_DIRS = ("site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__")


def stdlib_files(root=None):
    """Relative paths ('/'-separated, sorted) of the ``*.py`` files of the Python standard
    library (``sysconfig.get_paths()["stdlib"]`` unless ``root`` is given), without installed
    packages and the standard library's own test suites (``SKIP_DIRS``)."""
    import os
    import sysconfig
    root = root or sysconfig.get_paths()["stdlib"]
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        rel = os.path.relpath(folder, root)
        out += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")
                for f in files if f.endswith(".py")]
    return sorted(out)


def stdlib_corpus(split="train", valid_fraction=0.1, root=None):
    """A byte-level corpus that ships with every Python: the standard library's own source.

    Returns a uint8 tensor [n_bytes]: the files of ``split`` ("train" or "valid") concatenated
    in sorted path order, each followed by a NUL byte (0, which Python source never contains) as
    a separator. The vocabulary is the 256 byte values; a model reads bytes, not characters
    (UTF-8 text outside ASCII takes several). The split is by file, deterministic (a hash of the
    relative path, see above): no file has bytes in both splits. The content depends on the
    Python version that runs it (record ``sys.version`` with results)."""
    import hashlib
    import os
    import sysconfig
    check_choice("split", split, ("train", "valid"))
    if not isinstance(valid_fraction, (int, float)) or not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")
    root = root or sysconfig.get_paths()["stdlib"]
    chunks = []
    for rel in stdlib_files(root):
        held_out = hashlib.sha1(rel.encode()).digest()[0] < valid_fraction * 256
        if held_out == (split == "valid"):
            with open(os.path.join(root, *rel.split("/")), "rb") as f:
                chunks.append(f.read() + b"\0")
    if not chunks:
        raise ValueError(f"no *.py files for split {split!r} under {root!r}")
    return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)


def byte_windows(corpus, n, seq_len=256, seed=0):
    """n windows of seq_len + 1 consecutive bytes of ``corpus`` (a uint8 tensor), at start
    positions drawn uniformly (deterministic in ``seed``): (inputs [n, seq_len], targets
    [n, seq_len]) of int64, targets[t] = inputs[t + 1] (the next byte: every position has a
    label)."""
    check_positive_int(n=n, seq_len=seq_len)
    _check_seed(seed)
    if not isinstance(corpus, torch.Tensor) or corpus.dtype != torch.uint8 or corpus.dim() != 1:
        raise TypeError("corpus must be a 1-D uint8 tensor (stdlib_corpus)")
    if corpus.numel() < seq_len + 1:
        raise ValueError(f"corpus has {corpus.numel()} bytes, fewer than seq_len + 1 = "
                         f"{seq_len + 1}")
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(corpus.numel() - seq_len, (n,), generator=g)             # [n]
    w = corpus[start[:, None] + torch.arange(seq_len + 1)].long()                 # [n, T + 1]
    return w[:, :-1], w[:, 1:]


def _check_seed(seed):
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
