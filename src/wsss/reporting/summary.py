"""The end-of-run summary: every stage's mIoU and where the artefacts are."""

from __future__ import annotations

import json
import os
from pathlib import Path

from wsss.workflow.pipeline import PATHS, WEAK, all_steps


def summarize(run_dir: str | os.PathLike[str]) -> str:
    """A table of the metrics in ``run_dir/metrics`` and a list of the run's artefacts."""
    run = Path(run_dir)
    metrics_dir = run / "metrics"
    if not metrics_dir.is_dir():
        raise FileNotFoundError(f"{metrics_dir}: no metrics yet (has the workflow run?)")
    lines = [f"Results of {run}", "", f"{'stage':<50} {'mIoU':>6}  {'images':>6}  note"]
    for stem, step in all_steps().items():
        path = metrics_dir / f"{stem}.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        title = f"{step.title} ({m.get('split', '?')} split)"
        notes = []
        if m.get("best"):
            notes.append(", ".join(f"best {k} {v:g}" for k, v in m["best"].items()))
        if "floor" in m:
            notes.append(f"trivial floor {m['floor']['miou']:.2f}")
        if "coverage" in m and m["coverage"] < 100:
            notes.append(f"coverage {m['coverage']:.1f}%")
        lines.append(
            f"{title:<50} {m['miou']:6.2f}  {m.get('num_images', ''):>6}  " + "; ".join(notes)
        )
    full = metrics_dir / "seg_full.json"
    for key in WEAK if full.exists() else ():
        weak = metrics_dir / f"{key}.json"
        if not weak.exists():
            continue
        ratio = json.loads(weak.read_text())["miou"] / max(
            json.loads(full.read_text())["miou"], 1e-9
        )
        title = "weak / full supervision" + ("" if key == "seg" else f" ({key})")
        lines.append(f"{title:<50} {ratio:6.2f}")
    verdicts = [
        (name, json.loads((run / name / "health.json").read_text()))
        for name in ("cam", "aff", "wsfcn", "seg", "seg_full")
        if (run / name / "health.json").exists()
    ]
    if verdicts:
        lines += [
            "",
            f"{'training health (held-out images)':<34} {'score':>6} {'prior':>6}  verdict",
        ]
    for name, v in verdicts:
        if v["metric"] is None:
            lines.append(f"  {name:<32} {'':>6} {'':>6}  not measured")
            continue
        verdict = (
            "healthy" if v["healthy"] else "FAILED: " + "; ".join(p["what"] for p in v["problems"])
        )
        lines.append(
            f"  {name + ' ' + v['metric']:<32} {v['final']:6.2f} {v['prior']:6.2f}  {verdict}"
        )
    lines += ["", "Artefacts:"]
    paths = {name: path.replace("{shard}", "*") for name, path in PATHS.items()}
    for pattern, what in [
        (paths["dataset"], "dataset manifest (splits, labels)"),
        (paths["cam_model"], "CAM network"),
        (paths["cam"], "CAMs (HDF5; wsss inspect FILE)"),
        (paths["aff_labels"], "affinity labels (PNG per image)"),
        (paths["aff_model"], "AffinityNet"),
        (paths["rw"], "refined CAMs (HDF5)"),
        (paths["pseudo"], "pseudo-masks (PNG per image)"),
        (paths["wsfcn_model"], "WS-FCN (wsss predict)"),
        (paths["wsfcn_train"], "WS-FCN masks, training split (PNG per image)"),
        (paths["wsfcn_val"], "WS-FCN masks, val split (PNG per image)"),
        (paths["seg_model"], "segmentation network (wsss predict)"),
        (paths["seg_full_model"], "fully supervised bound"),
        (paths["seg_pred"], "val predictions (PNG per image)"),
        ("*/training.csv", "per-epoch training history (CSV)"),
        ("report/*", "report figures (snakemake --report report.html)"),
        ("metrics/*.json", "metrics"),
        ("logs/*.log", "logs per job"),
        ("benchmarks/*.tsv", "time and memory per job"),
    ]:
        found = sorted(run.glob(pattern))
        if found:
            shown = found[0] if len(found) == 1 else f"{run / pattern} ({len(found)} files)"
            lines.append(f"  {what:<36} {shown}")
    return "\n".join(lines)
