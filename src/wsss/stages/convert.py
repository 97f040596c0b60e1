"""``wsss convert``: public releases into what the toolkit reads.

``wsss convert sbd --sbd SBD --voc VOC2012``
    The Semantic Boundaries Dataset's class masks (``cls/<id>.mat``: MATLAB files holding a
    struct ``GTcls`` whose field ``Segmentation`` is a uint8 label map, 0 background, 1-20 the
    VOC classes) become palette PNGs ``VOC2012/SegmentationClassAug/<id>.png``, and
    ``VOC2012/ImageSets/Segmentation/train_aug.txt`` lists the usual augmented training
    set: SBD train and val, and VOC train, less VOC val (10,582 images with VOC 2012).
    ``--sbd`` is SBD's ``benchmark_RELEASE`` folder or its ``dataset/`` folder (``cls/``,
    ``train.txt``, ``val.txt``). Reading MATLAB files needs scipy (``pip install
    'wsss[convert]'``).

``wsss convert msrc --release MSRC_ObjCategImageDatabase_v2 --out msrc21``
    The MSRC-v2 release (``Images/<id>.bmp``, ``GroundTruth/<id>_GT.bmp`` coloured masks)
    becomes the VOC layout of ``dataset.kind: msrc``: ``JPEGImages/<id>.jpg``,
    ``SegmentationClass/<id>.png`` (palette PNGs), ``ImageSets/Segmentation/*.txt`` and
    ``classes.txt``, under the 21-class protocol: no background class, the 21 classes in
    :data:`MSRC21_CLASSES` order as values 0-20, and horse, mountain and void (black) as 255.
    The splits are the TextonBoost split files of ``--splits`` (``Train.txt``,
    ``Validation.txt``, ``Test.txt``: train, val, test) where given, else a seeded random
    split (``--val-fraction`` of the images in val, the rest in train).

``wsss convert resnet38 --src FILE --out weights/resnet38d_ilsvrc.pth``
    The ImageNet weights of the wide ResNet-38 ("model A1" of Wu, Shen & van den Hengel,
    the backbone of AffinityNet and its successors) as released with MXNet
    (``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``, read here without MXNet), or a PyTorch
    state dict of them (the PSA repository's converted ``.pth``, or any file with the
    released names), become the state dict that ``cam.train.backbone: resnet38d`` loads
    (:mod:`wsss.models.resnet38d` names). The 1000-class classifier is dropped; every
    backbone weight must be there with its shape.

Every output is written under a temporary name and renamed when complete; existing
outputs are refused unless ``--force``.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsss.core.stage import Stage, arg

log = logging.getLogger(__name__)

WHATS = ("sbd", "msrc", "resnet38")
# Which flags each conversion needs, and may take.
NEEDS = {"sbd": ("sbd", "voc"), "msrc": ("release", "out"), "resnet38": ("src", "out")}
TAKES = {"sbd": (), "msrc": ("splits",), "resnet38": ()}

# MSRC-v2's colour of each of its 23 classes and void; the 21-class protocol drops horse
# and mountain (255 in the masks, like void).
MSRC_COLOURS = {
    "void": (0, 0, 0),
    "building": (128, 0, 0),
    "grass": (0, 128, 0),
    "tree": (128, 128, 0),
    "cow": (0, 0, 128),
    "horse": (128, 0, 128),
    "sheep": (0, 128, 128),
    "sky": (128, 128, 128),
    "mountain": (64, 0, 0),
    "aeroplane": (192, 0, 0),
    "water": (64, 128, 0),
    "face": (192, 128, 0),
    "car": (64, 0, 128),
    "bicycle": (192, 0, 128),
    "flower": (64, 128, 128),
    "sign": (192, 128, 128),
    "bird": (0, 64, 0),
    "book": (128, 64, 0),
    "chair": (0, 192, 0),
    "road": (128, 64, 128),
    "cat": (0, 192, 128),
    "dog": (128, 192, 128),
    "body": (64, 64, 0),
    "boat": (192, 64, 0),
}
MSRC_IGNORED = ("void", "horse", "mountain")
MSRC21_CLASSES = tuple(name for name in MSRC_COLOURS if name not in MSRC_IGNORED)
TEXTONBOOST_SPLITS = {"train": "Train.txt", "val": "Validation.txt", "test": "Test.txt"}
SBD_NUM_CLASSES = 20


@dataclass(frozen=True, kw_only=True)
class IO:
    what: str = arg(help="what to convert", choices=WHATS, positional=True)
    sbd: Path | None = arg(None, "sbd: SBD's benchmark_RELEASE folder (or its dataset/)")
    voc: Path | None = arg(
        None, "sbd: the VOC2012 folder that gets SegmentationClassAug/ and train_aug.txt"
    )
    release: Path | None = arg(None, "msrc: the MSRC-v2 folder (Images/, GroundTruth/)")
    splits: Path | None = arg(
        None, "msrc: folder of TextonBoost's Train.txt, Validation.txt, Test.txt"
    )
    val_fraction: float = arg(0.2, "msrc without --splits: share of the images in val")
    seed: int = arg(0, "msrc without --splits: seed of the random split")
    src: Path | None = arg(None, "resnet38: the released weights (.params or .pth)")
    out: Path | None = arg(None, "msrc: the folder to write; resnet38: the file to write")
    force: bool = arg(False, "replace existing outputs")


# --------------------------------------------------------------------------- helpers


def _refuse_existing(path: Path, force: bool) -> None:
    if force or not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    raise ValueError(f"{path} exists: give --force to replace it")


def _read_list(path: Path) -> list[str]:
    """The ids of a list file, one a line (``id`` or ``id.ext``), blank lines skipped."""
    from wsss.data.manifest import DatasetError

    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read the list ({err})") from err
    return [Path(line.split()[0]).stem for line in lines if line.strip()]


def _write_lines(path: Path, lines: list[str]) -> None:
    from wsss.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))


# --------------------------------------------------------------------------- SBD


def read_sbd_mat(path: Path) -> Any:
    """The label map (uint8 [H, W]) of an SBD ``cls/<id>.mat`` file."""
    import numpy as np

    from wsss.core.errors import MissingDependency
    from wsss.data.manifest import DatasetError

    try:
        import scipy.io
    except ImportError:
        raise MissingDependency(
            "reading SBD's MATLAB files needs scipy, which is not installed: "
            "pip install 'wsss[convert]' (or pip install scipy)"
        ) from None
    try:
        data = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises several types for a bad file
        raise DatasetError(f"{path}: not a readable MATLAB file ({err})") from err
    gt = data.get("GTcls")
    seg = getattr(gt, "Segmentation", None)
    if seg is None:
        raise DatasetError(f"{path}: no struct GTcls with a field Segmentation (not SBD cls/)")
    seg = np.asarray(seg)
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise DatasetError(
            f"{path}: GTcls.Segmentation is {seg.dtype} {seg.shape}, not a label map"
        )
    bad = sorted(set(np.unique(seg).tolist()) - set(range(SBD_NUM_CLASSES + 1)) - {255})
    if bad:
        raise DatasetError(f"{path}: values {bad[:10]} are not VOC labels (0-20, 255)")
    return seg.astype(np.uint8)


def convert_sbd(sbd: Path, voc: Path, force: bool = False) -> dict[str, int]:
    """SBD's ``cls/*.mat`` into ``voc/SegmentationClassAug/*.png`` and
    ``voc/ImageSets/Segmentation/train_aug.txt``; returns counts."""
    from wsss.core.atomic import atomic_dir
    from wsss.data.manifest import DatasetError
    from wsss.data.palette import label_image

    root = sbd if (sbd / "cls").is_dir() else sbd / "dataset"
    if not (root / "cls").is_dir():
        raise DatasetError(
            f"{sbd}: neither cls/ nor dataset/cls/ is there: give SBD's benchmark_RELEASE folder"
        )
    sbd_ids = {split: _read_list(root / f"{split}.txt") for split in ("train", "val")}
    sets = voc / "ImageSets" / "Segmentation"
    voc_ids = {split: _read_list(sets / f"{split}.txt") for split in ("train", "val")}
    if not (voc / "JPEGImages").is_dir():
        raise DatasetError(f"{voc}: no JPEGImages/ folder: give the VOC2012 folder")
    mats = sorted((root / "cls").glob("*.mat"))
    have = {m.stem for m in mats}
    listed = set(sbd_ids["train"]) | set(sbd_ids["val"])
    missing = sorted(listed - have)
    if missing:
        raise DatasetError(
            f"{root / 'cls'}: {len(missing)} ids of train.txt / val.txt have no .mat file "
            f"(first: {missing[:5]})"
        )
    train_aug = sorted((listed | set(voc_ids["train"])) - set(voc_ids["val"]))
    no_image = [i for i in train_aug if not (voc / "JPEGImages" / f"{i}.jpg").is_file()]
    if no_image:
        raise DatasetError(
            f"{voc / 'JPEGImages'}: {len(no_image)} images of train_aug are missing "
            f"(first: {no_image[:5]}); is {voc} VOC 2012?"
        )
    out_dir, list_file = voc / "SegmentationClassAug", sets / "train_aug.txt"
    _refuse_existing(out_dir, force)
    _refuse_existing(list_file, force)
    with atomic_dir(out_dir) as tmp:
        for number, mat in enumerate(mats, 1):
            label_image(read_sbd_mat(mat)).save(tmp / f"{mat.stem}.png")
            if number % 1000 == 0:
                log.info("SBD: %d / %d masks", number, len(mats))
    _write_lines(list_file, train_aug)
    log.info(
        "SBD: %d masks in %s; %d ids in %s (SBD train %d + val %d + VOC train %d, less VOC val)",
        len(mats), out_dir, len(train_aug), list_file,
        len(sbd_ids["train"]), len(sbd_ids["val"]), len(voc_ids["train"]),
    )  # fmt: skip
    return {"masks": len(mats), "train_aug": len(train_aug)}


# --------------------------------------------------------------------------- MSRC


def msrc_labels(rgb: Any, source: Path) -> Any:
    """An MSRC-v2 colour mask [H, W, 3] -> uint8 labels of the 21-class protocol."""
    import numpy as np

    from wsss.data.manifest import DatasetError

    lookup = {}
    for name, (r, g, b) in MSRC_COLOURS.items():
        lookup[(r << 16) | (g << 8) | b] = (
            255 if name in MSRC_IGNORED else MSRC21_CLASSES.index(name)
        )
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8)
    codes |= rgb[..., 2].astype(np.int64)
    values, inverse = np.unique(codes, return_inverse=True)
    unknown = [v for v in values.tolist() if v not in lookup]
    if unknown:
        colours = [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in unknown[:5]]
        raise DatasetError(
            f"{source}: {len(unknown)} colour(s) that are no MSRC-v2 class colour "
            f"(first: {colours}); is it an original GroundTruth bitmap?"
        )
    table = np.array([lookup[v] for v in values.tolist()], dtype=np.uint8)
    return table[inverse.reshape(codes.shape)]


def _msrc_splits(
    ids: list[str], splits: Path | None, val_fraction: float, seed: int
) -> dict[str, list[str]]:
    import random

    from wsss.data.manifest import DatasetError

    if splits is not None:
        out = {}
        for split, name in TEXTONBOOST_SPLITS.items():
            listed = _read_list(splits / name)
            unknown = sorted(set(listed) - set(ids))
            if unknown:
                raise DatasetError(
                    f"{splits / name}: {len(unknown)} ids are not images of the release "
                    f"(first: {unknown[:5]})"
                )
            out[split] = listed
        return out
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction {val_fraction}: must be between 0 and 1")
    shuffled = sorted(ids)
    random.Random(seed).shuffle(shuffled)
    n_val = max(1, round(val_fraction * len(shuffled)))
    return {"train": sorted(shuffled[n_val:]), "val": sorted(shuffled[:n_val])}


def convert_msrc(
    release: Path,
    out: Path,
    splits: Path | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    force: bool = False,
) -> dict[str, int]:
    """The MSRC-v2 release into the VOC layout of ``dataset.kind: msrc``; returns the
    number of images of each split."""
    import numpy as np
    from PIL import Image

    from wsss.core.atomic import atomic_dir
    from wsss.data.manifest import DatasetError
    from wsss.data.palette import label_image

    images_dir, gt_dir = release / "Images", release / "GroundTruth"
    for folder in (images_dir, gt_dir):
        if not folder.is_dir():
            raise DatasetError(f"{release}: no {folder.name}/ folder: not the MSRC-v2 release")
    bitmaps = sorted(images_dir.glob("*.bmp"))
    if not bitmaps:
        raise DatasetError(f"{images_dir}: no .bmp images")
    ids = [b.stem for b in bitmaps]
    split_ids = _msrc_splits(ids, splits, val_fraction, seed)
    _refuse_existing(out, force)
    without_class = []
    with atomic_dir(out) as tmp:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        for bitmap in bitmaps:
            gt_path = gt_dir / f"{bitmap.stem}_GT.bmp"
            if not gt_path.is_file():
                raise DatasetError(f"{gt_path}: the ground truth of {bitmap.name} is missing")
            try:
                with Image.open(bitmap) as img, Image.open(gt_path) as gt:
                    rgb, gt_rgb = img.convert("RGB"), np.asarray(gt.convert("RGB"))
            except OSError as err:
                raise DatasetError(f"{bitmap} or {gt_path}: unreadable ({err})") from err
            if gt_rgb.shape[:2] != (rgb.height, rgb.width):
                raise DatasetError(
                    f"{gt_path}: {gt_rgb.shape[1]}x{gt_rgb.shape[0]}, its image "
                    f"{rgb.width}x{rgb.height}"
                )
            labels = msrc_labels(gt_rgb, gt_path)
            if not (labels != 255).any():
                without_class.append(bitmap.stem)
            rgb.save(tmp / "JPEGImages" / f"{bitmap.stem}.jpg", quality=95, subsampling=0)
            label_image(labels).save(tmp / "SegmentationClass" / f"{bitmap.stem}.png")
        for split, members in split_ids.items():
            (tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text(
                "".join(f"{i}\n" for i in members)
            )
        (tmp / "classes.txt").write_text("".join(f"{c}\n" for c in MSRC21_CLASSES))
    if without_class:
        log.warning(
            "MSRC: %d images have no pixel of the 21 classes (only horse, mountain or void): %s",
            len(without_class),
            without_class[:10],
        )
    counts = {split: len(members) for split, members in split_ids.items()}
    log.info("MSRC: %d images into %s (%s)", len(ids), out, counts)
    return counts


# --------------------------------------------------------------------------- ResNet-38

_LIST_MAGIC = 0x112
_V1, _V2, _V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
_MX_DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8"}


def read_mxnet_params(path: Path) -> dict[str, Any]:
    """The named arrays of an MXNet ``.params`` file (``mx.nd.save``'s format: every
    version, dense arrays), as numpy arrays, without MXNet."""
    import numpy as np

    from wsss.data.manifest import DatasetError

    data = memoryview(Path(path).read_bytes())
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise DatasetError(f"{path}: truncated MXNet file (at byte {pos})")
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    def array() -> Any:
        nonlocal pos
        (first,) = take("<I")
        if first in (_V2, _V3):
            (stype,) = take("<i")
            if stype != 0:
                raise DatasetError(f"{path}: sparse arrays are not supported")
        if first in (_V1, _V2, _V3):
            (ndim,) = take("<i")
            shape = take(f"<{max(ndim, 0)}q")
        else:  # before MXNet 0.12: no magic, 32-bit dimensions
            ndim = first
            shape = take(f"<{ndim}I")
        if ndim <= 0:
            return None
        take("<ii")  # device type and id
        (flag,) = take("<i")
        if flag not in _MX_DTYPES:
            raise DatasetError(f"{path}: unknown MXNet data type {flag}")
        dtype = np.dtype(_MX_DTYPES[flag])
        count = int(np.prod(shape))
        end = pos + count * dtype.itemsize
        if end > len(data):
            raise DatasetError(f"{path}: truncated MXNet file (at byte {pos})")
        values = np.frombuffer(data[pos:end], dtype=dtype).reshape(shape).copy()
        pos = end
        return values

    magic, _ = take("<QQ")
    if magic != _LIST_MAGIC:
        raise DatasetError(f"{path}: not an MXNet .params file")
    (count,) = take("<Q")
    arrays = [array() for _ in range(count)]
    (n_names,) = take("<Q")
    names = []
    for _ in range(n_names):
        (length,) = take("<Q")
        names.append(bytes(data[pos : pos + length]).decode())
        pos += length
    if len(names) != len(arrays):
        raise DatasetError(f"{path}: {len(arrays)} arrays but {len(names)} names")
    return {n: a for n, a in zip(names, arrays) if a is not None}


_RELEASED = re.compile(
    r"^(?P<kind>res|bn)(?P<stage>[2-7])(?P<unit>a|b(?P<n>\d+))_branch(?P<branch>1|2a|2b1|2b2)"
    r"_(?P<param>weight|gamma|beta|moving_mean|moving_var)$"
)
_BN_PARAM = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_var": "running_var",
}


def resnet38d_key(name: str) -> str | None:
    """The :class:`~wsss.models.resnet38d.ResNet38d` state-dict key of a released weight
    name (``arg:res2b1_branch2a_weight`` -> ``b2_1.conv_branch2a.weight``,
    ``aux:bn7_moving_var`` -> ``bn7.running_var``); None for the ImageNet classifier
    (``linear1000``, ``fc8``); a name already in that naming is kept. A ValueError for a
    name that is none of these."""
    bare = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
    if bare.startswith(("linear1000", "fc8", "fc1000")):
        return None
    if bare == "conv1a_weight":
        return "conv1a.weight"
    if bare.startswith("bn7_") and bare[4:] in _BN_PARAM:
        return f"bn7.{_BN_PARAM[bare[4:]]}"
    m = _RELEASED.match(bare)
    if m:
        block = f"b{m['stage']}" + (f"_{m['n']}" if m["n"] else "")
        if m["kind"] == "res":
            if m["param"] != "weight":
                raise ValueError(f"{name}: a convolution holds only a weight")
            return f"{block}.conv_branch{m['branch']}.weight"
        if m["param"] == "weight":
            raise ValueError(f"{name}: a batch norm holds gamma, beta, moving_mean, moving_var")
        return f"{block}.bn_branch{m['branch']}.{_BN_PARAM[m['param']]}"
    if re.match(r"^(conv1a|b[2-7](_\d+)?|bn7)\.", bare):
        return bare
    raise ValueError(f"{name}: not a weight name of the released ResNet-38")


def convert_resnet38(src: Path, out: Path, force: bool = False) -> dict[str, int]:
    """The released ResNet-38 ImageNet weights (MXNet ``.params`` or a state dict) into
    the state dict :func:`~wsss.models.resnet38d.load_resnet38d_weights` loads."""
    import numpy as np
    import torch

    from wsss.core.atomic import save_torch
    from wsss.data.manifest import DatasetError
    from wsss.models.resnet38d import ResNet38d

    _refuse_existing(out, force)
    if not src.is_file():
        raise FileNotFoundError(2, "No such file", str(src))
    with open(src, "rb") as f:
        head = f.read(8)
    if len(head) == 8 and struct.unpack("<Q", head)[0] == _LIST_MAGIC:
        released = {k: torch.from_numpy(v) for k, v in read_mxnet_params(src).items()}
    else:
        try:
            released = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a bad file
            raise DatasetError(
                f"{src}: neither an MXNet .params file nor a readable PyTorch state dict "
                f"({type(err).__name__})"
            ) from err
        if isinstance(released, dict) and isinstance(released.get("state_dict"), dict):
            released = released["state_dict"]
        if not isinstance(released, dict):
            raise DatasetError(f"{src}: holds a {type(released).__name__}, not a state dict")
    state, dropped = {}, []
    for name, value in released.items():
        try:
            key = resnet38d_key(str(name))
        except ValueError as err:
            raise DatasetError(f"{src}: {err}") from None
        if key is None:
            dropped.append(str(name))
            continue
        if key.endswith(".num_batches_tracked"):
            continue  # a counter of training steps, not a weight
        if key in state:
            raise DatasetError(f"{src}: two weights map to {key}")
        state[key] = value if torch.is_tensor(value) else torch.as_tensor(np.asarray(value))
    with torch.device("meta"):  # the shapes, without 400 MB of random weights
        reference = ResNet38d().state_dict()
    own = {k: v.shape for k, v in reference.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k]))
    if missing or extra or wrong:
        raise DatasetError(
            f"{src}: not the ResNet-38 weights: {len(missing)} missing (first: {missing[:5]}), "
            f"{len(extra)} unknown {extra[:5]}, {len(wrong)} of another shape {wrong[:5]}"
        )
    save_torch(out, {k: state[k].float().contiguous() for k in own})
    log.info(
        "ResNet-38: %d weights written to %s; dropped the classifier %s",
        len(own),
        out,
        dropped or "(none in the file)",
    )
    return {"weights": len(own), "dropped": len(dropped)}


# --------------------------------------------------------------------------- the stage


def run(io: IO, params: None = None) -> dict[str, int]:
    """Run the conversion ``io.what``."""
    from wsss.core.errors import UsageError

    given = {name for name in ("sbd", "voc", "release", "splits", "src", "out")
             if getattr(io, name) is not None}  # fmt: skip
    missing = [n for n in NEEDS[io.what] if n not in given]
    if missing:
        raise UsageError(f"convert {io.what} needs {' and '.join('--' + n for n in missing)}")
    stray = sorted(given - set(NEEDS[io.what]) - set(TAKES[io.what]))
    if stray:
        raise UsageError(
            f"convert {io.what} takes no {', '.join('--' + n for n in stray)} "
            f"(it reads {', '.join('--' + n for n in NEEDS[io.what] + TAKES[io.what])})"
        )
    if io.what == "sbd":
        return convert_sbd(io.sbd, io.voc, io.force)
    if io.what == "msrc":
        return convert_msrc(io.release, io.out, io.splits, io.val_fraction, io.seed, io.force)
    return convert_resnet38(io.src, io.out, io.force)


STAGE = Stage(
    "convert", "SBD, MSRC-v2 or the ResNet-38 weights into what wsss reads", IO, None, run
)
