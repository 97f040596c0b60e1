"""Reliability of the workflow around the stages: dataset edits, two runs on one results
directory, experiments' demo data, names and paths, and settings that cannot work. Each
case runs the real Snakemake workflow (or `wsss prepare`) on real files in a scratch
working directory (docs/reliability.md, second round: workflow and paths)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_workflow import TINY, planned_jobs

from wsss.data.demo import generate
from wsss.stages.prepare import dataset_files, dataset_listing
from wsss.workflow.experiments import merge

REPO = Path(__file__).resolve().parent.parent

# The CAM network's training, as short as it gets (the dataset tests train it once).
ONE_EPOCH = {"cam": {"train": {"epochs": 1}}}


def snakemake_cmd(workdir: Path, extra: dict, *args: str) -> list[str]:
    """Snakemake in ``workdir`` on the tiny demo config with ``extra`` merged in."""
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(merge(TINY, extra)))
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(config),
        "--cores",
        "1",
        *args,
    ]


def snakemake(workdir: Path, extra: dict, *args: str, timeout: int = 600):
    cmd = snakemake_cmd(workdir, extra, *args)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=timeout)


def output_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def nothing_to_do(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == 0 and "Nothing to be done" in output_of(proc)


def write_image(path: Path, seed: int, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def folder_dataset(root: Path, labels: dict[str, tuple[str, str]]) -> Path:
    """A folder dataset: ``labels`` maps an image path under images/ to (labels, split)."""
    lines = ["image,labels,split"]
    for seed, (image, (names, split)) in enumerate(labels.items()):
        write_image(root / "images" / image, seed)
        lines.append(f"{image},{names},{split}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def cats_and_dogs(root: Path) -> Path:
    """Six training and two val images of two classes, in varied combinations."""
    names = ["cat", "dog", "cat;dog", "cat", "dog", "cat;dog"]
    labels = {f"t{i}.png": (n, "train") for i, n in enumerate(names)}
    labels.update({"v0.png": ("cat", "val"), "v1.png": ("dog", "val")})
    return folder_dataset(root, labels)


def folder_config(root: Path, **more: object) -> dict:
    return merge(
        ONE_EPOCH,
        {"dataset": {"kind": "folder", "root": str(root), "eval_split": "val"}, **more},
    )


# ---- 60-62: dataset edits make the manifest and what follows stale -------------------------


def test_an_edited_folder_dataset_makes_the_manifest_and_what_follows_stale(
    tmp_path: Path,
) -> None:
    root = cats_and_dogs(tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    extra = folder_config(root)
    target = "results/tiny/cam/model.pt"
    proc = snakemake(work, extra, target)
    assert proc.returncode == 0, output_of(proc)[-3000:]
    assert nothing_to_do(snakemake(work, extra, "-n", target))

    def planned() -> dict[str, int]:
        proc = snakemake(work, extra, "-n", target)
        assert proc.returncode == 0, output_of(proc)[-3000:]
        return {} if nothing_to_do(proc) else planned_jobs(proc.stdout)

    csv = root / "labels.csv"
    original, stamp = csv.read_text(), csv.stat().st_mtime_ns
    # a label edited in the CSV
    csv.write_text(original.replace("t0.png,cat,", "t0.png,dog,"))
    assert planned() == {"prepare_dataset": 1, "train_cam": 1}
    csv.write_text(original)
    os.utime(csv, ns=(stamp, stamp))
    assert planned() == {}  # back as it was
    # an image replaced in place (same name, new pixels)
    image = root / "images" / "t1.png"
    kept = image.read_bytes()
    write_image(image, seed=99)
    assert planned() == {"prepare_dataset": 1, "train_cam": 1}
    image.write_bytes(kept)
    image_stamp = (root / "images" / "t2.png").stat().st_mtime_ns
    os.utime(image, ns=(image_stamp, image_stamp))
    # an image added with its CSV row (the case as reported)
    write_image(root / "images" / "t6.png", seed=6)
    csv.write_text(original + "t6.png,dog,train\n")
    assert planned() == {"prepare_dataset": 1, "train_cam": 1}


def test_a_voc_split_file_edit_makes_the_manifest_stale(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    generate(root, seed=2, num_train=6, num_val=2, image_size=64)
    work = tmp_path / "work"
    work.mkdir()
    extra = {"dataset": {"kind": "voc", "root": str(root)}}
    target = "results/tiny/dataset.json"
    assert snakemake(work, extra, target).returncode == 0
    assert nothing_to_do(snakemake(work, extra, "-n", target))
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text("\n".join(split.read_text().split()[:-1]) + "\n")  # one image fewer
    proc = snakemake(work, extra, "-n", target)
    assert planned_jobs(proc.stdout) == {"prepare_dataset": 1}, output_of(proc)[-2000:]
    assert "train.txt" in proc.stdout  # the updated input is named


def coco_dataset(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        write_image(root / f"{split}2014" / "a.png", 0)
        data = {
            "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 1,
                    "category_id": 3,
                    "bbox": [0, 0, 8, 8],
                    "area": 64,
                    "iscrowd": 0,
                    "segmentation": [[0, 0, 8, 0, 8, 8, 0, 8]],
                }
            ],
            "categories": [{"id": 3, "name": "car"}],
        }
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize("kind", ["voc", "msrc", "coco", "folder"])
def test_every_dataset_kind_declares_its_files_and_lists_its_images(
    tmp_path: Path, kind: str
) -> None:
    """The files each kind declares to Snakemake, and the listing digest (a param of the
    manifest's rule) changing when an image is added and back when it is removed."""
    root = tmp_path / kind
    if kind in ("voc", "msrc"):
        generate(root, seed=2, num_train=4, num_val=2, image_size=64)
        expected = [
            "ImageSets/Segmentation/train.txt",
            "ImageSets/Segmentation/val.txt",
            "classes.txt",
        ]
        added = root / "JPEGImages" / "new.jpg"
    elif kind == "coco":
        coco_dataset(root)
        expected = ["annotations/instances_train2014.json", "annotations/instances_val2014.json"]
        added = root / "val2014" / "new.png"
    else:
        cats_and_dogs(root)
        expected = ["labels.csv"]
        added = root / "images" / "sub" / "new.png"
    assert dataset_files(kind, root, {}) == [str(root / p) for p in expected]
    before = dataset_listing(kind, root, {})
    assert dataset_listing(kind, root, {}) == before
    write_image(added, seed=5)
    assert dataset_listing(kind, root, {}) != before
    added.unlink()
    assert dataset_listing(kind, root, {}) == before


# ---- 63: two runs from different working directories on one results directory -------------


def test_a_second_run_on_the_same_results_directory_is_refused_naming_the_first(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared results"
    lock = shared / "tiny" / ".lock"
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    target = "results/tiny/cam/model.pt".replace("results", str(shared))
    first_cmd = snakemake_cmd(
        first_dir, {"results": str(shared), "cam": {"train": {"lr": 0.01}}}, target
    )
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            first_cmd, cwd=first_dir, stdout=log, stderr=log, start_new_session=True
        )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # until the first run holds the lock
            text = lock.read_text() if lock.is_file() else ""
            if text.strip() and json.loads(text)["pid"] == first.pid:
                break
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        else:
            pytest.fail("the first run never took the lock")
        os.killpg(first.pid, signal.SIGSTOP)  # it stays in the middle of its run

        second_extra = {"results": str(shared), "cam": {"train": {"lr": 0.05}}}
        proc = snakemake(second_dir, second_extra, target)
        out = output_of(proc)
        assert proc.returncode != 0
        assert f"{shared}/tiny: another run is writing into this results directory" in out
        assert f"PID {first.pid}" in out and f"working directory {first_dir}" in out
        assert not (second_dir / "data").exists()  # not one job started

        os.killpg(first.pid, signal.SIGKILL)  # dies holding the lock
        first.wait()
        assert json.loads(lock.read_text())["pid"] == first.pid  # its details are left
        proc = snakemake(second_dir, second_extra, f"{shared}/tiny/dataset.json")
        assert proc.returncode == 0, output_of(proc)[-3000:]
        assert "taking over the lock of a run that ended without releasing it" in proc.stderr
        assert f"PID {first.pid}" in proc.stderr
        assert lock.read_text() == ""  # released at the end
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()


# ---- 64-65: experiments honour their demo settings ------------------------------------------


def test_experiments_that_differ_in_their_demo_data_each_get_their_own(tmp_path: Path) -> None:
    extra = {
        "experiments": [
            {"name": "a"},
            {"name": "b", "overrides": {"demo": {"seed": 4}}},
            {"name": "c", "overrides": {"demo": {"seed": 4}}},  # b's data, shared
        ]
    }
    proc = snakemake(tmp_path, extra, "-n")  # the whole run: c reads b's data and manifest
    assert proc.returncode == 0, output_of(proc)[-3000:]
    jobs = planned_jobs(proc.stdout)
    assert (jobs["make_demo"], jobs["make_demo_b"], jobs["prepare_dataset"]) == (1, 1, 2)
    assert "make_demo_c" not in jobs and "data/demo-c" not in proc.stdout
    targets = [f"results/tiny/{name}/dataset.json" for name in "ab"]
    proc = snakemake(tmp_path, extra, *targets)
    assert proc.returncode == 0, output_of(proc)[-3000:]
    manifests = [json.loads((tmp_path / t).read_text()) for t in targets]
    images = [[r["image"] for r in m["splits"]["train"]] for m in manifests]
    assert images[0][0].startswith(str(tmp_path / "data" / "demo" / "JPEGImages"))
    assert images[1][0].startswith(str(tmp_path / "data" / "demo-b" / "JPEGImages"))
    first = [Path(m).read_bytes() for m in (images[0][0], images[1][0])]
    assert first[0] != first[1]  # other data, as the seeds say
    assert (tmp_path / "results/tiny/logs/make_demo_b.log").is_file()


def test_a_demo_override_without_the_demo_dataset_is_refused(tmp_path: Path) -> None:
    root = cats_and_dogs(tmp_path / "data")
    extra = folder_config(
        root, experiments=[{"name": "a"}, {"name": "b", "overrides": {"demo": {"seed": 4}}}]
    )
    proc = snakemake(tmp_path, extra, "-n")
    assert proc.returncode != 0
    assert "experiment 'b': overrides demo.seed, but its dataset.kind is folder" in output_of(proc)


# ---- 66-70: names and paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"run": ".."}, "['run']"),
        ({"run": "."}, "['run']"),
        ({"experiments": [{"name": ".."}]}, "['experiments'][0]['name']"),
        ({"experiments": [{"name": "a/b"}]}, "['experiments'][0]['name']"),
        ({"experiments": [{"name": "-x"}]}, "['experiments'][0]['name']"),
    ],
)
def test_a_run_or_experiment_that_is_not_a_plain_name_is_refused(
    tmp_path: Path, extra: dict, named: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    proc = snakemake(work, extra)
    assert proc.returncode != 0
    assert "does not match" in output_of(proc) and named in output_of(proc)
    assert {p.name for p in work.iterdir()} <= {".snakemake", "config.yaml"}  # no results
    assert [p.name for p in tmp_path.iterdir()] == ["work"]


def test_the_names_are_checked_without_the_schema_too() -> None:
    from wsss.workflow.experiments import expand

    for config in (
        {"run": "..", "dataset": {"kind": "demo", "root": "d"}},
        {"run": "ok", "experiments": [{"name": ".."}], "dataset": {"kind": "demo", "root": "d"}},
    ):
        with pytest.raises(ValueError, match=r"'\.\.' is not a valid name"):
            expand(config)


def commands(output: str) -> list[list[str]]:
    """Every `wsss` command a dry run with -p prints, split as the shell splits it."""
    lines = [line for line in output.splitlines() if "Shell command: wsss " in line]
    return [shlex.split(line.split("Shell command: ", 1)[1]) for line in lines]


def test_paths_with_spaces_stay_whole_in_every_command(tmp_path: Path) -> None:
    """results "my results" and a dataset root "my data/demo": a real run to the CAM model
    (make_demo, prepare, train_cam with its --state-dir), and a dry run with -p of every
    rule of both methods and of the comparison, each command split as the shell would."""
    work = tmp_path / "work"
    work.mkdir()
    paths = {"results": "my results", "dataset": {"kind": "demo", "root": "my data/demo"}}
    extra = merge(ONE_EPOCH, paths)
    proc = snakemake(work, extra, "my results/tiny/cam/model.pt")
    assert proc.returncode == 0, output_of(proc)[-3000:]
    assert (work / "my results/tiny/cam/model.pt").is_file()
    assert (work / "my data/demo/classes.txt").is_file()
    assert sorted(p.name for p in work.iterdir()) == [
        ".snakemake",
        "config.yaml",
        "my data",
        "my results",
    ]
    variants = {
        "experiments": [
            {"name": "psa"},
            {"name": "hybrid", "overrides": {"method": "wsfcn", "wsfcn": {"hybrid": True}}},
        ]
    }
    proc = snakemake(work, merge(extra, variants), "-n", "-p", "-F")
    assert proc.returncode == 0, output_of(proc)[-3000:]
    found = commands(proc.stdout)
    stages = {c[1] for c in found}
    assert {"make-demo", "prepare", "train-cam", "train-wsfcn", "figure", "compare"} <= stages
    assert len(stages) >= 15
    for command in found:
        assert "my" not in command, command
        assert not any(t.startswith(("results/", "results", "data/")) for t in command), command
        assert any(t.startswith(("my results/", "my data/")) for t in command), command


def test_folder_images_in_subfolders_are_read_and_unlisted_ones_named(tmp_path: Path) -> None:
    root = cats_and_dogs(tmp_path / "data")
    write_image(root / "images" / "cats" / "c0.png", seed=10)
    write_image(root / "images" / "extra" / "e0.png", seed=11)
    write_image(root / "images" / "e1.png", seed=12)
    (root / "images" / "notes.txt").write_text("not an image\n")
    with open(root / "labels.csv", "a") as f:
        f.write("cats/c0.png,cat,train\n")
    out = tmp_path / "dataset.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wsss.cli",
            "prepare",
            "--kind",
            "folder",
            "--root",
            str(root),
            "--out",
            str(out),
            "--splits",
            "train",
            "val",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = json.loads(out.read_text())["splits"]["train"]
    assert "cats/c0" in [r["id"] for r in train]
    warning = next(line for line in proc.stderr.splitlines() if "not in this CSV" in line)
    assert "2 image files" in warning and "e1.png, extra/e0.png" in warning
    assert "1 of them in subfolders" in warning and "notes.txt" not in warning


# ---- 71-73: settings that cannot work ----------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "labels"),
    [(["cat"] * 6, "cat"), (["cat;dog"] * 6, "cat, dog")],
    ids=["one-class", "every-image-every-class"],
)
def test_wsfcn_on_labels_that_never_differ_is_refused_up_front(
    tmp_path: Path, names: list[str], labels: str
) -> None:
    table = {f"t{i}.png": (n, "train") for i, n in enumerate(names)}
    table.update({"v0.png": ("cat", "val"), "n0.png": ("", "train")})  # unlabelled: left out
    root = folder_dataset(tmp_path / "data", table)
    proc = snakemake(tmp_path, folder_config(root, method="wsfcn"), "-n")
    out = output_of(proc)
    assert proc.returncode != 0
    assert (
        f"dataset.train_split: all 6 labelled images of split 'train' of {root} have the "
        f"same labels ({labels}): method wsfcn cannot learn masks from them" in out
    ), out[-3000:]
    assert "Job stats" not in out
    # the same data with varied labels plans the run
    cats_and_dogs(root)
    assert snakemake(tmp_path, folder_config(root, method="wsfcn"), "-n").returncode == 0


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (
            {"method": "wsfcn", "cam": {"train": {"lr": 0.1}}},
            "experiment 'b': overrides cam.train.lr, which method wsfcn does not use",
        ),
        (
            {"method": "wsfcn", "affinity": {"random_walk": {"beta": 4}}, "pseudo": {"crf": False}},
            "experiment 'b': overrides affinity.random_walk.beta, which method wsfcn",
        ),
        (
            {"wsfcn": {"train": {"width": 64}}},
            "experiment 'b': overrides wsfcn.train.width, which method psa does not use",
        ),
        (
            {"last_step": "pseudo", "seg": {"train": {"lr": 0.1}}},
            "overrides seg.train.lr, which method psa up to last_step pseudo does not use",
        ),
        ({"results": "elsewhere"}, "experiment 'b': overrides results, a setting of the whole run"),
        ({"run": "other"}, "experiment 'b': overrides run, a setting of the whole run"),
        ({"threads": {"train": 1}}, "experiment 'b': overrides threads, a setting of the whole"),
        ({"resources": {"train": {"mem_mb": 10}}}, "overrides resources, a setting of the whole"),
    ],
)
def test_an_override_the_experiment_would_ignore_is_refused_by_name(
    tmp_path: Path, overrides: dict, named: str
) -> None:
    extra = {"experiments": [{"name": "a"}, {"name": "b", "overrides": overrides}]}
    proc = snakemake(tmp_path, extra, "-n")
    out = output_of(proc)
    assert proc.returncode != 0
    assert named in out, out[-3000:]
    assert "Job stats" not in out
