"""Dataset loaders (VOC layout, COCO, custom folder) on tiny fixtures in their real formats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data import coco, folder, voc
from wsss.data.manifest import DatasetError, read_mask, validate
from wsss.data.palette import label_image

H, W = 12, 16  # fixture image size in pixels
MSRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "msrc21"


# ----------------------------------------------------------------------------- helpers


def write_jpeg(path: Path, height: int = H, width: int = W, seed: int = 0) -> None:
    """A real JPEG of random RGB noise, [height, width]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def write_mask(path: Path, labels: np.ndarray, mode: str = "P") -> None:
    """A label map as a VOC palette PNG ('P') or a greyscale PNG ('L')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = label_image(labels) if mode == "P" else Image.fromarray(labels.astype(np.uint8), "L")
    image.save(path, format="PNG")


def mask_with(
    values: dict[int, tuple[slice, slice]], height: int = H, width: int = W
) -> np.ndarray:
    """uint8 [height, width] zeros with ``value`` painted over each (rows, cols) block."""
    labels = np.zeros((height, width), dtype=np.uint8)
    for value, block in values.items():
        labels[block] = value
    return labels


def write_voc_xml(path: Path, image_id: str, names: list[str]) -> None:
    """A VOC annotation XML with one <object> per name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
        f"<ymax>5</ymax></bndbox></object>"
        for n in names
    )
    path.write_text(
        f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>{W}</width><height>{H}</height><depth>3</depth></size>"
        f"<segmented>0</segmented>{objects}</annotation>"
    )


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """VOC 2012 layout with 3 ids.

    - 2007_000001: SegmentationClass mask with cat (8) and dog (12) and a 255 border; its XML
      says cat + person; a different SBD mask also exists (must be ignored).
    - 2007_000002: XML only (person twice, chair).
    - 2008_000003: SBD greyscale mask only, bird (3); listed DeepLab-style in train_aug.
    """
    root = tmp_path / "VOC2012"
    for seed, image_id in enumerate(["2007_000001", "2007_000002", "2008_000003"]):
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", seed=seed)
    cat_dog = mask_with({8: (slice(0, 6), slice(0, 8)), 12: (slice(6, 12), slice(8, 16))})
    cat_dog[:, 0] = 255
    write_mask(root / "SegmentationClass" / "2007_000001.png", cat_dog)
    sbd_mask = mask_with({5: (slice(0, 2), slice(0, 2))})
    write_mask(root / "SegmentationClassAug" / "2007_000001.png", sbd_mask)
    write_mask(
        root / "SegmentationClassAug" / "2008_000003.png",
        mask_with({3: (slice(2, 9), slice(3, 11))}),
        mode="L",
    )
    write_voc_xml(root / "Annotations" / "2007_000001.xml", "2007_000001", ["cat", "person"])
    write_voc_xml(
        root / "Annotations" / "2007_000002.xml", "2007_000002", ["person", "chair", "person"]
    )
    sets = root / "ImageSets" / "Segmentation"
    write_lines(sets / "train.txt", ["2007_000001", "", "2007_000002"])
    write_lines(sets / "val.txt", ["2007_000001"])
    write_lines(
        sets / "train_aug.txt",
        ["2007_000001", "/JPEGImages/2008_000003.jpg /SegmentationClassAug/2008_000003.png"],
    )
    return root


def by_id(records: list) -> dict:
    return {r.id: r for r in records}


# ----------------------------------------------------------------------------- VOC


def test_voc_classes_splits_and_labels(voc_root: Path) -> None:
    m = voc.build(voc_root)
    assert m.classes == voc.VOC_CLASSES
    assert len(m.classes) == 20 and m.classes[7] == "cat" and m.classes[11] == "dog"
    assert m.has_background and m.num_labels == 21
    assert sorted(m.splits) == ["train", "train_aug", "val"]
    assert [r.id for r in m.split("train")] == ["2007_000001", "2007_000002"]
    assert [r.id for r in m.split("train_aug")] == ["2007_000001", "2008_000003"]
    recs = by_id(m.split("train") + m.split("train_aug"))
    assert recs["2007_000001"].labels == (7, 11)  # from the mask, not the XML
    assert recs["2007_000001"].mask == str(voc_root / "SegmentationClass" / "2007_000001.png")
    assert recs["2007_000002"].labels == (8, 14)  # XML fallback: chair, person
    assert recs["2007_000002"].mask is None
    assert recs["2008_000003"].labels == (2,)
    assert recs["2008_000003"].mask == str(voc_root / "SegmentationClassAug" / "2008_000003.png")
    for rec in recs.values():
        assert Path(rec.image).is_absolute() and rec.size is None
        assert rec.image == str(voc_root / "JPEGImages" / f"{rec.id}.jpg")


