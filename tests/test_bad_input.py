"""Odd inputs read right or refused by name: 16-bit images and masks, EXIF orientation,
duplicate and space-holding ids in split files, a byte-order mark, and `wsss predict` on
files that share a name, dangling links and an empty folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.data import folder, voc
from wsss.data.manifest import DatasetError, Manifest, Record, read_image, read_mask, validate
from wsss.models.backbones import build_backbone
from wsss.models.cam import CAMNet
from wsss.models.deeplab import SegNet
from wsss.models.registry import save_model

EXIF_ORIENTATION = 0x0112


def test_16_bit_grey_image_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.arange(64, dtype=np.uint16)[None, :].repeat(8, 0) * 1024).astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 64, 3)
    expected = np.round(ramp[0].astype(float) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(rgb[0, :, 0], expected)  # a ramp, not all white
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == expected.max() < 255


def test_16_bit_mask_with_a_value_above_255_is_refused(tmp_path: Path) -> None:
    mask = np.zeros((4, 4), np.uint16)
    mask[0, 0] = 259  # would wrap to class 3 as uint8
    path = tmp_path / "mask16.png"
    Image.fromarray(mask).save(path)
    with pytest.raises(DatasetError, match=r"mask16.png: mask values \[259\] do not fit"):
        read_mask(path)
    mask[0, 0] = 3  # a 16-bit file of small class indices is fine
    Image.fromarray(mask).save(path)
    assert read_mask(path)[0, 0] == 3 and read_mask(path).dtype == np.uint8


def rotated_jpeg(path: Path, width: int = 40, height: int = 20) -> None:
    """A JPEG stored ``width`` x ``height`` whose EXIF says: turn 90 degrees clockwise."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (250, 0, 0)  # left half red as stored
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "turned.jpg"
    rotated_jpeg(path)
    image = read_image(path)
    assert image.shape == (40, 20, 3)  # shown upright: 20 wide, 40 high
    assert image[:15, :, 0].mean() > 200 and image[-15:, :, 0].mean() < 50  # red on top


def test_exif_turned_image_and_mask_sizes(tmp_path: Path) -> None:
    """A mask drawn on the shown image passes; one of the stored size names EXIF."""
    image = tmp_path / "turned.jpg"
    rotated_jpeg(image)
    shown, stored = tmp_path / "shown.png", tmp_path / "stored.png"
    Image.fromarray(np.zeros((40, 20), np.uint8)).save(shown)
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(stored)
    for check_pixels in (True, False):
        ok = Manifest("t", ("a",), True, {"s": [Record("x", str(image), str(shown), (0,))]})
        assert validate(ok, ["s"], check_pixels).split("s")[0].size == (40, 20)
        bad = Manifest("t", ("a",), True, {"s": [Record("x", str(image), str(stored), (0,))]})
        with pytest.raises(DatasetError, match="stored.png: mask size 40x20 .*EXIF orientation"):
            validate(bad, ["s"], check_pixels)


def test_a_mask_with_an_exif_orientation_is_turned_like_an_image(tmp_path: Path) -> None:
    values = np.zeros((20, 40), np.uint8)
    values[:, :20] = 1  # left half class 1 as stored
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path / "turned.png"
    Image.fromarray(values).save(path, exif=exif)
    mask = read_mask(path)
    assert mask.shape == (40, 20) and (mask[:20] == 1).all() and (mask[20:] == 0).all()


def voc_layout(root: Path, ids: list[str], split_lines: list[str], bom: bool = False) -> Path:
    for image_id in ids:
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (20, 30, 40)).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "SegmentationClass").mkdir(exist_ok=True)
        mask = np.zeros((8, 8), np.uint8)
        mask[2:5, 2:5] = 1
        Image.fromarray(mask).save(root / "SegmentationClass" / f"{image_id}.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    text = "".join(f"{line}\n" for line in split_lines)
    (sets / "train.txt").write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return root


def test_duplicate_id_in_a_split_file_is_refused_with_its_lines(tmp_path: Path) -> None:
    root = voc_layout(tmp_path / "voc", ["a", "b"], ["a", "b", "", "a"])
    with pytest.raises(
        DatasetError, match=r"train.txt: image id 'a' is listed twice \(lines 1 and 4\)"
    ):
        voc.build(root)


def test_ids_with_spaces_and_a_byte_order_mark(tmp_path: Path) -> None:
    root = voc_layout(tmp_path / "voc", ["my photo", "b"], ["my photo", "b 1"], bom=True)
    manifest = voc.build(root)
    assert [r.id for r in manifest.split("train")] == ["my photo", "b"]
    assert manifest.split("train")[0].image.endswith("JPEGImages/my photo.jpg")


def test_folder_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "a.jpg")
    (root / "labels.csv").write_bytes("\ufeffimage,labels\na.jpg,cat\n".encode())
    manifest = folder.build(root)
    assert manifest.classes == ("cat",) and manifest.split("train")[0].labels == (0,)


