"""The grading helpers say what is wrong (tests/grading.py, tests/conftest.py, scripts/grade.py).

The second half runs the real grader (pytest in a subprocess, through scripts/grade.py) on
folders of deliberately wrong learner modules (``--impl <folder>``) and checks what it reports:
a cheat that zeroes its inputs passes nothing, an in-place edit is named, a None return is
named, an endless loop is stopped and named within two minutes for a whole chapter, a wrong
answer's diagnosis names the token and the chunk.
"""
import importlib.util
import re
import signal
import textwrap
import time
from pathlib import Path

import pytest
import torch

from grading import (GradingError, LearnerTimeout, call_learner, check_causal, check_close,
                     time_limit)

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("grade", ROOT / "scripts" / "grade.py")
grade = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grade)

x = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)


def message(got, expected, **kw):
    with pytest.raises(GradingError) as info:
        check_close(got, expected, "output", **kw)
    return str(info.value)


def test_verdicts():
    assert check_close(x.clone(), x) == "exact"
    assert check_close(x + 1e-9, x) == "close"
    assert check_close((x, 2.0), (x, 2.0)) == "exact"
    assert check_close(x.float() / 3, x / 3, dtype=False) == "close"
    assert "dtype torch.float32, expected torch.float64" in message(x.float(), x)


def test_messages():
    assert "should be a torch.Tensor of shape (2, 3, 4), got a list" in message([1, 2], x)
    assert "should be a torch.Tensor" in message((x, x), x) and "tuple of 2" in message((x, x), x)
    assert "shape (2, 4, 3), expected (2, 3, 4)" in message(x.transpose(1, 2), x)
    assert "transpose" in message(x.transpose(1, 2), x)
    y = x.clone()
    y[1, 2, 3] += 5
    m = message(y, x)
    assert "max |difference| 5 at (1, 2, 3)" in m
    assert "1 of 24 entries off, the first at (1, 2, 3)" in m
    assert "all zeros" in message(torch.zeros_like(x), x)
    assert "times 2" in message(2 * x, x)
    assert "NaN" in message(x * float("nan"), x)
    assert "should have 3 items, got 2" in message((x, x), (x, x, x))
    assert "output[1] has shape" in message((x, x[0]), (x, x))
    assert "got 3, expected 4" in message(3.0, 4.0)
    assert "dtype torch.int64" in message(x.long() + 1, x)


def test_close_but_not_within_tolerance_hint():
    assert "close, but not within tolerance" in message(x + 1e-3, x)


def test_grader_table_with_no_chapters(monkeypatch, tmp_path):
    monkeypatch.setattr(grade, "TESTS", tmp_path)
    lines = []
    assert grade.grade(out=lines.append) == 0 and lines == ["No exercises to grade yet."]
    lines.clear()
    assert grade.grade([3], out=lines.append) == 0 and "no exercise tests" in lines[0]


# ---- check_close in words, call_learner's guards (in-process) ------------------------------------

def test_named_axes_parts_and_hints():
    o = torch.zeros(2, 20, 3, 4, dtype=torch.float64)
    wrong = o.clone()
    wrong[1, 16:, 0, 2] = 1.0
    m = message(wrong, o, axes=("B", "T", "H", "V"),
                hint=lambda at: f"the first token of chunk {at['T'] // 8}")
    assert "first difference at token t = 16 (b=1, h=0, v=2" in m
    assert m.splitlines()[0].endswith("the first token of chunk 2")
    W1, W2 = torch.ones(2, 3), torch.ones(3, 2)
    with pytest.raises(GradingError, match="^new W2 is wrong"):
        check_close((W1, W2 + 1), (W1, W2), "new", parts=("W1", "W2"))
    with pytest.raises(GradingError, match=r"expected \(2, 3\) \[E, K\]"):
        check_close(W2, W1, "dW1", axes=("E", "K"))


def test_call_learner_clones_and_names_inputs():
    q = torch.ones(3)

    def scales_in_place(q, k, scale=2.0):
        q.mul_(scale)
        return q + k

    with pytest.raises(GradingError, match="modified its input `q` in place"):
        call_learner(scales_in_place, q, torch.ones(3))
    assert torch.equal(q, torch.ones(3)), "the caller's tensor must stay as it was"

    def edits_state(state, k):
        state[1].zero_()
        return state

    with pytest.raises(GradingError, match=r"`state\[1\]`"):
        call_learner(edits_state, (torch.ones(2), torch.ones(2)), torch.ones(2))
    with pytest.raises(GradingError, match=r"^forgot returned None \(did you forget `return`\?\)"):
        call_learner(lambda x: None, q, _name="forgot")
    a = torch.ones(3, requires_grad=True)                            # gradients reach the caller
    call_learner(lambda x: (2 * x).sum(), a).backward()
    assert torch.equal(a.grad, torch.full((3,), 2.0))
    nan = torch.tensor([float("nan"), 1.0])                          # NaN inputs are "unchanged"
    assert call_learner(lambda x: x + 1, nan) is not None