def test_voc_validate_passes_and_fills_sizes(voc_root: Path) -> None:
    m = validate(voc.build(voc_root), ["train", "val", "train_aug"])
    assert {r.size for s in m.splits.values() for r in s} == {(H, W)}
    assert np.unique(read_mask(m.split("train_aug")[1].mask)).tolist() == [0, 3]


def test_voc_relative_root_gives_absolute_paths(voc_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(voc_root.parent)
    rec = voc.build("VOC2012").split("val")[0]
    assert rec.image == str(voc_root / "JPEGImages" / "2007_000001.jpg")


def test_voc_xml_label_source(voc_root: Path) -> None:
    (voc_root / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    m = voc.build(voc_root, label_source="xml")
    recs = by_id(m.split("train"))
    assert recs["2007_000001"].labels == (7, 14)  # cat, person from the XML
    assert recs["2007_000001"].mask is not None  # the mask is still used for evaluation
    assert recs["2007_000002"].labels == (8, 14)


def test_voc_xml_source_without_xml_names_id_and_file(voc_root: Path) -> None:
    with pytest.raises(DatasetError) as err:
        voc.build(voc_root, label_source="xml")
    assert "2008_000003" in str(err.value)
    assert str(voc_root / "Annotations" / "2008_000003.xml") in str(err.value)


def test_voc_no_mask_and_no_xml_names_files(voc_root: Path) -> None:
    write_lines(voc_root / "ImageSets" / "Segmentation" / "test.txt", ["2009_000009"])
    with pytest.raises(DatasetError) as err:
        voc.build(voc_root)
    message = str(err.value)
    assert "2009_000009" in message
    looked = [
        "SegmentationClass/2009_000009.png",
        "SegmentationClassAug/2009_000009.png",
        "Annotations/2009_000009.xml",
    ]
    for relative in looked:
        assert str(voc_root / relative) in message


def test_voc_xml_unknown_class_names_xml(voc_root: Path) -> None:
    xml = voc_root / "Annotations" / "2007_000002.xml"
    write_voc_xml(xml, "2007_000002", ["person", "unicorn"])
    with pytest.raises(DatasetError) as err:
        voc.build(voc_root)
    assert str(xml) in str(err.value) and "unicorn" in str(err.value)


def test_voc_malformed_xml_names_xml(voc_root: Path) -> None:
    xml = voc_root / "Annotations" / "2007_000002.xml"
    xml.write_text("<annotation><object><name>cat</name>")
    with pytest.raises(DatasetError, match="2007_000002.xml"):
        voc.build(voc_root)


def test_voc_bad_label_source(voc_root: Path) -> None:
    with pytest.raises(ValueError, match="label_source"):
        voc.build(voc_root, label_source="boxes")


def test_voc_without_split_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Segmentation"):
        voc.build(tmp_path)


def test_voc_empty_split_file(voc_root: Path) -> None:
    write_lines(voc_root / "ImageSets" / "Segmentation" / "test.txt", ["", "  "])
    m = voc.build(voc_root)
    assert m.splits["test"] == []
    with pytest.raises(DatasetError, match="'test' is empty"):
        m.split("test")
    with pytest.raises(DatasetError, match="'test' is empty"):
        validate(m, ["test"])


def test_voc_missing_image_fails_at_validate(voc_root: Path) -> None:
    image = voc_root / "JPEGImages" / "2008_000003.jpg"
    image.unlink()
    m = voc.build(voc_root)  # labels come from the mask: building works
    validate(m, ["train", "val"])
    with pytest.raises(DatasetError) as err:
        validate(m, ["train_aug"])
    assert str(image) in str(err.value)


def test_voc_corrupt_jpeg_fails_at_validate(voc_root: Path) -> None:
    image = voc_root / "JPEGImages" / "2007_000002.jpg"
    write_jpeg(image, 64, 64, seed=5)
    image.write_bytes(image.read_bytes()[:400])
    m = voc.build(voc_root)
    with pytest.raises(DatasetError) as err:
        validate(m, ["train"])
    assert str(image) in str(err.value)


def test_voc_mask_size_mismatch_fails_at_validate(voc_root: Path) -> None:
    mask = voc_root / "SegmentationClass" / "2007_000001.png"
    write_mask(mask, mask_with({8: (slice(0, 3), slice(0, 3))}, height=H + 1))
    m = voc.build(voc_root)
    with pytest.raises(DatasetError) as err:
        validate(m, ["val"], check_pixels=False)
    assert str(mask) in str(err.value) and "differs" in str(err.value)


def test_voc_layout_without_background(tmp_path: Path) -> None:
    """MSRC-style: classes.txt, mask values are the classes themselves, 255 ignored."""
    root = tmp_path / "msrc"
    write_lines(root / "classes.txt", ["building", "grass", "tree", ""])
    write_jpeg(root / "JPEGImages" / "1_1_s.jpg")
    labels = mask_with({2: (slice(0, 4), slice(0, 16)), 255: (slice(4, 6), slice(0, 16))})
    write_mask(root / "SegmentationClass" / "1_1_s.png", labels)
    write_lines(root / "ImageSets" / "Segmentation" / "train.txt", ["1_1_s"])
    m = validate(voc.build(root, has_background=False, name="msrc"), ["train"])
    assert m.name == "msrc" and m.classes == ("building", "grass", "tree")
    assert not m.has_background and m.num_labels == 3
    assert m.split("train")[0].labels == (0, 2)  # building (value 0) and tree (value 2)


@pytest.mark.skipif(not MSRC.is_dir(), reason="MSRC-21 not available")
def test_voc_on_msrc21() -> None:
    m = voc.build(MSRC, has_background=False, name="msrc21")
    assert len(m.classes) == 21 and m.classes[0] == "building"
    assert len(m.split("train")) == 354 and len(m.split("val")) == 88
    validate(m, ["train", "val"], check_pixels=False)
    assert all(r.mask is not None and r.labels for r in m.split("train"))


# ----------------------------------------------------------------------------- COCO


def rle_counts(binary: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a binary [H, W] mask (column-major, zeros first)."""
    flat = binary.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return counts if flat[0] == 0 else [0] + counts


COCO_H, COCO_W = 20, 30  # COCO fixture image size in pixels


def coco_json(file_names: list[str]) -> dict:
    """An instances JSON: categories 18 dog, 1 person, 3 car (unsorted, with gaps).

    Image 1 (file_names[0]): a small car (uncompressed RLE, rows 5-8, cols 5-9) listed before
    a large person polygon (x 2..22, y 2..16) that contains it, and a crowd of dogs (rows
    0-2, cols 24-29). Image 2: no annotations. Image 3: a dog as compressed RLE (rows 10-14,
    cols 0-5).
    """
    from pycocotools import mask as mask_utils

    car = np.zeros((COCO_H, COCO_W), dtype=np.uint8)
    car[5:9, 5:10] = 1
    crowd = np.zeros_like(car)
    crowd[0:3, 24:30] = 1
    dog = np.zeros_like(car)
    dog[10:15, 0:6] = 1
    dog_rle = mask_utils.encode(np.asfortranarray(dog))
    size = [COCO_H, COCO_W]
    images = [
        {"id": i + 1, "file_name": f, "height": COCO_H, "width": COCO_W}
        for i, f in enumerate(file_names)
    ]
    annotations = [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 3,
            "iscrowd": 0,
            "segmentation": {"counts": rle_counts(car), "size": size},
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": [[2, 2, 22, 2, 22, 16, 2, 16]],
        },
        {
            "id": 12,
            "image_id": 1,
            "category_id": 18,
            "iscrowd": 1,
            "segmentation": {"counts": rle_counts(crowd), "size": size},
        },
        {
            "id": 13,
            "image_id": 3,
            "category_id": 18,
            "iscrowd": 0,
            "segmentation": {"counts": dog_rle["counts"].decode(), "size": size},
        },
    ]
    categories = [
        {"id": 18, "name": "dog", "supercategory": "animal"},
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 3, "name": "car", "supercategory": "vehicle"},
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_files(split: str, year: int = 2014) -> list[str]:
    return [f"COCO_{split}{year}_{i:012d}.jpg" for i in (1, 2, 3)]


def write_coco(root: Path) -> Path:
    """COCO layout under ``root`` with train2014 and val2014, both built from
    :func:`coco_json`."""
    for split in ("train", "val"):
        names = coco_files(split)
        for name in names:
            write_jpeg(root / f"{split}2014" / name, COCO_H, COCO_W)
        path = root / "annotations" / f"instances_{split}2014.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(coco_json(names)))
    return root


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return write_coco(tmp_path / "coco")


def test_coco_classes_and_labels(coco_root: Path, tmp_path: Path) -> None:
    m = coco.build(coco_root, tmp_path / "masks")
    assert m.classes == ("person", "car", "dog") and m.has_background
    assert sorted(m.splits) == ["train", "val"]
    train = m.split("train")
    # image 2 has no annotations: left out
    assert [r.id for r in train] == ["COCO_train2014_000000000001", "COCO_train2014_000000000003"]
    assert train[0].labels == (0, 1, 2)  # person, car, dog (crowd)
    assert train[1].labels == (2,)
    assert train[0].image == str(coco_root / "train2014" / "COCO_train2014_000000000001.jpg")
    assert train[0].mask == str(tmp_path / "masks" / "train" / "COCO_train2014_000000000001.png")
    assert not (tmp_path / "masks" / "train" / "COCO_train2014_000000000002.png").exists()
    validate(m, ["train", "val"])


def test_coco_mask_pixels(coco_root: Path, tmp_path: Path) -> None:
    m = coco.build(coco_root, tmp_path / "masks", splits=("train",))
    first, third = (read_mask(r.mask) for r in m.split("train"))
    assert Image.open(m.split("train")[0].mask).mode == "P"
    assert first.shape == (COCO_H, COCO_W)
    assert first[10, 12] == 1  # person polygon interior
    assert (first[5:9, 5:10] == 2).all()  # the smaller car stays on top of the person
    assert (first[0:3, 24:30] == 255).all()  # crowd is ignored
    assert first[18, 28] == 0 and first[19, 0] == 0  # background
    assert set(np.unique(first).tolist()) == {0, 1, 2, 255}
    assert (third[10:15, 0:6] == 3).all()  # compressed RLE dog
    assert int((third == 3).sum()) == 30 and int((third == 0).sum()) == COCO_H * COCO_W - 30


def test_coco_masks_not_rewritten_unless_json_newer(coco_root: Path, tmp_path: Path) -> None:
    coco.build(coco_root, tmp_path / "masks", splits=("train",))
    mask = tmp_path / "masks" / "train" / "COCO_train2014_000000000003.png"
    mask.write_bytes(b"stale")  # a rerun must not touch a mask newer than the JSON
    coco.build(coco_root, tmp_path / "masks", splits=("train",))
    assert mask.read_bytes() == b"stale"
    newer = mask.stat().st_mtime + 10
    os.utime(coco_root / "annotations" / "instances_train2014.json", (newer, newer))
    coco.build(coco_root, tmp_path / "masks", splits=("train",))
    assert (read_mask(mask) == 3).sum() == 30


def test_coco_missing_json(coco_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        coco.build(coco_root, tmp_path / "masks", year=2017)
    assert str(coco_root / "annotations" / "instances_train2017.json") in str(err.value)


@pytest.mark.parametrize(
    ("drop", "key"),
    [("categories", "categories"), ("segmentation", "segmentation"), ("height", "height")],
)
def test_coco_malformed_json_names_file_and_key(
    coco_root: Path, tmp_path: Path, drop: str, key: str
) -> None:
    path = coco_root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    if drop == "categories":
        del data["categories"]
    elif drop == "segmentation":
        del data["annotations"][1]["segmentation"]
    else:
        del data["images"][0]["height"]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as err:
        coco.build(coco_root, tmp_path / "masks")
    assert str(path) in str(err.value) and f"'{key}'" in str(err.value)


def test_coco_invalid_json_and_unknown_category(coco_root: Path, tmp_path: Path) -> None:
    path = coco_root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="instances_train2014.json"):
        coco.build(coco_root, tmp_path / "masks")
    data["annotations"][3]["category_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="unknown category 99"):
        coco.build(coco_root, tmp_path / "masks")


# ----------------------------------------------------------------------------- folder


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """images a.jpg (cat;dog, train, with mask), b.png (no labels, val), c.jpg (dog)."""
    root = tmp_path / "shapes"
    write_jpeg(root / "images" / "a.jpg")
    Image.new("RGB", (W, H), (10, 200, 30)).save(root / "images" / "b.png")
    write_jpeg(root / "images" / "c.jpg", seed=3)
    write_mask(root / "masks" / "a.png", mask_with({1: (slice(0, 4),) * 2, 2: (slice(6, 9),) * 2}))
    rows = ["image,labels,split", "a.jpg,cat; dog,train", "b.png,,val", "c.jpg,dog,"]
    write_lines(root / "labels.csv", rows)
    return root


def test_folder_labels_splits_and_masks(folder_root: Path) -> None:
    m = folder.build(folder_root)
    assert m.classes == ("cat", "dog") and m.has_background and m.name == "folder"
    assert sorted(m.splits) == ["train", "val"]
    train = by_id(m.split("train"))
    assert sorted(train) == ["a", "c"]
    assert train["a"].labels == (0, 1) and train["c"].labels == (1,)
    assert train["a"].image == str(folder_root / "images" / "a.jpg")
    assert train["a"].mask == str(folder_root / "masks" / "a.png")
    assert train["c"].mask is None
    assert m.split("val")[0].labels == () and m.split("val")[0].image.endswith("b.png")
    validate(m, ["train", "val"])


def test_folder_class_list_sources(folder_root: Path) -> None:
    m = folder.build(folder_root, classes=["dog", "bird", "cat"])
    assert m.classes == ("dog", "bird", "cat")
    assert by_id(m.split("train"))["a"].labels == (0, 2)
    (folder_root / "classes.txt").write_text("horse\ndog\ncat\n")
    m = folder.build(folder_root, has_background=False)
    assert m.classes == ("horse", "dog", "cat") and not m.has_background
    assert by_id(m.split("train"))["c"].labels == (1,)


def test_folder_without_split_column(folder_root: Path) -> None:
    (folder_root / "other.csv").write_text("labels,image\ndog,c.jpg\ncat,a.jpg\n")
    m = folder.build(folder_root, csv="other.csv")
    assert list(m.splits) == ["train"] and [r.id for r in m.split("train")] == ["c", "a"]


def test_folder_unknown_label_names_csv_line_and_label(folder_root: Path) -> None:
    (folder_root / "classes.txt").write_text("cat\n")
    with pytest.raises(DatasetError) as err:
        folder.build(folder_root)
    message = str(err.value)
    assert f"{folder_root / 'labels.csv'}:2" in message and "'dog'" in message


def test_folder_missing_column(folder_root: Path) -> None:
    (folder_root / "labels.csv").write_text("image,tags\na.jpg,cat\n")
    with pytest.raises(DatasetError) as err:
        folder.build(folder_root)
    assert str(folder_root / "labels.csv") in str(err.value) and "'labels'" in str(err.value)


def test_folder_duplicate_rows(folder_root: Path) -> None:
    (folder_root / "labels.csv").write_text("image,labels\na.jpg,cat\nc.jpg,dog\na.jpg,dog\n")
    with pytest.raises(DatasetError) as err:
        folder.build(folder_root)
    assert f"{folder_root / 'labels.csv'}:4" in str(err.value) and "line 2" in str(err.value)


def test_folder_missing_csv(folder_root: Path) -> None:
    with pytest.raises(DatasetError, match="nope.csv"):
        folder.build(folder_root, csv="nope.csv")