@pytest.fixture(scope="module")
def random_seg_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained segmentation model file (what predict writes does not depend on it)."""
    torch.manual_seed(0)
    net = SegNet(build_backbone("lite0", 16, weights=None), 3, "psa", 16, 2).eval()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    arch = {"backbone": "lite0", "output_stride": 16, "head": "psa", "head_channels": 16}
    save_model(path, net, "seg", {**arch, "head_dilation": 2}, ["background", "a", "b"])
    return path


def predict(model: Path, images: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "wsss.cli", "predict", "--model", str(model), "--images",
           str(images), "--out", str(out), "--device", "cpu", "--scales", "1.0"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)


def test_predict_keeps_every_result_of_files_sharing_a_name(
    random_seg_model: Path, tmp_path: Path
) -> None:
    images = tmp_path / "in"
    images.mkdir()
    Image.new("RGB", (24, 16), (200, 0, 0)).save(images / "ok.jpg")
    Image.new("RGB", (16, 24), (0, 200, 0)).save(images / "ok.png")
    Image.new("RGB", (20, 20), (0, 0, 200)).save(images / "solo.jpg")
    (images / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    out = tmp_path / "out"
    proc = predict(random_seg_model, images, out)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out / "ok_jpg.png").size == (24, 16)
    assert Image.open(out / "ok_png.png").size == (16, 24)
    assert Image.open(out / "ok_jpg_overlay.jpg").size == (24, 16)
    assert Image.open(out / "solo.png").size == (20, 20)
    assert not (out / "ok.png").exists()
    assert (out / "skipped.txt").read_text().split() == [str(images / "gone.jpg")]
    assert "segmented 3 images" in proc.stderr


def test_predict_on_an_empty_folder_fails(random_seg_model: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = predict(random_seg_model, tmp_path / "empty", tmp_path / "out")
    assert proc.returncode != 0
    assert "empty: no image files in this folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_predict_into_an_unusable_output_folder_names_it(
    random_seg_model: Path, tmp_path: Path
) -> None:
    images = tmp_path / "in"
    images.mkdir()
    Image.new("RGB", (20, 20)).save(images / "a.jpg")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder's parent should be")
    proc = predict(random_seg_model, images, blocker / "out")
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("wsss predict: error: ")
    assert str(blocker) in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1.2 MB tmpfs (root only); unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_infer_cam_on_a_full_disk_stops_cleanly(
    small_disk: Path, tiny_manifest: Path, tmp_path: Path
) -> None:
    """The CAM shard does not fit: one error line naming the file, exit 2 (no crash), and
    neither the final file nor a temporary one is left."""
    torch.manual_seed(0)
    net = CAMNet(build_backbone("lite0", 16, weights=None), 6, 16).eval()
    model = tmp_path / "cam.pt"
    arch = {"backbone": "lite0", "output_stride": 16, "head_channels": 16}
    save_model(model, net, "cam", arch, list(Manifest.load(tiny_manifest).classes))
    out = small_disk / "cam" / "shard-0.h5"
    cmd = [sys.executable, "-m", "wsss.cli", "infer-cam", "--manifest", str(tiny_manifest),
           "--model", str(model), "--out", str(out), "--split", "train", "--device", "cpu",
           "--scales", "1.0", "2.0"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("wsss infer-cam: error: [Errno 28] No space left on device")
    assert str(out) in last and "Traceback" not in proc.stderr
    assert list((small_disk / "cam").iterdir()) == []


def test_a_killed_writers_temporary_files_are_removed_by_the_next_write(tmp_path: Path) -> None:
    from wsss.core.atomic import write_json

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale_file = tmp_path / f".metrics.json.tmp-{dead}"
    stale_file.write_text("half")
    stale_dir = tmp_path / f".shard-0.tmp-{dead}"  # atomic_dir's name for shard-0
    stale_dir.mkdir()
    running = tmp_path / f".metrics.json.tmp-{os.getppid()}"  # a live process: kept
    running.write_text("in progress")
    other = tmp_path / f".other.json.tmp-{dead}"  # another file's: not this write's business
    other.write_text("x")
    write_json(tmp_path / "metrics.json", {"miou": 1.0})
    assert not stale_file.exists() and running.exists() and other.exists()
    assert (tmp_path / "metrics.json").exists()
    from wsss.core.atomic import atomic_dir

    with atomic_dir(tmp_path / "shard-0") as tmp:
        (tmp / "a.png").write_bytes(b"x")
    assert not stale_dir.exists() and (tmp_path / "shard-0/a.png").exists()


def test_a_large_image_is_scaled_to_the_pixel_budget(caplog: pytest.LogCaptureFixture) -> None:
    """Scales that would exceed max_pixels are lowered, the choice logged; the maps keep
    the image's size. Small images keep their scales."""
    from wsss.methods.inference import capped_scales, multiscale_cams, segment

    assert capped_scales(100, 100, [1.0, 2.0], 40_000) == [1.0, 2.0]
    with caplog.at_level("INFO"):
        capped = capped_scales(300, 200, [0.5, 1.0, 2.0], 30_000, "big.jpg")
    assert capped == pytest.approx([0.5, 0.7071, 0.7071], abs=1e-4)
    assert "big.jpg: 200x300 px is more than max_pixels 30000" in caplog.text
    assert capped_scales(300, 200, [2.0], 0) == [2.0]  # 0: no limit

    seen: list[tuple[int, int]] = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def cams(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape[-2:]))
            return torch.ones(x.shape[0], 2, x.shape[2] // 16 + 1, x.shape[3] // 16 + 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape[-2:]))
            return torch.zeros(x.shape[0], 3, *x.shape[-2:])

    image = torch.rand(3, 400, 600) * 255
    cams = multiscale_cams(Probe(), image, [0, 1], [1.0, 2.0], True, max_pixels=60_000)
    assert cams.shape == (2, 400, 600)
    assert max(h * w for h, w in seen) <= 60_000 + 600  # rounding of the sides
    seen.clear()
    probs = segment(Probe(), [image, torch.rand(3, 50, 40)], [1.0, 2.0], False, max_pixels=60_000)
    assert [p.shape[1:] for p in probs] == [(400, 600), (50, 40)]
    # the big image at 0.5 (its cap) sets the batch size at both scales: 200 x 300
    assert seen == [(200, 300), (200, 300)]


def test_a_misspelt_loader_option_is_named(tmp_path: Path) -> None:
    root = voc_layout(tmp_path / "voc", ["a"], ["a"])
    cmd = [sys.executable, "-m", "wsss.cli", "prepare", "--kind", "voc", "--root", str(root),
           "--out", str(tmp_path / "dataset.json"), "--splits", "train",
           "--options", '{"label_sourc": "xml"}']  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "label_sourc: not an option of the dataset.kind voc loader" in proc.stderr
    assert "label_source" in proc.stderr.split("allowed:")[1]
    assert not (tmp_path / "dataset.json").exists()


class Opaque:
    """An object a weights-only load refuses."""


@pytest.mark.parametrize("what", ["pickle", "garbage", "missing"])
def test_inspect_on_what_it_cannot_read_is_one_line(what: str, tmp_path: Path) -> None:
    path = tmp_path / f"{what}.pt"
    if what == "pickle":
        torch.save(Opaque(), path)
    elif what == "garbage":
        path.write_bytes(b"\x00\x01 not a file format")
    proc = subprocess.run([sys.executable, "-m", "wsss.cli", "inspect", str(path)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wsss inspect: error: {path}")
    assert "weights_only=False" not in proc.stderr  # never advise an unsafe load


def test_predict_coco_rle_decodes_to_the_png_masks(random_seg_model: Path, tmp_path: Path) -> None:
    """--format both: predictions.json's RLE masks, decoded by pycocotools, are the PNG
    label maps; categories and per-image class scores come from the model."""
    import json

    from pycocotools import mask as mask_utils

    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.jpg", (30, 20)), ("b.png", (24, 36))):
        pixels = (rng.random((*size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / name)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "wsss.cli", "predict", "--model", str(random_seg_model),
           "--images", str(images), "--out", str(out), "--device", "cpu", "--scales", "1.0",
           "--format", "both"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "predictions.json").read_text())
    assert data["categories"] == [{"id": 0, "name": "background"}, {"id": 1, "name": "a"},
                                  {"id": 2, "name": "b"}]  # fmt: skip
    assert [i["file_name"] for i in data["images"]] == ["a.jpg", "b.png"]
    for image in data["images"]:
        assert abs(sum(image["scores"].values()) - 1) < 1e-4
        png = np.array(Image.open(out / (Path(image["file_name"]).stem + ".png")))
        assert png.shape == (image["height"], image["width"])
        rebuilt = np.full(png.shape, 255, np.uint8)
        for ann in (a for a in data["annotations"] if a["image_id"] == image["id"]):
            rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"]}
            binary = mask_utils.decode(rle).astype(bool)
            assert binary.sum() == ann["area"] > 0 and 0 <= ann["score"] <= 1
            assert (rebuilt[binary] == 255).all()  # one label per pixel
            rebuilt[binary] = ann["category_id"]
        np.testing.assert_array_equal(rebuilt, png)
    coco_only = tmp_path / "coco"
    cmd[cmd.index(str(out))] = str(coco_only)
    cmd[-1] = "coco"
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    results = sorted(p.name for p in coco_only.iterdir() if p.name != ".wsss-predict.json")
    assert results == ["predictions.json", "skipped.txt"]


def test_a_missing_pydensecrf_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsss.core.errors import MissingDependency
    from wsss.core.settings import CRFParams
    from wsss.methods.crf import dense_crf

    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import fails as if absent
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(MissingDependency, match=r"pip install pydensecrf2==1.1 .*C\+\+ compiler"):
        dense_crf(image, np.ones((2, 4, 4)), CRFParams())
