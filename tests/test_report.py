"""The report's stage table: weak / full for every weak segmentation of a run."""

from __future__ import annotations

import json
from pathlib import Path

from wsss.reporting.report import stage_table


def write(path: Path, miou: float) -> Path:
    path.write_text(json.dumps({"stage": path.stem, "miou": miou, "num_images": 4}))
    return path


def test_weak_over_full_for_each_method(tmp_path: Path) -> None:
    single = [write(tmp_path / "wsfcn_val.json", 30.0), write(tmp_path / "seg_full.json", 60.0)]
    stage_table(single, tmp_path / "single.html")
    page = (tmp_path / "single.html").read_text()
    assert "weak / full supervision (wsfcn_val)</td><td>0.50<" in page
    hybrid = [*single, write(tmp_path / "seg.json", 45.0)]
    stage_table(hybrid, tmp_path / "hybrid.html")
    page = (tmp_path / "hybrid.html").read_text()
    assert "(wsfcn_val)</td><td>0.50<" in page and "(seg)</td><td>0.75<" in page
    stage_table(single[:1], tmp_path / "no_bound.html")
    assert "weak / full" not in (tmp_path / "no_bound.html").read_text()
