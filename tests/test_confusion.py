"""`wsss confusion`: the row shares of each step's confusion matrix as a picture, the labels
that take each class's pixels as a table, and its rule in the workflow."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_workflow import planned_jobs, snakemake

from wsss.stages.confusion import IO, row_shares, run

LABELS = ["sky", "car", "road", "grass"]
# rows: ground truth, columns: prediction (pixel counts); grass has no pixels
CONF = [[90, 0, 10, 0], [0, 50, 39, 11], [0, 0, 100, 0], [0, 0, 0, 0]]


def metrics(path: Path, step: str, conf: list, labels: list[str]) -> Path:
    path.write_text(json.dumps({"stage": step, "labels": labels, "confusion": conf}))
    return path


def test_row_shares_are_each_class_s_pixels_in_percent() -> None:
    shares = row_shares([[3, 1], [0, 0]])
    assert shares[0].tolist() == [75.0, 25.0]
    assert np.isnan(shares[1]).all()


def test_pictures_and_table_name_the_labels_that_take_a_class(tmp_path: Path) -> None:
    cam = metrics(tmp_path / "cam.json", "cam", CONF, LABELS)
    rw = metrics(tmp_path / "rw.json", "rw", [[1, 3], [0, 4]], ["cow", "grass"])
    out = tmp_path / "confusion"
    rows = run(IO(metrics=(cam, rw), out=out, top=2))
    expected = [
        {"step": "cam", "class": "sky", "recall": 90.0, "taken_by": "road 10.00"},
        {"step": "cam", "class": "car", "recall": 50.0, "taken_by": "road 39.00; grass 11.00"},
        {"step": "cam", "class": "road", "recall": 100.0, "taken_by": ""},
        {"step": "rw", "class": "cow", "recall": 25.0, "taken_by": "grass 75.00"},
        {"step": "rw", "class": "grass", "recall": 100.0, "taken_by": ""},
    ]
    assert rows == expected
    with open(out / "confusions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [{**row, "recall": float(row["recall"])} for row in table] == expected
    for step in ("cam", "rw"):
        picture = np.asarray(Image.open(out / f"{step}.png").convert("L"))
        assert picture.shape[0] > 200 and picture.min() < 100  # drawn, not blank
    assert sorted(p.name for p in out.iterdir()) == ["cam.png", "confusions.csv", "rw.png"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ({"stage": "cam", "labels": ["a", "b"]}, "not a metrics file with a confusion matrix"),
        ({"stage": "cam", "labels": ["a", "b"], "confusion": [[1, 2]]}, "is not 2 x 2"),
    ],
)
def test_a_bad_metrics_file_is_named_with_exit_3(
    tmp_path: Path, content: dict, problem: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    proc = subprocess.run(
        [sys.executable, "-m", "wsss.cli", "confusion", "--metrics", str(bad), "--out",
         str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 3
    assert str(bad) in proc.stderr and problem in proc.stderr
    assert not (tmp_path / "out" / "confusions.csv").exists()


def test_two_files_of_one_step_are_refused(tmp_path: Path) -> None:
    a = metrics(tmp_path / "a.json", "cam", CONF, LABELS)
    b = metrics(tmp_path / "b.json", "cam", CONF, LABELS)
    with pytest.raises(ValueError, match="two metrics files of one step"):
        run(IO(metrics=(a, b), out=tmp_path / "out"))


def test_the_workflow_draws_every_scored_step(tmp_path: Path) -> None:
    """`rule all` asks for it; run up to the CAMs, it draws the CAMs' matrix from the run's
    own metrics file."""
    dry = snakemake(tmp_path, "-n", "all")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert planned_jobs(dry.stdout)["confusion"] == 1
    proc = snakemake(tmp_path, "all", configs=({"last_step": "cam"},))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "results" / "tiny"
    drawn = run_dir / "report" / "confusion"
    assert sorted(p.name for p in drawn.glob("[!.]*")) == ["cam.png", "confusions.csv"]
    scored = json.loads((run_dir / "metrics" / "cam.json").read_text())
    with open(drawn / "confusions.csv", newline="") as f:
        table = {row["class"]: float(row["recall"]) for row in csv.DictReader(f)}
    assert table == {
        name: scored["recall"][name]
        for name in scored["labels"]
        if scored["recall"][name] is not None
    }
