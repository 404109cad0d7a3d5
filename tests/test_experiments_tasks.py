"""The experiments' tasks (minimc.data: niah, stdlib_corpus, byte_windows) and the general
training loop (minimc.train.fit, evaluate_on)."""
import importlib.util
import json
import math
import os

import pytest
import torch

from minimc.data import byte_windows, niah, stdlib_corpus, stdlib_files
from minimc.layers import tiny_lm
from minimc.train import evaluate_on, fit


# ------------------------------------------------------------------------------ niah
def test_niah_layout_and_determinism():
    x, y = niah(64, seq_len=40, depth=0.5, vocab_size=32, seed=3)
    assert x.shape == y.shape == (64, 40) and x.dtype == y.dtype == torch.long
    x2, y2 = niah(64, seq_len=40, depth=0.5, vocab_size=32, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, niah(64, seq_len=40, depth=0.5, vocab_size=32, seed=4)[0])
    pos = round(0.5 * 37)
    keys, values = x[:, pos], x[:, pos + 1]
    assert ((1 <= keys) & (keys < 16)).all() and ((16 <= values) & (values < 32)).all()
    assert torch.equal(x[:, -1], keys), "the query is the needle's key, last"
    assert (y[:, :-1] == -100).all() and torch.equal(y[:, -1], values)
    assert ((x == keys[:, None]).sum(1) == 2).all(), "the key appears only as needle and query"
    assert 0 <= x.min() and x.max() < 32


@pytest.mark.parametrize("depth,pos", [(0, 0), (1, 61), (0.25, 15)])
def test_niah_depth_places_the_needle(depth, pos):
    x, y = niah(8, seq_len=64, depth=depth, seed=0)
    assert torch.equal(x[:, pos], x[:, -1]) and torch.equal(x[:, pos + 1], y[:, -1])


def test_niah_random_depth_covers_the_haystack():
    x, y = niah(2000, seq_len=32, depth=None, seed=1)
    pos = ((x[:, :-1] == x[:, -1:]).float().argmax(1))                     # [n] needle position
    assert torch.equal(x[torch.arange(2000), pos + 1], y[:, -1])
    assert pos.min() == 0 and pos.max() == 29


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=1.5), "depth must be a number in"), (dict(depth=True), "depth"),
    (dict(seq_len=2), "seq_len must be >= 3"), (dict(vocab_size=3), "vocab_size must be >= 4"),
    (dict(seed=-1), "seed"), (dict(n=0), "n must be an integer"),
])
def test_niah_bad_arguments_say_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        niah(**{"n": 2, **kwargs})


# ------------------------------------------------------------------------------ stdlib bytes
def _tree(tmp_path):
    files = {"a.py": b"x = 1\n", "pkg/b.py": b"def f():\n    pass\n", "pkg/c.txt": b"no",
             "test/t.py": b"skipped", "site-packages/s.py": b"skipped"}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    return str(tmp_path)


def test_stdlib_split_is_by_file_deterministic_and_complete(tmp_path):
    root = _tree(tmp_path)
    assert stdlib_files(root) == ["a.py", "pkg/b.py"]
    parts = {s: bytes(stdlib_corpus(s, valid_fraction=0.5, root=root).tolist())
             for s in ("train", "valid")}
    assert parts["train"] and parts["valid"], "both files landed in one split: change the names"
    docs = sorted(d for p in parts.values() for d in p.split(b"\0") if d)
    assert docs == [b"def f():\n    pass\n", b"x = 1\n"], "each file in exactly one split"
    again = bytes(stdlib_corpus("train", valid_fraction=0.5, root=root).tolist())
    assert again == parts["train"]


def test_the_real_stdlib_corpus():
    tr, va = stdlib_corpus("train"), stdlib_corpus("valid")
    assert tr.dtype == torch.uint8 and tr.numel() > 10 * va.numel() > 0
    assert b"def " in bytes(va[:100_000].tolist())


def test_byte_windows_are_next_byte_pairs():
    corpus = torch.arange(200, dtype=torch.uint8)
    x, y = byte_windows(corpus, 16, seq_len=20, seed=2)
    assert x.shape == y.shape == (16, 20) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(x, byte_windows(corpus, 16, seq_len=20, seed=2)[0])
    with pytest.raises(ValueError, match="fewer than seq_len"):
        byte_windows(corpus, 1, seq_len=200)
    with pytest.raises(TypeError, match="uint8"):
        byte_windows(corpus.long(), 1)


