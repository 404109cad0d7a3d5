"""MQAR generator: layout, determinism, power-law query gaps, argument checks, accuracy."""
import pytest
import torch

from minimc.data import accuracy, mqar


def test_shapes_and_determinism():
    x, y = mqar(8, seq_len=64, num_kv_pairs=8, vocab_size=64, seed=3)
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.long
    x2, y2 = mqar(8, seq_len=64, num_kv_pairs=8, vocab_size=64, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = mqar(8, seq_len=64, num_kv_pairs=8, vocab_size=64, seed=4)
    assert not torch.equal(x, x3)
    assert 0 <= x.min() and x.max() < 64


@pytest.mark.parametrize("T,N", [(64, 16), (128, 8), (40, 10)])
def test_layout_keys_values_queries_labels(T, N):
    V = 64
    x, y = mqar(50, seq_len=T, num_kv_pairs=N, vocab_size=V, seed=0)
    keys, values = x[:, 0:2 * N:2], x[:, 1:2 * N:2]
    assert ((1 <= keys) & (keys < V // 2)).all(), "keys come from the lower half (0 excluded)"
    assert ((V // 2 <= values) & (values < V)).all(), "values come from the upper half"
    for row in range(50):
        assert len(set(keys[row].tolist())) == N and len(set(values[row].tolist())) == N
        pos = (y[row] != -100).nonzero()[:, 0]
        assert len(pos) == N, "one answer per pair"
        assert (pos >= 2 * N).all() and ((pos - 2 * N) % 2 == 0).all(), \
            "queries after the context, even offsets"
        answer = dict(zip(keys[row].tolist(), values[row].tolist()))
        assert sorted(x[row, pos].tolist()) == sorted(answer), "every key is queried exactly once"
        assert all(answer[k] == v for k, v in zip(x[row, pos].tolist(), y[row, pos].tolist()))
    assert (y[:, :2 * N] == -100).all()


def test_power_law_gaps_prefer_short_distances():
    x, y = mqar(2000, seq_len=256, num_kv_pairs=4, vocab_size=64, seed=1)
    slot = ((y != -100).nonzero()[:, 1] - 8) // 2                          # query slot 0..123
    counts = torch.bincount(slot, minlength=124).float()
    assert counts[:10].mean() > 2 * counts[-10:].mean()
    assert counts[-10:].sum() > 0, "long gaps happen too"


@pytest.mark.parametrize("kwargs,match", [
    (dict(seq_len=60, num_kv_pairs=16), "too many pairs for the length"),
    (dict(seq_len=512, num_kv_pairs=40, vocab_size=64), "distinct keys"),
    (dict(num_kv_pairs=0), "num_kv_pairs must be an integer >= 1"),
    (dict(seq_len=12.0), "seq_len must be an integer"),
    (dict(power_a=0.0), "power_a"),
])
def test_bad_arguments_say_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mqar(2, **kwargs)


def test_accuracy_over_answer_positions():
    x, y = mqar(4, seq_len=32, num_kv_pairs=4, vocab_size=32, seed=0)
    logits = torch.nn.functional.one_hot(y.clamp_min(0), 32).float()  # [B, T, V], all right
    assert accuracy(logits, y) == 1.0
    wrong = logits[y != -100].roll(1, dims=-1)                         # [n_labelled, V], all wrong
    assert accuracy(wrong, y) == 0.0
    half = logits[y != -100].clone()
    half[::2] = half[::2].roll(1, dims=-1)
    assert accuracy(half, y) == 0.5
