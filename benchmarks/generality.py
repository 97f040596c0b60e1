"""Train the CAM network with default settings on dataset shapes the presets were not made
for, and print its held-out classification score against the label prior and its CAM
mIoU against the trivial floor.

Cases (each its own run, results/gen-<case>/):
  demo-single   the demo with one object, so one label, per image
  demo-similar  the demo with markings whose colours differ only slightly (contrast 0.2)
  demo-few      the demo with 5 training images per class (30 images)
  demo-large    the demo drawn at 320 px (2x the side its settings were chosen for)
  msrc-2x       MSRC-21 upscaled 2x (640 px photos), with configs/msrc21.yaml
  msrc-few      MSRC-21 cut to about 5 training images per class, configs/msrc21.yaml

    .venv/bin/python benchmarks/generality.py --msrc ../shared/data/msrc21 [--cases ...]

The MSRC variants are written once under data/ (derived from --msrc, never committed).
Extra settings for every case (e.g. to compare learning rates) go in --set KEY=VALUE
with dotted keys (cam.train.lr=0.001).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CASES = ("demo-single", "demo-similar", "demo-few", "demo-large", "msrc-few", "msrc-2x")


def upscaled(source: Path, target: Path, factor: int = 2) -> Path:
    """MSRC-21 (VOC layout) with every photo and mask ``factor`` times larger."""
    if (target / "classes.txt").exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "JPEGImages").mkdir(parents=True)
    (tmp / "SegmentationClass").mkdir()
    shutil.copytree(source / "ImageSets", tmp / "ImageSets")
    shutil.copy(source / "classes.txt", tmp / "classes.txt")
    for path in sorted((source / "JPEGImages").glob("*.jpg")):
        image = Image.open(path)
        image.resize((image.width * factor, image.height * factor), Image.BICUBIC).save(
            tmp / "JPEGImages" / path.name, quality=95
        )
    for path in sorted((source / "SegmentationClass").glob("*.png")):
        mask = Image.open(path)
        mask.resize((mask.width * factor, mask.height * factor), Image.NEAREST).save(
            tmp / "SegmentationClass" / path.name
        )
    tmp.rename(target)
    return target


def few_per_class(source: Path, target: Path, per_class: int = 5) -> Path:
    """MSRC-21 whose train split keeps images until every class has ``per_class`` (at
    least one new class per kept image), val unchanged; files are linked, not copied."""
    if (target / "classes.txt").exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sets = tmp / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    for name in ("JPEGImages", "SegmentationClass", "classes.txt"):
        (tmp / name).symlink_to((source / name).resolve())
    ids = (source / "ImageSets/Segmentation/train.txt").read_text().split()
    counts: dict[int, int] = {}
    kept = []
    for image_id in ids:
        mask = np.asarray(Image.open(source / "SegmentationClass" / f"{image_id}.png"))
        labels = [int(v) for v in np.unique(mask) if v != 255]
        if any(counts.get(c, 0) < per_class for c in labels):
            kept.append(image_id)
            for c in labels:
                counts[c] = counts.get(c, 0) + 1
    (sets / "train.txt").write_text("\n".join(kept) + "\n")
    shutil.copy(source / "ImageSets/Segmentation/val.txt", sets / "val.txt")
    tmp.rename(target)
    return target


def case_config(case: str, msrc: Path) -> tuple[list[Path], dict]:
    """The config files (besides config.yaml) and the override of one case."""
    data = ROOT / "data"
    if case.startswith("demo-"):
        demo = {
            "demo-single": {"max_objects": 1},
            "demo-similar": {"marking_contrast": 0.2},
            "demo-few": {"num_train": 30},
            "demo-large": {"image_size": 320},
        }[case]
        return [], {"demo": demo, "dataset": {"root": f"data/{case}"}}
    root = (
        upscaled(msrc, data / "msrc21-2x")
        if case == "msrc-2x"
        else few_per_class(msrc, data / "msrc21-few")
    )
    return [ROOT / "configs/msrc21.yaml"], {"dataset": {"root": str(root)}}


def dotted(pairs: list[str]) -> dict:
    """{"cam": {"train": {"lr": 0.001}}} from ["cam.train.lr=0.001"]."""
    out: dict = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msrc", type=Path, help="MSRC-21 in VOC layout (msrc cases)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--set", nargs="*", default=[], help="KEY=VALUE settings for all")
    parser.add_argument(
        "--tag", default="", help="added to the run names after a dash: plain -> gen-<case>-plain"
    )
    parser.add_argument("--cores", default="all")
    args = parser.parse_args()
    rows = []
    for case in args.cases:
        if case.startswith("msrc") and args.msrc is None:
            parser.error(f"case {case} needs --msrc")
        files, override = case_config(case, args.msrc.resolve() if args.msrc else Path())
        run = f"gen-{case}-{args.tag}" if args.tag else f"gen-{case}"
        merge(override, {"run": run, **dotted(args.set)})
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(override, f)
        start = time.time()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                f"results/{run}/metrics/cam.json",
                "--cores",
                args.cores,
                "--configfile",
                *map(str, files),
                f.name,
                "--quiet",
                "rules",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        minutes = (time.time() - start) / 60
        run_dir = ROOT / "results" / run
        health_file = run_dir / "cam/health.json"
        verdict = json.loads(health_file.read_text()) if health_file.exists() else {}
        metrics_file = run_dir / "metrics/cam.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        manifest = json.loads((run_dir / "dataset.json").read_text())
        rows.append(
            (
                case,
                len(manifest["splits"]["train"]),
                verdict.get("final"),
                verdict.get("prior"),
                metrics.get("miou"),
                metrics.get("floor", {}).get("miou"),
                "healthy" if verdict.get("healthy") else "FAILED" if verdict else "no verdict",
                minutes,
            )
        )
        if proc.returncode:
            print(f"{case}: the workflow stopped (see {run_dir}/logs)", file=sys.stderr)
    print(
        f"\n{'case':<14} {'train':>5} {'val mAP':>8} {'prior':>6} {'CAM mIoU':>9} "
        f"{'floor':>6}  verdict   minutes"
    )
    for case, n, score, prior, miou, floor, verdict, minutes in rows:
        fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else "-"  # noqa: E731
        print(
            f"{case:<14} {n:>5} {fmt(score):>8} {fmt(prior):>6} {fmt(miou):>9} "
            f"{fmt(floor):>6}  {verdict:<9} {minutes:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
