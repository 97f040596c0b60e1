"""The WS-FCN path (method wsfcn): the train-wsfcn stage on a tiny generated dataset, its
masks through infer-seg, predict and the Python API, and what the workflow plans for it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from config_defaults import SCHEMA, demo_config
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from test_workflow import planned_jobs, report_jobs, snakemake
from test_workflow_config import ONCE, dry_run

from wsss.api import load
from wsss.core.settings import TrainIO
from wsss.data.manifest import Manifest, read_image, read_mask
from wsss.methods import hfpl, single_stage
from wsss.models import ngwp
from wsss.models.registry import ModelFileError, load_model
from wsss.models.wsfcn import WSFCN
from wsss.stages import eval_labels, infer_wsfcn, predict, train_wsfcn
from wsss.training.loop import check_health
from wsss.workflow.config_check import ConfigError, check_config
from wsss.workflow.experiments import merge

REPO = Path(__file__).resolve().parent.parent
# Two epochs on 24 images of 64 px, three steps each: the first classification only.
FAST = train_wsfcn.Params(
    epochs=2,
    classification_epochs=1,
    batch_size=8,
    crop_size=64,
    width=32,
    num_workers=0,
    health="warn",  # two epochs on a tiny set: the health checks would stop it
)
ONE_SCALE = infer_wsfcn.Params(scales=(1.0,), flip=True)


def train_io(manifest: Path, out_dir: Path) -> TrainIO:
    return TrainIO(
        manifest=manifest, out=out_dir / "model.pt", state_dir=out_dir / "state", device="cpu"
    )


def history(model: Path) -> list[dict[str, str]]:
    with (model.parent / "training.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def wsfcn_model(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    io = train_io(tiny_manifest, tmp_path_factory.mktemp("wsfcn"))
    train_wsfcn.run(io, FAST)
    return io.out


# ---- training -----------------------------------------------------------------------------


def test_training_writes_a_loadable_wsfcn_model(wsfcn_model: Path, tiny_manifest: Path) -> None:
    manifest = Manifest.load(tiny_manifest)
    loaded = load_model(wsfcn_model, "wsfcn")
    assert isinstance(loaded.model, WSFCN) and not loaded.model.training
    assert loaded.label_names == manifest.label_names  # background first, then the classes
    assert loaded.model.num_classes == len(manifest.classes) == 6
    assert loaded.arch == {**loaded.model.arch(), "backbone": "lite0", "output_stride": 16}
    assert (loaded.arch["context"], loaded.arch["fusion"], loaded.arch["width"]) == (True, True, 32)
    assert loaded.provenance["epochs"] == 2
    out = loaded.model(torch.rand(1, 3, 64, 64) * 255)
    assert out.masks.shape == (1, 7, 16, 16) and out.scores.shape == (1, 6)
    with pytest.raises(ModelFileError, match="a 'wsfcn' model, but a 'seg' model"):
        load_model(wsfcn_model, "seg")


def test_the_classification_epochs_do_not_train_the_mask_loss(wsfcn_model: Path) -> None:
    first, second = history(wsfcn_model)
    for row in (first, second):
        for column in ("loss_classification", "lr", "seconds", "images_per_s", "val_map"):
            assert float(row[column]) > 0, column
        assert float(row["val_map_prior"]) > 0
    # epoch 1: classification only, the mask term recorded as 0
    assert float(first["loss_segmentation"]) == 0.0
    assert float(first["loss"]) == pytest.approx(float(first["loss_classification"]), abs=1e-6)
    # epoch 2: the mask loss joins with weight 1
    assert float(second["loss_segmentation"]) > 0
    total = float(second["loss_classification"]) + float(second["loss_segmentation"])
    assert float(second["loss"]) == pytest.approx(total, abs=1e-5)
    verdict = json.loads((wsfcn_model.parent / "health.json").read_text())
    assert verdict["network"] == "train-wsfcn" and verdict["metric"] == "val_map"
    assert verdict["final"] == float(second["val_map"])


def test_a_resumed_training_equals_an_uninterrupted_one(
    wsfcn_model: Path, tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted at the first step of epoch 2, resumed: the same weights and history; and
    the mask loss is asked for in epoch 2 only, after the resume too."""
    asked = []
    real = single_stage.single_stage_loss

    def dies_in_epoch_two(output, images, labels, segmentation_loss, **kwargs):
        asked.append(segmentation_loss)
        if len(asked) == 4:  # 24 images, batch 8: the first step of epoch 2
            raise KeyboardInterrupt
        return real(output, images, labels, segmentation_loss, **kwargs)

    io = train_io(tiny_manifest, tmp_path)
    monkeypatch.setattr(single_stage, "single_stage_loss", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_wsfcn.run(io, FAST)
    assert not io.out.exists()
    assert torch.load(io.state_dir / "last.pt", weights_only=True)["epoch"] == 1
    assert asked == [False, False, False, True]
    asked.clear()
    train_wsfcn.run(io, FAST)
    assert asked == [True, True, True]  # epoch 2 only

    straight = torch.load(wsfcn_model, weights_only=True)["state_dict"]
    resumed = torch.load(io.out, weights_only=True)["state_dict"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], msg=key)
    assert [r["loss"] for r in history(io.out)] == [r["loss"] for r in history(wsfcn_model)]


