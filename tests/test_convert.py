"""``wsss convert``: SBD's MATLAB masks, the MSRC-v2 release and the released ResNet-38
weights, each from small fixtures written here in the real formats (MATLAB v5 files with
scipy, 24-bit BMPs with Pillow, MXNet's NDArray-list file), into what the loaders read."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsss.core.errors import MissingDependency
from wsss.data import build_manifest
from wsss.data.manifest import DatasetError
from wsss.models.resnet38d import ResNet38d, load_resnet38d_weights
from wsss.stages import convert
from wsss.stages.convert import (
    MSRC21_CLASSES,
    convert_msrc,
    convert_resnet38,
    convert_sbd,
    read_mxnet_params,
    resnet38d_key,
)

WSSS = [sys.executable, "-m", "wsss.cli"]
SHARED_MSRC = Path(__file__).resolve().parents[2] / "shared/data/msrc21"


def wsss_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WSSS, *args], capture_output=True, text=True, timeout=300)


# ---- SBD ---------------------------------------------------------------------------------

SBD_TRAIN, SBD_VAL = ["2008_000002", "2008_000003", "2008_000007"], ["2008_000009"]
VOC_TRAIN, VOC_VAL = ["2007_000032", "2008_000003"], ["2008_000007", "2007_000033"]


def sbd_mask(index: int) -> np.ndarray:
    """A label map with background, two classes and its own size."""
    mask = np.zeros((20 + index, 30), np.uint8)
    mask[2:10, 3:12] = 1 + index
    mask[12:, 15:] = 20 - index
    return mask


def write_sbd(root: Path) -> dict[str, np.ndarray]:
    """benchmark_RELEASE/dataset/{cls/*.mat, train.txt, val.txt}, each .mat as SBD's:
    struct GTcls with Segmentation, Boundaries (a cell of sparse maps), CategoriesPresent."""
    import scipy.io
    import scipy.sparse

    dataset = root / "benchmark_RELEASE/dataset"
    (dataset / "cls").mkdir(parents=True)
    masks = {}
    for index, image_id in enumerate(SBD_TRAIN + SBD_VAL):
        mask = sbd_mask(index)
        boundaries = np.empty((20, 1), dtype=object)
        for k in range(20):
            boundaries[k, 0] = scipy.sparse.csc_matrix(mask.shape, dtype=bool)
        present = np.unique(mask[mask > 0]).astype(np.uint8)
        gt = {"Segmentation": mask, "Boundaries": boundaries, "CategoriesPresent": present}
        scipy.io.savemat(dataset / f"cls/{image_id}.mat", {"GTcls": gt}, do_compression=True)
        masks[image_id] = mask
    (dataset / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
    (dataset / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))
    return masks


def write_voc(root: Path, masks: dict[str, np.ndarray]) -> Path:
    """A VOC2012 folder: JPEGImages, its own masks for VOC train / val, the two lists."""
    from wsss.data.palette import label_image

    voc = root / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    for image_id in set(masks) | set(VOC_TRAIN) | set(VOC_VAL):
        h, w = masks[image_id].shape if image_id in masks else (16, 16)
        Image.new("RGB", (w, h), (90, 120, 30)).save(voc / f"JPEGImages/{image_id}.jpg")
    for image_id in VOC_TRAIN + VOC_VAL:
        shape = masks[image_id].shape if image_id in masks else (16, 16)
        label_image(np.full(shape, 15, np.uint8)).save(voc / f"SegmentationClass/{image_id}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(VOC_VAL) + "\n")
    return voc


def test_sbd_masks_and_train_aug(tmp_path: Path) -> None:
    pytest.importorskip("scipy", reason="SBD conversion not tested: scipy is not installed")
    masks = write_sbd(tmp_path)
    voc = write_voc(tmp_path, masks)
    proc = wsss_cli("convert", "sbd", "--sbd", str(tmp_path / "benchmark_RELEASE"),
                    "--voc", str(voc))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]

    for image_id, mask in masks.items():
        png = Image.open(voc / f"SegmentationClassAug/{image_id}.png")
        assert png.mode == "P"
        assert np.array_equal(np.asarray(png), mask)
    # SBD train + val + VOC train, less VOC val
    listed = (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert listed == sorted({"2008_000002", "2008_000003", "2008_000009", "2007_000032"})

    # The VOC loader reads it: SBD's masks where VOC has none, VOC's own where it has one.
    manifest = build_manifest("voc", voc, tmp_path / "work")
    records = {r.id: r for r in manifest.split("train_aug")}
    assert set(records) == set(listed)
    assert records["2008_000002"].mask.endswith("SegmentationClassAug/2008_000002.png")
    assert records["2008_000002"].labels == (0, 19)  # classes 1 and 20, background dropped
    assert records["2008_000003"].mask.endswith("SegmentationClass/2008_000003.png")

    # Again: refused, then replaced with --force.
    again = wsss_cli("convert", "sbd", "--sbd", str(tmp_path / "benchmark_RELEASE/dataset"),
                     "--voc", str(voc))  # fmt: skip
    assert again.returncode == 3 and "exists: give --force" in again.stderr
    forced = convert_sbd(tmp_path / "benchmark_RELEASE/dataset", voc, force=True)
    assert forced == {"masks": 4, "train_aug": 4}
    assert not [p for p in voc.iterdir() if ".tmp-" in p.name]


def test_sbd_without_scipy_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "x.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # import scipy.io fails
    with pytest.raises(MissingDependency, match=r"needs scipy.*wsss\[convert\]"):
        convert.read_sbd_mat(tmp_path / "x.mat")


def test_sbd_files_that_are_not_sbd_are_named(tmp_path: Path) -> None:
    pytest.importorskip("scipy", reason="SBD conversion not tested: scipy is not installed")
    import scipy.io

    scipy.io.savemat(tmp_path / "inst.mat", {"GTinst": {"Segmentation": np.zeros((4, 4))}})
    with pytest.raises(DatasetError, match="inst.mat: no struct GTcls"):
        convert.read_sbd_mat(tmp_path / "inst.mat")
    scipy.io.savemat(tmp_path / "bad.mat", {"GTcls": {"Segmentation": np.full((4, 4), 30)}})
    with pytest.raises(DatasetError, match=r"bad.mat: values \[30\]"):
        convert.read_sbd_mat(tmp_path / "bad.mat")
    with pytest.raises(DatasetError, match="neither cls/ nor dataset/cls/"):
        convert_sbd(tmp_path, tmp_path)


# ---- MSRC-v2 -----------------------------------------------------------------------------

MSRC_IDS = ["1_1_s", "1_2_s", "5_10_s", "13_4_s", "20_7_s", "3_3_s"]
COLOURS = convert.MSRC_COLOURS


def write_msrc(root: Path) -> dict[str, np.ndarray]:
    """Images/<id>.bmp and GroundTruth/<id>_GT.bmp (24-bit), as in the release; returns the
    21-class label map each ground truth should give."""
    (root / "Images").mkdir(parents=True)
    (root / "GroundTruth").mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for index, image_id in enumerate(MSRC_IDS):
        h, w = (24, 32) if index % 2 else (32, 24)  # both orientations, as in the release
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            root / f"Images/{image_id}.bmp"
        )
        names = ["void", "building", "grass", "horse", "mountain", "cow", "boat", "body"]
        layout = np.array([[names[(index + r + c) % len(names)] for c in range(4)]
                           for r in range(4)])  # fmt: skip
        gt = np.zeros((h, w, 3), np.uint8)
        labels = np.full((h, w), 255, np.uint8)
        for r in range(4):
            for c in range(4):
                name = layout[r, c]
                block = (slice(r * h // 4, (r + 1) * h // 4), slice(c * w // 4, (c + 1) * w // 4))
                gt[block] = COLOURS[name]
                if name not in ("void", "horse", "mountain"):
                    labels[block] = MSRC21_CLASSES.index(name)
        Image.fromarray(gt).save(root / f"GroundTruth/{image_id}_GT.bmp")
        expected[image_id] = labels
    return expected


def test_msrc_release_into_the_voc_layout(tmp_path: Path) -> None:
    release = tmp_path / "MSRC_ObjCategImageDatabase_v2"
    expected = write_msrc(release)
    out = tmp_path / "msrc21"
    proc = wsss_cli("convert", "msrc", "--release", str(release), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]

    assert (out / "classes.txt").read_text().split() == list(MSRC21_CLASSES)
    for image_id, labels in expected.items():
        png = Image.open(out / f"SegmentationClass/{image_id}.png")
        assert png.mode == "P" and np.array_equal(np.asarray(png), labels)
        jpg = Image.open(out / f"JPEGImages/{image_id}.jpg")
        bmp = np.asarray(Image.open(release / f"Images/{image_id}.bmp"), dtype=float)
        assert jpg.size == png.size and np.abs(np.asarray(jpg, dtype=float) - bmp).mean() < 8
    train = (out / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (out / "ImageSets/Segmentation/val.txt").read_text().split()
    assert sorted(train + val) == sorted(MSRC_IDS) and len(val) == 1  # 20 % of 6, seeded
    manifest = build_manifest("msrc", out, tmp_path / "work")
    assert not manifest.has_background and manifest.classes == MSRC21_CLASSES
    record = {r.id: r for r in manifest.split("train") + manifest.split("val")}["1_1_s"]
    assert record.labels == tuple(sorted(set(np.unique(expected["1_1_s"]).tolist()) - {255}))

    # TextonBoost's split files; an existing folder refused without --force.
    splits = tmp_path / "TextonBoostSplits"
    splits.mkdir()
    for name, ids in (("Train", MSRC_IDS[:3]), ("Validation", MSRC_IDS[3:4]),
                      ("Test", MSRC_IDS[4:])):  # fmt: skip
        (splits / f"{name}.txt").write_text("".join(f"{i}.bmp\n" for i in ids))
    with pytest.raises(ValueError, match="exists: give --force"):
        convert_msrc(release, out, splits)
    counts = convert_msrc(release, out, splits, force=True)
    assert counts == {"train": 3, "val": 1, "test": 2}
    assert (out / "ImageSets/Segmentation/test.txt").read_text().split() == MSRC_IDS[4:]


def test_msrc_classes_are_those_of_the_shared_msrc21() -> None:
    if not (SHARED_MSRC / "classes.txt").is_file():
        pytest.skip(f"{SHARED_MSRC} is not on this machine")
    assert (SHARED_MSRC / "classes.txt").read_text().split() == list(MSRC21_CLASSES)


def test_msrc_colours_that_are_not_msrc_are_named(tmp_path: Path) -> None:
    release = tmp_path / "release"
    write_msrc(release)
    gt = np.asarray(Image.open(release / "GroundTruth/1_2_s_GT.bmp")).copy()
    gt[0, 0] = (1, 2, 3)  # what a JPEG-compressed mask would hold
    Image.fromarray(gt).save(release / "GroundTruth/1_2_s_GT.bmp")
    with pytest.raises(DatasetError, match=r"1_2_s_GT.bmp: 1 colour\(s\) .*\(1, 2, 3\)"):
        convert_msrc(release, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- ResNet-38 ---------------------------------------------------------------------------


def released_name(key: str) -> str:
    """The name a ResNet38d key has in the MXNet release, with its arg:/aux: prefix
    (written out here independently of the converter)."""
    module, param = key.rsplit(".", 1)
    if key == "conv1a.weight":
        return "arg:conv1a_weight"
    bn = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
          "running_var": "moving_var"}  # fmt: skip
    prefix = "aux:" if param.startswith("running") else "arg:"
    if module == "bn7":
        return f"{prefix}bn7_{bn[param]}"
    block, layer = module.split(".")
    stage, _, n = block[1:].partition("_")
    unit = f"b{n}" if n else "a"
    kind, branch = layer.split("_", 1)  # conv / bn, branch2a ...
    if kind == "conv":
        return f"arg:res{stage}{unit}_{branch}_weight"
    return f"{prefix}bn{stage}{unit}_{branch}_{bn[param]}"


def mxnet_array(array: np.ndarray, version: str) -> bytes:
    """One array as ``mx.nd.save`` writes it: ``legacy`` (before MXNet 0.12), ``v1``,
    ``v2``, ``v3``."""
    flag = {np.dtype("float32"): 0, np.dtype("float64"): 1, np.dtype("float16"): 2}[array.dtype]
    ndim = array.ndim
    if version == "legacy":
        head = struct.pack(f"<I{ndim}I", ndim, *array.shape)
    else:
        magic = {"v1": 0xF993FAC8, "v2": 0xF993FAC9, "v3": 0xF993FACA}[version]
        head = struct.pack("<I", magic)
        head += b"" if version == "v1" else struct.pack("<i", 0)  # dense storage
        head += struct.pack(f"<i{ndim}q", ndim, *array.shape)
    return head + struct.pack("<iii", 1, 0, flag) + array.astype(array.dtype, copy=False).tobytes()


def write_mxnet_params(path: Path, arrays: dict[str, np.ndarray], version: str) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<QQQ", 0x112, 0, len(arrays)))
        for array in arrays.values():
            f.write(mxnet_array(np.ascontiguousarray(array), version))
        f.write(struct.pack("<Q", len(arrays)))
        for name in arrays:
            f.write(struct.pack("<Q", len(name.encode())) + name.encode())


def test_mxnet_params_of_every_version_are_read(tmp_path: Path) -> None:
    arrays = {"arg:a_weight": np.arange(6, dtype=np.float32).reshape(2, 3),
              "aux:b_moving_var": np.array([1.5, 2.5], np.float64),
              "arg:c_gamma": np.ones((2, 1, 3, 3), np.float16)}  # fmt: skip
    for version in ("legacy", "v1", "v2", "v3"):
        path = tmp_path / f"{version}.params"
        write_mxnet_params(path, arrays, version)
        read = read_mxnet_params(path)
        assert list(read) == list(arrays)
        for name, array in arrays.items():
            assert read[name].dtype == array.dtype and np.array_equal(read[name], array)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DatasetError, match="truncated|arrays but"):
        read_mxnet_params(path)


def test_released_names_map_to_the_resnet38d_keys() -> None:
    assert resnet38d_key("arg:conv1a_weight") == "conv1a.weight"
    assert resnet38d_key("arg:res2a_branch1_weight") == "b2.conv_branch1.weight"
    assert resnet38d_key("arg:res4b5_branch2b1_weight") == "b4_5.conv_branch2b1.weight"
    assert resnet38d_key("aux:bn5b2_branch2a_moving_mean") == "b5_2.bn_branch2a.running_mean"
    assert resnet38d_key("arg:bn7a_branch2b2_gamma") == "b7.bn_branch2b2.weight"
    assert resnet38d_key("bn6a_branch2b1_beta") == "b6.bn_branch2b1.bias"  # no prefix
    assert resnet38d_key("aux:bn7_moving_var") == "bn7.running_var"
    assert resnet38d_key("arg:linear1000_weight") is None  # the ImageNet classifier
    assert resnet38d_key("b3_1.bn_branch2b1.weight") == "b3_1.bn_branch2b1.weight"  # PSA .pth
    with pytest.raises(ValueError, match="not a weight name"):
        resnet38d_key("arg:res9z_branch3_weight")


def test_the_released_resnet38_weights_become_a_loadable_state_dict(tmp_path: Path) -> None:
    """A full-size fixture in the MXNet release's format and naming (values distinct per
    weight, so a swapped pair would show), with its 1000-class classifier."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ResNet38d().state_dict().items()
                  if not k.endswith("num_batches_tracked")}  # fmt: skip
    expected, released = {}, {}
    for index, (key, shape) in enumerate(shapes.items()):
        count = int(np.prod(shape))
        values = (np.arange(count, dtype=np.float32) % 997) / 997 + index
        expected[key] = values.reshape(shape)
        released[released_name(key)] = expected[key]
    released["arg:linear1000_weight"] = np.zeros((1000, 4096), np.float32)
    released["arg:linear1000_bias"] = np.zeros(1000, np.float32)
    src = tmp_path / "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
    write_mxnet_params(src, released, "legacy")
    del released

    out = tmp_path / "weights/resnet38d_ilsvrc.pth"
    proc = wsss_cli("convert", "resnet38", "--src", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dropped the classifier ['arg:linear1000_weight', 'arg:linear1000_bias']" in (
        proc.stderr
    )
    state = torch.load(out, weights_only=True)
    assert set(state) == set(expected)
    for key, values in expected.items():
        assert np.array_equal(state[key].numpy(), values), key
    net = ResNet38d(output_stride=8)
    load_resnet38d_weights(net, out)  # what backbone: resnet38d does with the file
    assert torch.equal(net.b4_5.conv_branch2b1.weight, state["b4_5.conv_branch2b1.weight"])
    del state, net

    # A state dict already in these names (the PSA repository's .pth) passes unchanged;
    # an existing output is refused without --force.
    again = tmp_path / "again.pth"
    assert convert_resnet38(out, again) == {"weights": len(expected), "dropped": 0}
    with pytest.raises(ValueError, match="exists: give --force"):
        convert_resnet38(out, again)

    # A file that lacks a weight is refused, naming it.
    partial = {k: torch.from_numpy(v) for k, v in expected.items() if not k.startswith("b7.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(DatasetError, match=r"missing \(first: \['b7\."):
        convert_resnet38(tmp_path / "partial.pth", tmp_path / "p.pth")


def test_convert_flags_are_checked_per_conversion(tmp_path: Path) -> None:
    proc = wsss_cli("convert", "sbd", "--sbd", str(tmp_path))
    assert proc.returncode == 2 and "convert sbd needs --voc" in proc.stderr
    proc = wsss_cli("convert", "resnet38", "--src", "a", "--out", "b", "--voc", "c")
    assert proc.returncode == 2 and "takes no --voc" in proc.stderr
    proc = wsss_cli("convert", "coco")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
