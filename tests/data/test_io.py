"""Problem files: JSONL, Parquet and datasets dirs load; bad rows name file and row."""

import json
from pathlib import Path

import pytest

from mirrorl.config import DataConfig
from mirrorl.data.io import load_problems


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_round_trip(tmp_path):
    path = _write(tmp_path / "p.jsonl",
                  [{"prompt": "1+1?", "answer": 2, "difficulty": 1}, {"prompt": "x", "answer": "y"}])
    problems = load_problems(str(path), DataConfig())
    assert [(p.prompt, p.answer, p.difficulty) for p in problems] == [("1+1?", "2", 1.0), ("x", "y", None)]


def test_parquet_and_datasets_dir(tmp_path):
    import datasets

    rows = {"question": ["a?", "b?"], "answer": ["1", "2"]}
    cfg = DataConfig(prompt_field="question")
    ds = datasets.Dataset.from_dict(rows)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.save_to_disk(str(tmp_path / "ds"))
    for source in (tmp_path / "p.parquet", tmp_path / "ds"):
        assert [p.prompt for p in load_problems(str(source), cfg)] == ["a?", "b?"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "ok", "answer": "1"}, {"answer": "2"}], r"p.jsonl:2: row has no prompt \(field 'prompt'\)"),
        ([{"prompt": "ok"}], r"p.jsonl:1: row has no answer \(field 'answer'\)"),
        ([{"prompt": "ok", "answer": "1", "difficulty": "hard"}],
         r"p.jsonl:1: difficulty must be a number, got 'hard'"),
        ([[1, 2]], r"p.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        load_problems(str(_write(tmp_path / "p.jsonl", rows)), DataConfig())


def test_code_rows_carry_their_tests_and_meta_and_need_no_answer(tmp_path):
    tests = [{"input": "1 2\n", "output": "3\n"}]
    rows = [{"prompt": "add", "tests": tests}, {"prompt": "add", "meta": {"tests": tests, "float_tolerance": 1e-6}},
            {"prompt": "x?", "answer": "4", "meta": {"source": "amc"}}]
    code, generated, math = load_problems(str(_write(tmp_path / "p.jsonl", rows)), DataConfig())
    assert (code.answer, code.meta) == ("", {"tests": tests})
    assert generated.meta == {"tests": tests, "float_tolerance": 1e-6}
    assert (math.answer, math.meta) == ("4", {"source": "amc"})


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "add", "tests": []}, r"p.jsonl:1: tests: expected a non-empty list"),
        ({"prompt": "add", "meta": {"tests": [{"input": 1}]}}, r"p.jsonl:1: tests\[0\]: expected"),
        ({"prompt": "add", "answer": "1", "meta": [1]}, r"p.jsonl:1: field 'meta' must be an object, got list"),
    ],
)
def test_bad_code_rows_name_file_and_row(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        load_problems(str(_write(tmp_path / "p.jsonl", [row])), DataConfig())


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_problems(str(tmp_path / "none.jsonl"), DataConfig())
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "answer": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_problems(str(tmp_path / "bad.jsonl"), DataConfig())
    (tmp_path / "p.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported data format"):
        load_problems(str(tmp_path / "p.csv"), DataConfig())
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no problems"):
        load_problems(str(tmp_path / "empty.jsonl"), DataConfig())