def test_the_hfpl_add_on_acts_on_the_classification_branch(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    params = replace(
        FAST, sampling_weight=0.2, similarity_weight=1.0, similarity_sigma=4.0, health="ignore"
    )
    io = train_io(tiny_manifest, tmp_path)
    train_wsfcn.run(io, params)
    rows = history(io.out)
    for row in rows:
        terms = {k: float(v) for k, v in row.items() if k.startswith("loss_")}
        assert set(terms) == {
            "loss_classification",
            "loss_sampling",
            "loss_similarity",
            "loss_segmentation",
        }
        assert terms["loss_sampling"] > 0 and terms["loss_similarity"] != 0
        total = 0.8 * terms["loss_classification"] + 0.2 * terms["loss_sampling"]
        total += terms["loss_similarity"] + terms["loss_segmentation"]
        assert float(row["loss"]) == pytest.approx(total, abs=1e-4)
    assert float(rows[0]["loss_segmentation"]) == 0 < float(rows[1]["loss_segmentation"])


def test_the_health_check_reads_the_classification_term_after_the_first_epochs(
    tmp_path: Path,
) -> None:
    """The mask loss grows as more images' pseudo ground truth holds all their classes: a
    rising total is no sign of divergence, a rising classification loss is."""
    rows = [(0.60, 0.60, 0.0), (0.55, 0.55, 0.0), (0.52, 0.50, 0.02), (0.53, 0.47, 0.06)]
    rows += [(0.55, 0.45, 0.10), (0.57, 0.43, 0.14), (0.60, 0.41, 0.19)]
    history = [
        {"epoch": i + 1, "loss": total, "loss_classification": cls, "loss_segmentation": seg}
        for i, (total, cls, seg) in enumerate(rows)
    ]

    def problems(column: str, skip: int) -> list[str]:
        found = check_health(
            None, history, None, FAST, tmp_path / "h.json", "t", "wsfcn.train", skip, column
        )
        return [p.what for p in found]

    assert problems("loss_classification", 2) == []
    assert problems("loss", 2) == ["training loss is rising"]
    verdict = json.loads((tmp_path / "h.json").read_text())
    assert verdict["final_loss"] == 0.60 and not verdict["healthy"]
    for row, rising in zip(history[-3:], (0.52, 0.56, 0.60)):
        row["loss_classification"] = rising
    assert problems("loss_classification", 2) == ["training loss is rising"]


def test_the_shifted_class_logits_give_hfpl_the_masks() -> None:
    """The add-on reads the class logits less the background logit: its multinomial posterior
    is then WS-FCN's masks (channel 0: the background), its binomial one is positive where a
    class beats the background."""
    torch.manual_seed(0)
    out = ngwp.single_stage_output(torch.randn(2, 3, 5, 5) * 3, background=True)
    shifted = out.class_logits - ngwp.BACKGROUND_LOGIT
    present = torch.ones(2, 3)
    multinomial = hfpl.class_maps(shifted, present, hfpl.AddOn(posterior="multinomial"))
    torch.testing.assert_close(multinomial, out.masks)
    binomial = hfpl.class_maps(shifted, present, hfpl.AddOn(posterior="binomial"))
    assert torch.equal(binomial[:, 1:] > 0, out.masks[:, 1:] > out.masks[:, :1])


def test_classification_epochs_must_leave_an_epoch_for_the_mask_loss(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="classification_epochs must lie in 0..1"):
        train_wsfcn.run(train_io(tiny_manifest, tmp_path), replace(FAST, classification_epochs=2))
    assert not (tmp_path / "model.pt").exists()


# ---- masks --------------------------------------------------------------------------------


def segment_split(
    model: Path,
    manifest: Path,
    out: Path,
    split: str,
    present_only: bool,
    params: infer_wsfcn.Params = ONE_SCALE,
) -> None:
    for shard in range(2):
        io = infer_wsfcn.IO(
            manifest=manifest,
            model=model,
            out=out / f"shard-{shard}",
            split=split,
            shard=shard,
            num_shards=2,
            present_only=present_only,
            device="cpu",
        )
        infer_wsfcn.run(io, params)


def test_val_masks_are_label_maps_scored_like_the_segmentation_network(
    wsfcn_model: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    manifest = Manifest.load(tiny_manifest)
    segment_split(wsfcn_model, tiny_manifest, tmp_path / "val", "val", present_only=False)
    pngs = {p.stem: p for p in (tmp_path / "val").glob("shard-*/*.png")}
    assert sorted(pngs) == sorted(r.id for r in manifest.split("val"))
    for rec in manifest.split("val"):
        mask = read_mask(pngs[rec.id])
        assert mask.shape == read_image(rec.image).shape[:2]
        assert mask.max() < manifest.num_labels
    scored = eval_labels.run(
        eval_labels.IO(
            manifest=tiny_manifest,
            labels=tuple(sorted((tmp_path / "val").glob("shard-*"))),
            out=tmp_path / "wsfcn_val.json",
            stage="wsfcn_val",
            split="val",
        )
    )
    assert scored["num_images"] == 8 and 0 <= scored["miou"] <= 100
    assert np.asarray(scored["confusion"]).sum() == 8 * 64 * 64


def test_train_masks_keep_each_image_to_its_labels(
    wsfcn_model: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    manifest = Manifest.load(tiny_manifest)
    segment_split(wsfcn_model, tiny_manifest, tmp_path / "train", "train", present_only=True)
    every_class = replace(ONE_SCALE, score_cut=0.0)  # as --present-only, without the labels
    segment_split(
        wsfcn_model,
        tiny_manifest,
        tmp_path / "free",
        "train",
        present_only=False,
        params=every_class,
    )
    outside_labels = 0
    for rec in manifest.split("train"):
        allowed = {0} | {c + 1 for c in rec.labels}
        kept = read_mask(next((tmp_path / "train").glob(f"shard-*/{rec.id}.png")))
        assert set(np.unique(kept).tolist()) <= allowed, rec.id
        free = read_mask(next((tmp_path / "free").glob(f"shard-*/{rec.id}.png")))
        outside_labels += int((~np.isin(free, list(allowed))).sum())
        # where the free masks already agree with the labels, keeping changes nothing
        inside = np.isin(free, list(allowed))
        np.testing.assert_array_equal(kept[inside], free[inside])
    assert outside_labels > 0  # a two-epoch network predicts absent classes somewhere


def test_a_dataset_without_background_trains_and_segments(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    """MSRC-style: no background class, so the masks divide every pixel among the classes."""
    manifest = Manifest.load(tiny_manifest)
    manifest.has_background = False
    path = tmp_path / "dataset.json"
    manifest.save(path)
    io = train_io(path, tmp_path / "model")
    train_wsfcn.run(io, replace(FAST, epochs=1, classification_epochs=0, health="ignore"))
    loaded = load_model(io.out, "wsfcn")
    assert loaded.arch["background"] is False and loaded.label_names == list(manifest.classes)
    assert float(history(io.out)[0]["loss_segmentation"]) > 0
    segment_split(io.out, path, tmp_path / "masks", "train", present_only=True)
    for rec in manifest.split("train"):
        mask = read_mask(next((tmp_path / "masks").glob(f"shard-*/{rec.id}.png")))
        assert set(np.unique(mask).tolist()) <= set(rec.labels), rec.id


# ---- predict and the API ------------------------------------------------------------------


def test_predict_and_the_api_segment_with_a_wsfcn_model(
    wsfcn_model: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    manifest = Manifest.load(tiny_manifest)
    images = tmp_path / "images"
    images.mkdir()
    for rec in manifest.split("val")[:2]:
        (images / Path(rec.image).name).write_bytes(Path(rec.image).read_bytes())
    out = tmp_path / "out"
    skipped = predict.run(
        predict.IO(model=wsfcn_model, images=images, out=out, device="cpu"),
        predict.Params(scales=(1.0,), format="both"),
    )
    assert skipped == []
    names = sorted(p.stem for p in images.iterdir())
    assert sorted(p.stem for p in out.glob("*.png")) == names
    assert len(list(out.glob("*_overlay.jpg"))) == 2
    coco = json.loads((out / "predictions.json").read_text())
    assert [c["name"] for c in coco["categories"]] == manifest.label_names

    model = load(wsfcn_model, device="cpu")
    assert model.kind == "wsfcn"
    image = read_image(next(images.iterdir()))
    result = model.predict(image, ONE_SCALE)
    assert result.mask.shape == image.shape[:2] and result.mask.max() < 7
    assert result.probabilities.shape == (7, *image.shape[:2])
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-4)
    assert result.label_names == manifest.label_names
    np.testing.assert_array_equal(result.mask, read_mask(out / f"{names[0]}.png"))
    probs = model.classify(image)
    assert list(probs) == list(manifest.classes) and all(0 < p < 1 for p in probs.values())
    with pytest.raises(ValueError, match="a 'wsfcn' model; cams needs a 'cam' model"):
        model.cams(image)


# ---- the workflow -------------------------------------------------------------------------

METHOD = {"method": "wsfcn"}
# What the single-stage network needs besides the dataset: its training, the masks of both
# splits (two shards each) and their scores.
WSFCN_JOBS = {"train_wsfcn": 1, "infer_wsfcn": 4, "eval_wsfcn": 2}
BOUND_JOBS = {"train_seg": 1, "infer_seg": 2, "eval_seg": 1}
RUN = {"make_demo": 1, "prepare_dataset": 1, **report_jobs(1), "all": 1}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {**RUN, **WSFCN_JOBS, **BOUND_JOBS}),
        # the segmentation network on WS-FCN's masks too: weak and bound
        (
            {"wsfcn": {"hybrid": True}},
            {**RUN, **WSFCN_JOBS, **{k: 2 * v for k, v in BOUND_JOBS.items()}},
        ),
        (
            {"last_step": "wsfcn_train"},
            {**RUN, "train_wsfcn": 1, "infer_wsfcn": 2, "eval_wsfcn": 1},
        ),
    ],
)
def test_the_workflow_plans_the_wsfcn_steps(tmp_path: Path, extra: dict, expected: dict) -> None:
    proc = dry_run(tmp_path, {**METHOD, **extra}, "-p")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert planned_jobs(proc.stdout) == expected
    commands = [line for line in proc.stdout.splitlines() if "wsss infer-wsfcn" in line]
    wsfcn = [c for c in commands if "--model results/tiny/wsfcn/model.pt" in c]
    assert len(wsfcn) == expected["infer_wsfcn"]
    for command in wsfcn:  # the training split's masks keep to the image labels
        train = "/masks-train/" in command
        assert ("--split train --present-only" in command) == train, command
        assert ("--split val --no-present-only" in command) == (not train), command
        assert "--scales 1.0 0.5 1.5 " in command and " --flip " in command  # wsfcn.infer
    weak = [line for line in proc.stdout.splitlines() if "--supervision weak" in line]
    assert len(weak) == int(extra.get("wsfcn", {}).get("hybrid", False))
    for command in weak:
        assert "--labels results/tiny/wsfcn/masks-train/shard-0 " in command
        assert "results/tiny/wsfcn/masks-train/shard-1 --out results/tiny/seg/model.pt" in command


def test_bad_wsfcn_settings_are_each_named(tmp_path: Path) -> None:
    config = demo_config()
    check_config({**config, **METHOD}, tmp_path)
    wsfcn = merge(config, {**METHOD, "last_step": "seg"})
    wsfcn["wsfcn"]["train"].update(epochs=3, classification_epochs=3, posterior="multinomial")
    with pytest.raises(ConfigError) as info:
        check_config(wsfcn, tmp_path)
    assert str(info.value).splitlines() == [
        "last_step: step 'seg' is off: wsfcn.hybrid is not true (the steps of this config: "
        "wsfcn_train, wsfcn_val, seg_full)",
        "wsfcn.train.posterior: multinomial has no effect unless sampling_weight or "
        "similarity_weight is above 0 (the plain nGWP loss has no posterior to choose)",
        "wsfcn.train.classification_epochs: 3 is not below wsfcn.train.epochs 3: the mask "
        "loss would never train",
    ]
    with pytest.raises(ConfigError, match="last_step: unknown step 'pseudo' of method wsfcn"):
        check_config(merge(config, {**METHOD, "last_step": "pseudo"}), tmp_path)
    with pytest.raises(ConfigError, match="wsfcn.hybrid: true has no effect with method psa"):
        check_config(merge(config, {"wsfcn": {"hybrid": True}}), tmp_path)
    with pytest.raises(ConfigError, match="method: unknown method 'single'"):
        check_config(merge(config, {"method": "single"}), tmp_path)


def test_the_workflow_refuses_a_bad_wsfcn_config_before_any_job(tmp_path: Path) -> None:
    proc = dry_run(tmp_path, {**METHOD, "last_step": "seg"})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "last_step: step 'seg' is off: wsfcn.hybrid is not true" in output, output[-3000:]
    assert "Job stats" not in output


def test_the_wsfcn_ablation_runs_beside_psa_and_shares_the_bound(tmp_path: Path) -> None:
    ablation = yaml.safe_load((REPO / "configs/ablation_wsfcn_demo.yaml").read_text())
    proc = dry_run(tmp_path, ablation)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    variants = [e["name"] for e in ablation["experiments"]]
    # the hybrid shares the network of "both" (same wsfcn.train), adding a segmentation network
    single_stage_variants = len(variants) - 2
    assert jobs["train_wsfcn"] == single_stage_variants
    assert jobs["infer_wsfcn"] == 4 * single_stage_variants
    assert jobs["train_cam"] == jobs["train_aff"] == 1  # the psa pipeline, once
    assert jobs["train_seg"] == 3  # psa's and the hybrid's weak networks, the one bound
    assert {k: jobs[k] for k in ONCE} == ONCE
    assert jobs["report_examples"] == len(variants)  # a panel of each, either method
    run = ablation["run"]
    assert variants[0] == "baseline" and variants[-1] == "psa"
    assert f"results/{run}/baseline/seg_full/model.pt" in proc.stdout
    assert f"results/{run}/psa/seg_full/model.pt" not in proc.stdout


# ---- end to end ---------------------------------------------------------------------------

TINY_WSFCN = {
    "method": "wsfcn",
    "num_shards": 1,
    "wsfcn": {
        "train": {
            "epochs": 2,
            "classification_epochs": 1,
            "batch_size": 8,
            "crop_size": 64,
            "width": 32,
            "num_workers": 0,
            "health": "warn",
            "warmup_epochs": 0,
        },
        "infer": {"scales": [1.0]},
    },
}


@pytest.mark.slow
def test_the_wsfcn_workflow_end_to_end(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "all", configs=(TINY_WSFCN,))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "results/tiny"
    for path in ["wsfcn/model.pt", "wsfcn/training.csv", "wsfcn/health.json", "report/stages.html"]:
        assert (run / path).is_file(), path
    # the example panel: image, WS-FCN's mask, its prediction, the truth; one gallery each
    columns = sorted(p.name for p in (run / "report/gallery").iterdir() if p.is_dir())
    assert columns == ["1-image", "2-ws-fcn-mask", "3-prediction", "4-ground-truth"]
    assert len(list((run / "report/gallery/2-ws-fcn-mask").glob("*.png"))) == 6
    shown = {p.name for p in (run / "report/gallery/2-ws-fcn-mask").glob("*.png")}
    assert shown <= {p.name for p in (run / "wsfcn/masks-train").glob("shard-*/*.png")}
    assert (run / "report/training/wsfcn.png").is_file()
    metrics = {
        key: json.loads((run / f"metrics/{key}.json").read_text())
        for key in ("wsfcn_train", "wsfcn_val", "seg_full")
    }
    assert (metrics["wsfcn_train"]["split"], metrics["wsfcn_train"]["num_images"]) == ("train", 16)
    assert (metrics["wsfcn_val"]["split"], metrics["wsfcn_val"]["num_images"]) == ("val", 6)
    for key in ("wsfcn_train", "wsfcn_val"):
        assert np.asarray(metrics[key]["confusion"]).sum() > 0
    summary = subprocess.run(
        [sys.executable, "-m", "wsss.cli", "summary", str(run)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for title, key in [
        ("WS-FCN masks (train split)", "wsfcn_train"),
        ("WS-FCN segmentation, weak (val split)", "wsfcn_val"),
    ]:
        line = next(line for line in summary.splitlines() if line.startswith(title))
        assert f"{metrics[key]['miou']:6.2f}" in line, line
    ratio = metrics["wsfcn_val"]["miou"] / metrics["seg_full"]["miou"]
    line = next(line for line in summary.splitlines() if "weak / full supervision" in line)
    assert "(wsfcn_val)" in line and f"{ratio:6.2f}" in line
    assert "wsfcn val_map" in summary
    images, out = tmp_path / "new", tmp_path / "predicted"
    images.mkdir()
    for path in sorted((tmp_path / "data/demo/JPEGImages").iterdir())[:3]:
        (images / path.name).write_bytes(path.read_bytes())
    subprocess.run(
        [sys.executable, "-m", "wsss.cli", "predict", "--model", str(run / "wsfcn/model.pt"),
         "--images", str(images), "--out", str(out), "--scales", "1.0", "--device", "cpu"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(p.stem for p in images.iterdir())


def test_wsfcn_inference_has_no_batch_size_to_ignore() -> None:
    """WS-FCN segments one unpadded image at a time; a batch size it would ignore is refused
    (the segmentation network's inference keeps its own)."""
    assert "batch_size" not in {f.name for f in fields(infer_wsfcn.Params)}
    with pytest.raises(WorkflowError, match="'batch_size' was unexpected"):
        validate(merge(demo_config(), {"wsfcn": {"infer": {"batch_size": 8}}}), SCHEMA)
    validate(merge(demo_config(), {"seg": {"infer": {"batch_size": 8}}}), SCHEMA)
