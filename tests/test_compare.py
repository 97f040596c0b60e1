"""Comparison of experiments: numbers per experiment and per group of seeds, and the files."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from wsss.reporting.compare import compare, write_comparison

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
STEPS = [
    {"key": "cam", "title": "CAMs (train)"},
    {"key": "rw", "title": "random walk (train)"},
    {"key": "seg", "title": "segmentation (val)"},
    {"key": "seg_full", "title": "fully supervised bound (val)"},
]


def _bench(path: Path, seconds: float, rss: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{HEADER}\n{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{seconds}\n")
    return str(path)


def _experiment(
    root: Path, name: str, group: str, seed: int, miou: dict[str, float], **extra: object
) -> dict:
    """An experiment whose metrics files hold ``miou`` (step -> %)."""
    metrics = {}
    for key, value in miou.items():
        path = root / name / "metrics" / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"miou": value, "num_images": 8}))
        metrics[key] = str(path)
    return {"name": name, "group": group, "seed": seed, "metrics": metrics, **extra}


@pytest.fixture
def plan(tmp_path: Path) -> dict:
    """Group "beta8" with two seeds (the second reuses the first's CAMs), group "beta16" with
    one seed and no random-walk metrics."""
    b = tmp_path / "beta8-s0" / "benchmarks"
    first = _experiment(
        tmp_path,
        "beta8-s0",
        "beta8",
        0,
        {"cam": 40.0, "rw": 50.0, "seg": 45.0, "seg_full": 60.0},
        shared={"cam": "beta8-s0"},
        benchmarks={
            "train_cam": [_bench(b / "train_cam.tsv", 100.0, "2048.5")],
            # two shards and one that never ran: seconds add up, memory is the max
            "infer_cam": [
                _bench(b / "infer_cam-0.tsv", 10.5, "500"),
                _bench(b / "infer_cam-1.tsv", 12.0, "700.25"),
                str(b / "infer_cam-2.tsv"),
            ],
            "eval_cam": [_bench(b / "eval_cam.tsv", 0.5, "NA")],  # too short to measure memory
        },
    )
    second = _experiment(
        tmp_path,
        "beta8-s1",
        "beta8",
        1,
        {"cam": 40.0, "rw": 54.0, "seg": 48.0, "seg_full": 64.0},
        shared={"cam": "beta8-s0"},
        benchmarks={"eval_rw": [_bench(tmp_path / "beta8-s1" / "eval_rw.tsv", 2.0, "-")]},
    )
    third = _experiment(tmp_path, "beta16", "beta16", 0, {"cam": 30.0, "seg": 35.0})
    return {"steps": STEPS, "experiments": [first, second, third]}


def test_experiment_numbers(plan: dict) -> None:
    first, second, third = compare(plan)["experiments"]
    assert first["miou"] == {"cam": 40.0, "rw": 50.0, "seg": 45.0, "seg_full": 60.0}
    assert first["weak_full"] == pytest.approx(0.75)
    assert first["rules"] == {
        "train_cam": {"seconds": 100.0, "peak_mb": 2048.5, "files": 1},
        "infer_cam": {"seconds": pytest.approx(22.5), "peak_mb": 700.25, "files": 2},
        "eval_cam": {"seconds": 0.5, "peak_mb": None, "files": 1},
    }
    assert first["total_s"] == pytest.approx(123.0)
    assert first["peak_mb"] == 2048.5
    # "-" for memory: no peak at all
    assert second["rules"] == {"eval_rw": {"seconds": 2.0, "peak_mb": None, "files": 1}}
    assert second["total_s"] == 2.0 and second["peak_mb"] is None
    # steps without metrics are None, and so is weak / full without the bound
    assert third["miou"] == {"cam": 30.0, "rw": None, "seg": 35.0, "seg_full": None}
    assert third["weak_full"] is None
    assert third["rules"] == {} and third["total_s"] == 0 and third["peak_mb"] is None


def test_group_statistics(plan: dict) -> None:
    result = compare(plan)
    beta8, beta16 = result["groups"]
    assert beta8["group"] == "beta8" and beta8["n"] == 2
    assert beta8["experiments"] == ["beta8-s0", "beta8-s1"]
    assert beta8["miou"]["cam"] == {"n": 2, "mean": 40.0, "std": 0.0}
    # sample standard deviation (n - 1): values 50 and 54 -> sqrt(8)
    assert beta8["miou"]["rw"]["mean"] == pytest.approx(52.0)
    assert beta8["miou"]["rw"]["std"] == pytest.approx(8**0.5)
    assert beta8["miou"]["seg"]["std"] == pytest.approx(statistics.stdev([45.0, 48.0]))
    assert beta8["weak_full"]["mean"] == pytest.approx(0.75)  # 45/60 and 48/64
    assert beta8["weak_full"]["std"] == pytest.approx(0.0, abs=1e-12)
    # one seed: std 0; a step none of its seeds has: None
    assert beta16["n"] == 1
    assert beta16["miou"]["cam"] == {"n": 1, "mean": 30.0, "std": 0.0}
    assert beta16["miou"]["rw"] is None and beta16["weak_full"] is None
    json.dumps(result)  # serialisable as it is


def test_files_written(plan: dict, tmp_path: Path) -> None:
    out = tmp_path / "comparison"
    result = write_comparison(plan, out)
    assert sorted(p.name for p in out.iterdir()) == [
        f"comparison.{ext}" for ext in ("csv", "html", "json", "md", "png")
    ]  # no temporary files left behind
    assert json.loads((out / "comparison.json").read_text()) == json.loads(json.dumps(result))

    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["name"] for r in rows] == ["beta8-s0", "beta8-s1", "beta16"]
    assert float(rows[0]["rw_miou"]) == 50.0 and rows[2]["rw_miou"] == ""
    assert float(rows[0]["weak_full"]) == pytest.approx(0.75)
    assert float(rows[0]["total_s"]) == pytest.approx(123.0)
    assert float(rows[0]["peak_mb"]) == 2048.5 and rows[1]["peak_mb"] == ""

    md = (out / "comparison.md").read_text()
    assert "| beta8 | 2 | 40.00 ± 0.00 (2) | 52.00 ± 2.83 (2) |" in md
    assert "| beta16 | 1 | 30.00 | — |" in md
    reused = next(line for line in md.splitlines() if line.startswith("| reused artefacts |"))
    cells = [c.strip() for c in reused.strip("|").split("|")]
    header = next(line for line in md.splitlines() if line.startswith("| rule |"))
    names = [c.strip() for c in header.strip("|").split("|")]
    assert cells[names.index("beta8-s1")] == "cam: shared (beta8-s0)"
    assert "22.5 s / 700 MB" in md  # infer_cam: two shards

    page = (out / "comparison.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<td>52.00 ± 2.83 (2)</td>" in page
    assert "shared (beta8-s0)" in page

    with Image.open(out / "comparison.png") as image:
        assert image.format == "PNG"
        assert 6 * 110 <= image.width <= 14 * 110


def test_html_is_escaped(plan: dict, tmp_path: Path) -> None:
    plan["experiments"][2]["group"] = "<b>&co</b>"
    write_comparison(plan, tmp_path / "out")
    page = (tmp_path / "out" / "comparison.html").read_text()
    assert "&lt;b&gt;&amp;co&lt;/b&gt;" in page and "<b>" not in page


def test_missing_metrics_file_names_it(plan: dict, tmp_path: Path) -> None:
    missing = tmp_path / "beta16" / "metrics" / "rw.json"
    plan["experiments"][2]["metrics"]["rw"] = str(missing)
    with pytest.raises(FileNotFoundError, match="beta16") as info:
        write_comparison(plan, tmp_path / "out")
    assert str(missing) in str(info.value)
    assert not (tmp_path / "out").exists()  # nothing written


def test_import_is_light() -> None:
    code = (
        "import sys, wsss.reporting.compare; "
        "print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_weak_over_full_takes_each_experiments_last_weak_segmentation(tmp_path: Path) -> None:
    """WS-FCN's val masks are its weak result; with the hybrid's segmentation network too,
    that network (the later step) is."""
    steps = [
        {"key": "pseudo", "title": "pseudo-masks"},
        {"key": "wsfcn_train", "title": "WS-FCN masks"},
        {"key": "wsfcn_val", "title": "WS-FCN segmentation, weak"},
        {"key": "seg", "title": "segmentation, weak"},
        {"key": "seg_full", "title": "bound"},
    ]
    psa = _experiment(tmp_path, "psa", "psa", 0, {"pseudo": 60.0, "seg": 40.0, "seg_full": 80.0})
    wsfcn = _experiment(
        tmp_path, "wsfcn", "wsfcn", 0, {"wsfcn_train": 55.0, "wsfcn_val": 50.0, "seg_full": 80.0}
    )
    hybrid = _experiment(
        tmp_path, "hybrid", "hybrid", 0, {"wsfcn_val": 50.0, "seg": 60.0, "seg_full": 80.0}
    )
    found = compare({"steps": steps, "experiments": [psa, wsfcn, hybrid]})["experiments"]
    assert [e["weak_full"] for e in found] == pytest.approx([0.5, 0.625, 0.75])
    assert found[0]["miou"]["wsfcn_val"] is None and found[1]["miou"]["pseudo"] is None