def test_time_limit_names_the_function_and_skips_it_later(monkeypatch):
    import grading
    monkeypatch.setattr(grading, "TIMED_OUT", {})

    def spins():
        while True:
            pass

    start = time.monotonic()
    with pytest.raises(LearnerTimeout, match="^`spins` did not return within 0.5 s"):
        call_learner(spins, _limit=0.5)
    assert time.monotonic() - start < 5
    with pytest.raises(pytest.skip.Exception, match="not run: `spins` did not return"):
        call_learner(spins, _limit=0.5)


def test_time_limit_keeps_an_outer_alarm():
    """An outer SIGALRM timer (pytest-timeout's signal method) survives a learner call, and
    fires as usual when it is due before the learner's own limit."""
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        with time_limit("quick", 10):
            pass
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 4.0 < left <= 5.0, left
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with time_limit("slow", 10):
            time.sleep(0.5)                                          # the outer timer fires here
        assert fired == [1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_check_causal():
    a = torch.arange(12.0).view(1, 6, 2)
    b = a.clone()
    b[:, 4:] += 1
    assert check_causal(a, b, 4) == "exact"
    with pytest.raises(GradingError, match="token t = 2 changed when only the keys at t >= 4"):
        b[:, 2] += 1
        check_causal(a, b, 4, "output", "the keys")


# ---- the grader on wrong learner modules (pytest in a subprocess, --impl <folder>) ---------------

EX = ROOT / "tests" / "exercises"
FUNCTIONS = ("linear_attention_recurrent", "linear_attention_chunked",
             "decayed_linear_attention_chunked")
SIGNATURES = {"linear_attention_recurrent": "q, k, v, scale=None",
              "linear_attention_chunked": "q, k, v, chunk_size=64, scale=None",
              "decayed_linear_attention_chunked": "q, k, v, decay, chunk_size=64, scale=None"}


def learner(folder, **modules):
    """A folder of learner modules for --impl: learner(path, ch01_linear_memory=source, ...)."""
    folder.mkdir()
    for name, source in modules.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return folder


def ch01(body_of):
    """ch01_linear_memory.py with each function's body given by body_of(name)."""
    parts = ["import torch\n"]
    for name, args in SIGNATURES.items():
        body = textwrap.indent(textwrap.dedent(body_of(name)).strip("\n"), "    ")
        parts.append(f"def {name}({args}):\n{body}\n")
    return "\n\n".join(parts)


def run(folder, *test_files):
    results, output, note = grade.run_pytest(test_files, str(folder), timeout=300)
    assert results and note is None, output[-3000:]
    return {k.split("::", 1)[0].split("/")[-1] + "::" + k.split("::", 1)[1]: v
            for k, v in results.items()}


def of(results, prefix):
    """{test name: (outcome, diagnosis)} of one test file ("test_ch01_linear_memory")."""
    return {k.split("::")[1]: v for k, v in results.items() if k.startswith(prefix)}


CORRECT_RECURRENT = """
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        outs.append(torch.einsum("bhkv,bhk->bhv", S, scale * q[:, t]))
    return torch.stack(outs, 1), S
"""
IN_PLACE = CORRECT_RECURRENT.replace("    S = q.new_zeros",
                                     "    q.mul_(scale)                  # correct, but in place\n"
                                     "    scale = 1.0\n    S = q.new_zeros")
NO_INTER_CHUNK = """
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    outs = []
    for a in range(0, T, chunk_size):
        qc = scale * q[:, a:a + chunk_size].transpose(1, 2)
        kc = k[:, a:a + chunk_size].transpose(1, 2)
        vc = v[:, a:a + chunk_size].transpose(1, 2)
        C = qc.shape[2]
        mask = torch.ones(C, C, dtype=torch.bool).tril()
        outs.append((qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0) @ vc)   # no Q S term
    return torch.cat(outs, 2).transpose(1, 2), q.new_zeros(B, H, K, v.shape[-1])
"""
LEAKY_GATES = """
    import torch

    def causal_gates(u, k, segment_len, temperature):
        B, T, H, K = k.shape
        N = -(-T // segment_len)
        seg = torch.arange(T) // segment_len
        kbar = torch.stack([k[:, i * segment_len:(i + 1) * segment_len].mean(1)
                            for i in range(N)], 1)                         # [B, N, H, K]
        scores = torch.einsum("bthk,bnhk->bthn", u, kbar) * temperature
        online = (u * kbar[:, seg]).sum(-1, keepdim=True) * temperature    # the WHOLE segment
        valid = torch.arange(N) < seg[:, None]
        scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
        return torch.cat([scores, online], -1).softmax(-1)
"""
FORGOT_RETURN = """
    import torch

    def segment_bounds(T, segment_len, segmentation="constant"):
        [(a, min(a + segment_len, T)) for a in range(0, T, segment_len)]

    def readable_segments(T, segment_len, segmentation="constant"):
        raise NotImplementedError("readable_segments")

    def cache_states(q, k, v, segment_len, mode="checkpoint"):
        raise NotImplementedError("cache_states")
"""


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One grader run over three chapters of typical mistakes: ch01 (recurrent: right but in
    place; chunked: no inter-chunk term; decayed: raises IndexError), ch05 (segment_bounds
    forgets `return`), ch07 (the online summary sees the whole segment)."""
    bodies = {"linear_attention_recurrent": IN_PLACE, "linear_attention_chunked": NO_INTER_CHUNK,
              "decayed_linear_attention_chunked": "return q.shape[7]"}
    folder = learner(tmp_path_factory.mktemp("learner") / "mixed",
                     ch01_linear_memory=ch01(bodies.get), ch05_memory_caching=FORGOT_RETURN,
                     ch07_grm=LEAKY_GATES)
    files = [EX / "test_ch01_linear_memory.py", EX / "test_ch05_memory_caching.py",
             EX / "test_ch07_grm.py"]
    return folder, run(folder, *files)


def test_zeroing_the_inputs_passes_nothing(tmp_path):
    cheat = ch01(lambda name: f"""
        for x in (q, k, v{', decay' if 'decay' in SIGNATURES[name] else ''}):
            x.zero_()
        B, T, H, K = q.shape
        return q.new_zeros(B, T, H, v.shape[-1]), q.new_zeros(B, H, K, v.shape[-1])
    """)
    results = run(learner(tmp_path / "cheat", ch01_linear_memory=cheat),
                  EX / "test_ch01_linear_memory.py")
    assert len(results) >= 20
    assert not [k for k, (outcome, _) in results.items() if outcome == "passed"]
    for name, (outcome, why) in results.items():
        assert "modified its input" in why and "`q`" in why, (name, why)


def test_in_place_but_correct_is_told_which_input(mixed):
    mine = {k: v for k, v in of(mixed[1], "test_ch01").items() if k.startswith("test_recurrent")}
    told = [k for k, (outcome, why) in mine.items()
            if outcome == "failed" and why.startswith("your function linear_attention_recurrent "
                                                      "modified its input `q` in place")]
    assert told, mine                        # policy: it fails, naming the input ...
    for k, (outcome, why) in mine.items():   # ... never with another diagnosis (a test with
        assert k in told or outcome == "passed", (k, why)   # scale = 1.0 changes nothing: passes)


def test_none_and_errors_name_the_function_and_the_learners_file(mixed):
    folder, results = mixed
    why = {k.split("[")[0]: w or "" for k, (o, w) in results.items()}
    assert why["test_ch05_memory_caching.py::test_segment_bounds_default_is_constant"] == (
        "segment_bounds returned None (did you forget `return`?)")
    error = why["test_ch01_linear_memory.py::test_decayed_chunked_worked_example"]
    assert error.startswith("decayed_linear_attention_chunked raised IndexError"), error
    assert f"(in {folder / 'ch01_linear_memory.py'}, line " in error, error
    assert all("tests/exercises" not in w and "test_ch0" not in w for w in why.values()), why


def test_wrong_answer_names_the_token_and_the_chunk(mixed):
    outcome, why = of(mixed[1], "test_ch01")["test_chunked_matches_minimc[63-16]"]
    assert outcome == "failed"
    assert why.startswith("output o (T = 63, chunk_size = 16) is wrong: first difference at "
                          "token t = 16 ("), why
    assert "the first token of chunk 1: is the inter-chunk term Q S missing" in why, why


def test_a_leak_of_the_future_is_named(mixed):
    why = [w for k, (o, w) in of(mixed[1], "test_ch07").items()
           if k.startswith("test_online_summary_is_causal")]
    assert why and all(w.startswith("causal_gates is not causal: token t = ") and
                       "your online summary uses keys after t" in w for w in why), why


def test_a_chapter_of_endless_loops_is_named_within_two_minutes(tmp_path):
    loops = ch01(lambda name: "while True:\n    pass\n")
    lines = []
    start = time.monotonic()
    folder = learner(tmp_path / "loops", ch01_linear_memory=loops)
    grade.grade([1], impl=str(folder), out=lines.append)
    elapsed = time.monotonic() - start
    assert elapsed < 120, f"{elapsed:.0f} s"
    table = "\n".join(lines)
    assert re.search(r"^Chapter 1 .* 0/21  ✗$", table, re.M), table
    for name in FUNCTIONS:
        assert f"`{name}` did not return within 10 s: an endless loop?" in table, table
        assert f"not run: `{name}` did not return within 10 s in an earlier test" in table, table
