"""The Snakemake workflow end to end on a tiny demo run, in a scratch working directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

TINY = {
    "run": "tiny",
    "num_shards": 2,
    "demo": {"seed": 3, "num_train": 16, "num_val": 6, "image_size": 64},
    "cam": {
        "train": {
            "epochs": 2,
            "crop_size": 64,
            "head_channels": 32,
            "batch_size": 8,
            "num_workers": 0,
            "health": "warn",  # two epochs on 16 images: too short to pass the checks
            "warmup_epochs": 0,  # a one-epoch warm-up would be half of these 4 steps
        },
        "infer": {"scales": [1.0, 0.5]},
    },
    "affinity": {
        "train": {
            "epochs": 1,
            "crop_size": 64,
            "batch_size": 8,
            "num_workers": 0,
            "health": "warn",
        },
        "random_walk": {"logt": 4},
    },
    "seg": {
        "train": {
            "epochs": 1,
            "crop_size": 64,
            "batch_size": 8,
            "num_workers": 0,
            "head_channels": 16,
            "health": "warn",
        },
        "infer": {"scales": [1.0]},
    },
}


def snakemake_cmd(workdir: Path, *args: str, configs: tuple[dict, ...] = ()) -> list[str]:
    """The Snakemake command on the tiny demo config (plus ``configs``) in ``workdir``."""
    files = []
    for i, config in enumerate((TINY, *configs)):
        path = workdir / f"override-{i}.yaml"
        path.write_text(yaml.safe_dump(config))
        files.append(str(path))
    return [
        sys.executable,
        "-m",
        "snakemake",
        *args,
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        "2",
        "--configfile",
        *files,
    ]


def snakemake(
    workdir: Path, *args: str, configs: tuple[dict, ...] = ()
) -> subprocess.CompletedProcess:
    cmd = snakemake_cmd(workdir, *args, configs=configs)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count."""
    table = output.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


# The rules that draw an experiment's figures (workflow/rules/report.smk): the job tables of
# the tests count them with report_jobs, so a new figure changes no table.
REPORT_RULES = tuple(
    re.findall(r"^rule (\w+):", (REPO / "workflow/rules/report.smk").read_text(), re.M)
)


def report_jobs(experiments: int, examples: int | None = None) -> dict[str, int]:
    """The report's jobs of ``experiments`` experiments, ``examples`` of which (default:
    all) have an example panel."""
    examples = experiments if examples is None else examples
    jobs = {rule: experiments for rule in REPORT_RULES} | {"report_examples": examples}
    return {rule: count for rule, count in jobs.items() if count}


def test_run_writes_every_artefact(finished_run: Path) -> None:
    run = finished_run / "results" / "tiny"
    for path in [
        "dataset.json",
        "cam/model.pt",
        "cam/shard-0.h5",
        "cam/shard-1.h5",
        "aff/model.pt",
        "rw/shard-0.h5",
        "rw/shard-1.h5",
        "metrics/cam.json",
        "metrics/aff_labels.json",
        "metrics/rw.json",
        "metrics/pseudo.json",
        "seg/model.pt",
        "seg_full/model.pt",
        "metrics/seg.json",
        "metrics/seg_full.json",
        "report/stages.html",
        "report/per_class.png",
        "report/examples.png",
        "report/training/cam.png",
        "report/training/seg_full.png",
        "cam/training.csv",
        "cam/health.json",
        "aff/training.csv",
        "seg/health.json",
        "seg_full/health.json",
    ]:
        assert (run / path).is_file(), path
    gallery = run / "report" / "gallery"
    columns = sorted(p.name for p in gallery.iterdir() if not p.name.startswith("."))
    assert columns == [
        "1-image",
        "2-cam",
        "3-affinity-labels",
        "4-pseudo-mask",
        "5-prediction",
        "6-ground-truth",
    ]
    shown = {c: sorted(p.stem for p in (gallery / c).glob("*.png")) for c in columns}
    assert len(shown["1-image"]) == 6 and all(ids == shown["1-image"] for ids in shown.values())
    curves = sorted(p.name for p in (run / "report" / "training").glob("*.png"))
    assert curves == ["aff.png", "cam.png", "seg.png", "seg_full.png"]
    train_ids = (finished_run / "data/demo/ImageSets/Segmentation/train.txt").read_text().split()
    for stage in ("aff_labels", "pseudo"):
        pngs = sorted(p.stem for p in (run / stage).glob("shard-*/*.png"))
        assert pngs == sorted(train_ids), stage  # every image exactly once over the shards
    val_ids = (finished_run / "data/demo/ImageSets/Segmentation/val.txt").read_text().split()
    for model in ("seg", "seg_full"):
        pngs = sorted(p.stem for p in (run / "pred" / model).glob("shard-*/*.png"))
        assert pngs == sorted(val_ids), model
    for rule in [
        "make_demo",
        "prepare_dataset",
        "train_cam",
        "infer_cam-0",
        "infer_cam-1",
        "eval_cam",
        "affinity_labels-0",
        "train_aff",
        "random_walk-1",
        "eval_rw",
        "pseudo_masks-0",
        "eval_pseudo",
    ]:
        assert (run / "logs" / f"{rule}.log").is_file()
        assert (run / "benchmarks" / f"{rule}.tsv").is_file()
    metrics = json.loads((run / "metrics" / "cam.json").read_text())
    assert metrics["num_images"] == 16 and metrics["split"] == "train"
    assert 0 < metrics["miou"] <= 100 and metrics["miou"] > metrics["floor"]["miou"]
    assert [p["alpha"] for p in metrics["curve"]] == [0.5, 1, 2, 4, 8, 16, 32]
    assert set(metrics["per_class"]) == {
        "background",
        "cross",
        "ring",
        "triangle",
        "bars",
        "diamond",
        "star",
    }