# ------------------------------------------------------------------------------ fit
def test_fit_trains_any_task_and_reports_per_position_loss():
    """fit() on the needle task: its own batches and evaluation; the per-position loss of a
    byte LM is finite at every position and averages to the overall loss."""
    evals = niah(64, seq_len=24, depth=0.5, vocab_size=32, seed=99)
    r = fit("attention", lambda step: niah(16, 24, None, 32, seed=step),
            lambda m: [evaluate_on(m, *evals)], steps=5, log_every=5, device="cpu",
            verbose=False, vocab_size=32)
    assert r["config"]["model"] == "attention" and len(r["history"]) == 1
    assert 0 <= r["accuracy"] <= 1 and r["state_size"] > 0
    corpus = torch.randint(256, (5000,), generator=torch.Generator().manual_seed(0))
    x, y = byte_windows(corpus.to(torch.uint8), 8, seq_len=16)
    out = evaluate_on(tiny_lm("linear"), x, y, batch_size=3, by_position=True)
    assert len(out["loss_by_position"]) == 16
    assert all(math.isfinite(v) for v in out["loss_by_position"])
    assert sum(out["loss_by_position"]) / 16 == pytest.approx(out["loss"], rel=1e-5)


def test_fit_checks_its_callables():
    with pytest.raises(TypeError, match="callables"):
        fit("linear", None, lambda m: [], steps=1)


# ------------------------------------------------------------------------------ the sweep
ROOT = os.path.join(os.path.dirname(__file__), "..")


def _experiments():
    spec = importlib.util.spec_from_file_location("experiments",
                                                  os.path.join(ROOT, "scripts", "experiments.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


COMMON = {"experiment", "size", "seconds"}
SCHEMA = {  # file -> keys every results folder must have (what the book and README read)
    "lr": {"runs", "grid", "chosen", "criterion"},
    "recall": {"runs", "table", "lr", "verdicts"},
    "parity": {"runs", "points", "verdicts", "attention_state"},
    "log_linear": {"runs", "table", "bounds", "state_size", "verdicts"},
    "ablations": {"runs", "rows", "verdicts"},
    "niah": {"rows", "lengths", "depths", "overall", "longest", "verdicts"},
    "extrapolation": {"rows", "train_seq_len", "num_kv_pairs", "verdicts"},
    "deep": {"runs", "table", "verdicts", "seq_len", "pairs", "nan_runs"},
    "lm": {"runs", "table", "bins", "verdicts", "python"},
    "cost": {"rows", "exponents", "exponent_lengths", "by_segment_len", "train_step"},
    "plateau": {"rows", "threshold", "factor", "runs_checked"},
    "plateau_lr": {"rows", "threshold", "factor", "lr_factor", "runs_checked"},
}


def check_schema(folder):
    with open(os.path.join(folder, "summary.json")) as f:
        meta = json.load(f)
    assert {"command", "experiments", "wall_seconds", "machine", "torch", "git", "sizes",
            "verdict_rule"} <= set(meta)
    for name in meta["experiments"]:
        with open(os.path.join(folder, name + ".json")) as f:
            data = json.load(f)
        assert SCHEMA[name] | COMMON <= set(data), f"{name}.json lacks {SCHEMA[name] - set(data)}"
        assert os.path.exists(os.path.join(folder, name + ".png")), name
        for v in data.get("verdicts", {}).values():
            assert v["verdict"] in ("better", "worse", "within noise", "one seed: no verdict")
            one = v["verdict"] == "one seed: no verdict"
            assert len(v["diffs"]) and one == (len(v["diffs"]) == 1)
    with open(os.path.join(folder, "recall.json")) as f:
        recall = json.load(f)
    for model, row in recall["table"].items():
        assert all(len(v) == 2 and 0 <= v[0] <= 1 for v in row.values()), model  # [mean, std]
    assert os.path.exists(os.path.join(folder, "summary.md"))


@pytest.mark.timeout(240)
def test_sweep_writes_results_with_the_schema(tmp_path):
    """Every experiment end to end at the smoke size (a few training steps, short lengths)."""
    _experiments().main(["--size", "smoke", "--out", str(tmp_path)])
    check_schema(str(tmp_path))


def test_committed_results_have_the_schema():
    """results/full is committed (chapter 12 loads it; the quick size runs live there)."""
    check_schema(os.path.join(ROOT, "results", "full"))


def test_verdict_rule():
    ex = _experiments()
    assert ex.compare({0: 0.9, 1: 0.8}, {0: 0.85, 1: 0.78})["verdict"] == "better"
    assert ex.compare({0: 0.9, 1: 0.8}, {0: 0.85, 1: 0.81})["verdict"] == "within noise"
    assert ex.compare({0: 0.80, 1: 0.80}, {0: 0.805, 1: 0.805})["verdict"] == "within noise"
    assert ex.compare({0: 1.9, 1: 2.0}, {0: 2.0, 1: 2.1}, "bpb")["verdict"] == "better"
    assert ex.compare({0: 0.5, 1: 0.6}, {0: 0.7, 1: 0.65})["verdict"] == "worse"
    assert ex.compare({0: 0.5}, {0: 0.7})["verdict"] == "one seed: no verdict"   # nothing to agree
