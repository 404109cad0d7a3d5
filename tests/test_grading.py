"""The grading helpers say what is wrong (tests/grading.py, tests/conftest.py, scripts/grade.py)."""
import pytest
import torch

from grading import GradingError, check_close

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
    assert "max |difference| 5 at (1, 2, 3)" in m and "1 of 24 entries off, the first at (1, 2, 3)" in m
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
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("grade", Path(__file__).parent.parent / "scripts/grade.py")
    grade = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grade)
    monkeypatch.setattr(grade, "TESTS", tmp_path)
    lines = []
    assert grade.grade(out=lines.append) == 0 and lines == ["No exercises to grade yet."]
    lines.clear()
    assert grade.grade([3], out=lines.append) == 0 and "no exercise tests" in lines[0]
