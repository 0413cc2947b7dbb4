"""Dataset adapters: each public format read from a tiny synthetic copy, and the real shared sets' sizes."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from monitor.evaluation.datasets import FIGSTEP_PROMPT, Sample, compose_thinking, load_dataset, load_jsonl


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def guardreasoner(root: Path) -> Path:
    records = [
        {
            "instruction": "",
            "input": "Human user:\nhow to x?\n\nAI assistant:\nDo y.\n\n",
            "output": "Answers: \nRequest: None\nCompletion: None\nResponse: harmful\n",
        },
        {"instruction": "", "input": "Human user:\nhello\n\nAI assistant:\nNone\n\n", "output": "unharmful"},
    ]
    return _write(root / "GuardReasoner/data/benchmark/0_X.json", json.dumps(records))


def jailbreakbench(root: Path) -> Path:
    jb = {
        "parameters": {"method": "PAIR", "model": "m"},
        "jailbreaks": [
            {"index": 3, "goal": "g", "category": "c", "prompt": "p", "response": "r", "jailbroken": True},
            {
                "index": 4,
                "goal": "g2",
                "category": "c",
                "prompt": None,
                "response": "no",
                "jailbroken": False,
            },
            {
                "index": 5,
                "goal": "g3",
                "category": "c",
                "prompt": "p3",
                "response": None,
                "jailbroken": False,
            },
        ],
    }
    base = root / "JailbreakBench__artifacts/attack-artifacts"
    _write(base / "PAIR/black_box/m.json", json.dumps(jb))
    _write(base / "PAIR/attack-info.json", json.dumps({"method": "PAIR"}))
    _write(base / "test-artifact/black_box/m.json", json.dumps(jb))
    return root / "JailbreakBench__artifacts"


def star1(root: Path) -> Path:
    rec = [
        {
            "id": "7",
            "question": "q",
            "response": "<think>\nweigh it\n</think>\n\nNo.",
            "category": ["A", "B"],
            "source": "s",
            "score": 10,
        }
    ]
    return _write(root / "UCSC-VLAA__STAR-1/data/STAR-1.odd.json", json.dumps(rec))


def bsa(root: Path) -> Path:
    text = (
        "id,query,risk_summary,dataset_name,label\n1,q1,r,Over Sensitivity,Cat\n"
        '2,q2,r,Risk Omission,"Query A: X\nQuery B: Y"\n'
    )
    return _write(root / "OpenStellarTeam__BSA/data/dataset.csv", text)


def moderation(root: Path) -> Path:
    lines = [
        {"prompt": "a", "S": 0, "H": 1, "V": 0, "HR": 0, "SH": 0, "S3": 0, "H2": 0, "V2": 0},
        {"prompt": "b", "S": 0, "H": 0, "V": 0, "HR": 0, "SH": 0, "S3": 0, "H2": 0, "V2": 0},
    ]
    raw = gzip.compress("\n".join(json.dumps(x) for x in lines).encode())
    return _write(root / "openai__moderation-api-release/data/samples-1680.jsonl.gz", raw)


def figstep(root: Path) -> Path:
    data = root / "ThuCCSLab__FigStep/data"
    text = (
        "dataset,category_id,task_id,category_name,question,instruction\n"
        "ForbidQI,1,1,Illegal,q?,Steps.\nForbidQI,9,1,Fin,q?,Steps.\nForbidQI,9,2,Fin,q?,Steps.\n"
    )
    _write(data / "question/SafeBench-Tiny.csv", text)
    for name in ("query_ForbidQI_1_1_6.png", "query_ForbidQI_9_1_6.png"):
        (data / "images/SafeBench-Tiny").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(data / "images/SafeBench-Tiny" / name)
    return root / "ThuCCSLab__FigStep"


def vlguard(root: Path) -> Path:
    rec = [
        {
            "id": "a",
            "image": "x.png",
            "safe": True,
            "instr-resp": [
                {"safe_instruction": "s", "response": "r"},
                {"unsafe_instruction": "u", "response": "r"},
            ],
        },
        {
            "id": "b",
            "image": "y.png",
            "safe": False,
            "harmful_category": "privacy",
            "instr-resp": [{"instruction": "i", "response": "r"}],
        },
    ]
    return _write(root / "ys-zong__VLGuard/data/train.json", json.dumps(rec))


def vlsbench(root: Path) -> Path:
    rec = [
        {
            "instruction_id": 0,
            "instruction": "i",
            "image_path": "imgs/0.png",
            "category": "c",
            "sub_category": "s",
            "source": "g",
            "image_description": "d",
            "safety_reason": "r",
        }
    ]
    return _write(root / "AI45Lab__VLSBench/data/data.json", json.dumps(rec))


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (guardreasoner, [("how to x?", "", "Do y.", 1.0), ("hello", "", "", 0.0)]),
        (jailbreakbench, [("p", "", "r", 1.0), ("g2", "", "no", 0.0)]),
        (star1, [("q", "weigh it", "No.", 0.0)]),
        (bsa, [("q1", "", "", 0.0), ("q2", "", "", 0.5)]),
        (moderation, [("a", "", "", 1.0), ("b", "", "", 0.0)]),
        (figstep, [(FIGSTEP_PROMPT, "", "", 1.0), (FIGSTEP_PROMPT, "", "", 0.5)]),
        (vlguard, [("s", "", "", 0.0), ("u", "", "", 1.0), ("i", "", "", 1.0)]),
        (vlsbench, [("i\n[image: d]", "", "", 1.0)]),
    ],
)
def test_adapters_read_each_format(
    tmp_path: Path, make: Callable[[Path], Path], expected: list[tuple[str, str, str, float]]
) -> None:
    samples = load_dataset(make(tmp_path))
    assert [(s.question, s.thinking, s.answer, s.label) for s in samples] == expected
    assert len({s.id for s in samples}) == len(samples)
    assert all(s.source for s in samples)


def test_figstep_samples_carry_their_image(tmp_path: Path) -> None:
    samples = load_dataset(figstep(tmp_path))
    assert [s.images[0].name for s in samples] == ["query_ForbidQI_1_1_6.png", "query_ForbidQI_9_1_6.png"]


def test_generic_jsonl_round_trip_and_bad_label(tmp_path: Path) -> None:
    row = {
        "id": "1",
        "question": "q",
        "images": ["a.png"],
        "thinking": "t",
        "answer": "a",
        "label": 0.5,
        "harm_start": 3,
        "composed": True,
    }
    path = _write(tmp_path / "x.jsonl", json.dumps(row) + "\n\n")
    (sample,) = load_dataset(path)
    assert sample == Sample("1", "q", "t", "a", 0.5, (tmp_path / "a.png",), None, 3, "", True)
    _write(path, json.dumps({**row, "label": 2}))
    with pytest.raises(ValueError, match="label"):
        load_jsonl(path)


def test_unknown_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no dataset adapter"):
        load_dataset(_write(tmp_path / "mystery.json", "[]"))


@pytest.mark.parametrize(
    ("relative", "count", "harmful"),
    [
        ("UCSC-VLAA__STAR-1", 466, 0),
        ("JailbreakBench__artifacts", 1637, 937),
        ("yueliu1999__GuardReasoner/data/benchmark/0_A_beaver_tails.json", 3021, 1733),
        ("yueliu1999__GuardReasoner/data/benchmark/0_1_AegisSafetyTest.json", 359, 232),
        ("openai__moderation-api-release", 1680, 522),
        ("OpenStellarTeam__BSA", 2000, 0),
        ("ThuCCSLab__FigStep", 50, 35),
    ],
)
def test_shared_sets_match_the_catalog(shared_data: Path, relative: str, count: int, harmful: int) -> None:
    samples = load_dataset(shared_data / "raw" / relative)
    assert len(samples) == count
    assert sum(s.label == 1.0 for s in samples) == harmful


def test_guardreasoner_folder_loads_every_file(tmp_path: Path) -> None:
    guardreasoner(tmp_path)
    assert len(load_dataset(tmp_path / "GuardReasoner")) == 2


def test_compose_thinking_moves_the_response_into_the_trace() -> None:
    with_answer = Sample("a", "q", "", "harmful text", 1.0, source="s")
    question_only = Sample("b", "q", "", "", 1.0)
    (composed,) = compose_thinking([with_answer, question_only])
    assert (composed.thinking, composed.label, composed.harm_start, composed.composed) == (
        "harmful text",
        1.0,
        0,
        True,
    )
    assert composed.answer and composed.source == "s+composed"


def test_data_folder_is_a_setting_and_a_missing_one_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.cli import main
    from monitor.evaluation.datasets import DATA_ENV, DataMissing, data_dir
    from monitor.training.fit import main as training_main

    assert data_dir(tmp_path, {}) == tmp_path
    assert data_dir(None, {DATA_ENV: str(tmp_path)}) == tmp_path
    assert data_dir(tmp_path, {DATA_ENV: "/elsewhere"}) == tmp_path  # --data wins
    missing = tmp_path / "nowhere"
    with pytest.raises(DataMissing, match=f"{missing}.*--data.*{DATA_ENV}"):
        data_dir(missing, {})
    with pytest.raises(DataMissing, match=f"{missing}.*\\({DATA_ENV}\\)"):
        data_dir(None, {DATA_ENV: str(missing)})

    monkeypatch.setenv(DATA_ENV, str(missing))
    for run, prog in (
        (lambda: main(["train"]), "qta-monitor"),
        (lambda: training_main(["devsets", "--out", str(tmp_path / "dev")]), "python -m monitor.training"),
        (
            lambda: training_main(["prepare", "--data", str(missing), "--out", str(tmp_path / "p")]),
            "python -m",
        ),
    ):
        assert run() == 2
        err = capsys.readouterr().err
        assert (
            err.count("\n") == 1 and err.startswith(prog) and str(missing) in err and "Traceback" not in err
        )


def test_a_test_that_reads_missing_data_fails_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "QTA_SHARED_DATA": str(tmp_path / "nowhere")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::{test_shared_sets_match_the_catalog.__name__}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[2],
        check=False,
        timeout=120,
    )
    out = proc.stdout
    assert proc.returncode == 1, out
    assert "FileNotFoundError" not in out and "Traceback" not in out and "During handling" not in out
    assert f"shared data folder {tmp_path / 'nowhere'} not found (QTA_SHARED_DATA)" in out
