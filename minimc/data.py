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

from .checks import check_positive_int


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
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
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