def test_summary_prints_every_stage_and_the_ratio(finished_run: Path) -> None:
    run = finished_run / "results" / "tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "wsss.cli", "summary", str(run)],
        capture_output=True,
        text=True,
        check=True,
    )
    miou = {
        stage: json.loads((run / f"metrics/{stage}.json").read_text())["miou"]
        for stage in ("cam", "rw", "pseudo", "seg", "seg_full")
    }
    for title, stage in [
        ("CAMs", "cam"),
        ("random walk", "rw"),
        ("pseudo-masks", "pseudo"),
        ("segmentation, weak", "seg"),
        ("fully supervised bound", "seg_full"),
    ]:
        line = next(line for line in proc.stdout.splitlines() if title in line)
        assert f"{miou[stage]:6.2f}" in line, line
    ratio = next(line for line in proc.stdout.splitlines() if "weak / full" in line)
    assert f"{miou['seg'] / miou['seg_full']:6.2f}" in ratio
    assert "report figures" in proc.stdout
    # Each network's final held-out score beside its trivial prior.
    for name, metric in [("cam", "val_map"), ("aff", "val_pair_accuracy"), ("seg", "val_miou")]:
        verdict = json.loads((run / name / "health.json").read_text())
        line = next(line for line in proc.stdout.splitlines() if f"{name} {metric}" in line)
        assert f"{verdict['final']:6.2f} {verdict['prior']:6.2f}" in line, line


def test_refined_stages_are_scored(finished_run: Path) -> None:
    metrics = finished_run / "results" / "tiny" / "metrics"
    rw = json.loads((metrics / "rw.json").read_text())
    pseudo = json.loads((metrics / "pseudo.json").read_text())
    assert [p["alpha"] for p in rw["curve"]] == [0.5, 1, 2, 4, 8, 16, 32]
    assert rw["num_images"] == pseudo["num_images"] == 16
    assert 0 < rw["miou"] <= 100 and 0 < pseudo["miou"] <= 100
    assert np.asarray(pseudo["confusion"]).sum() == 16 * 64 * 64  # every pixel scored
    for model in ("seg", "seg_full"):
        seg = json.loads((metrics / f"{model}.json").read_text())
        assert seg["split"] == "val" and seg["num_images"] == 6
        assert np.asarray(seg["confusion"]).sum() == 6 * 64 * 64


def test_second_run_has_nothing_to_do(finished_run: Path) -> None:
    start = time.time()
    proc = snakemake(finished_run, "--dry-run")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert time.time() - start < 10


# the weakly supervised network and the report; the fully supervised bound does not depend
# on the pseudo-masks and is not rerun
DOWNSTREAM_OF_PSEUDO_MASKS = {"train_seg": 1, "infer_seg": 2, "eval_seg": 1, **report_jobs(1)}


def test_changed_inference_parameter_reruns_only_inference_and_later(finished_run: Path) -> None:
    proc = snakemake(
        finished_run,
        "--dry-run",
        configs=({"cam": {"infer": {"flip": False}}},),
    )
    assert proc.returncode == 0, proc.stderr
    assert planned_jobs(proc.stdout) == {
        "infer_cam": 2,
        "eval_cam": 1,
        "affinity_labels": 2,
        "eval_aff_labels": 1,
        "train_aff": 1,
        "random_walk": 2,
        "eval_rw": 1,
        "pseudo_masks": 2,
        "eval_pseudo": 1,
        "all": 1,
        **DOWNSTREAM_OF_PSEUDO_MASKS,
    }


def test_changed_pseudo_mask_parameter_reruns_only_pseudo_masks(finished_run: Path) -> None:
    proc = snakemake(finished_run, "--dry-run", configs=({"pseudo": {"crf": False}},))
    assert proc.returncode == 0, proc.stderr
    assert planned_jobs(proc.stdout) == {
        "pseudo_masks": 2,
        "eval_pseudo": 1,
        "all": 1,
        **DOWNSTREAM_OF_PSEUDO_MASKS,
    }


def test_more_shards_rerun_inference_only(finished_run: Path) -> None:
    proc = snakemake(finished_run, "--dry-run", configs=({"num_shards": 3},))
    assert proc.returncode == 0, proc.stderr
    jobs = planned_jobs(proc.stdout)
    assert jobs["infer_cam"] == 3 and "train_cam" not in jobs


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"cam": {"train": {"epochz": 3}}}, "'epochz' was unexpected"),
        ({"cam": {"train": {"epochs": "five"}}}, "['cam']['train']['epochs']"),
        ({"dataset": {"kind": "imagenet", "root": "x"}}, "['dataset']['kind']"),
        ({"resources": {"train": {"mem_mb": 0}}}, "['resources']['train']['mem_mb']"),
    ],
)
def test_bad_config_stops_naming_the_key(tmp_path: Path, override: dict, named: str) -> None:
    proc = snakemake(tmp_path, "--dry-run", configs=(override,))
    assert proc.returncode != 0
    assert named in proc.stdout + proc.stderr
