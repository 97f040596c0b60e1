"""A built-in synthetic dataset in PASCAL VOC layout that poses the WSSS problem.

Every image holds 1 to 3 objects on a textured background. An object's body (shape,
size, rotation, colour, texture) is drawn from distributions shared by all classes; only a
small marking inside the body (a glyph of about 12-20 % of the body's diameter, in a
class-specific shape and colour, with a dark outline) tells the classes apart. A classifier
trained on image-level labels must therefore look at the marking, so its class activation
maps cover a small part of each object, while the masks label the whole object.

Masks follow the toolkit's convention with a background class: 0 = background, foreground
class ``k`` = ``k + 1``; they are exact and have no ignored (255) pixels.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from wsss.core.atomic import atomic_dir
from wsss.data.palette import label_image

CLASSES: tuple[str, ...] = ("cross", "ring", "triangle", "bars", "diamond", "star")

# Marking colour of each class (RGB in [0, 1]); bodies and backgrounds never use a class cue.
_MARK_COLOURS = (
    np.array(
        [
            [230, 30, 40],
            [255, 215, 0],
            [30, 90, 240],
            [20, 205, 70],
            [235, 50, 225],
            [30, 225, 235],
        ],
        dtype=np.float64,
    )
    / 255.0
)
_OUTLINE = np.array([0.09, 0.09, 0.1])
_NUM_OBJECTS_P = (0.5, 0.3, 0.2)  # P(1, 2, 3 objects in an image)
_PLACEMENT_TRIES = 40
_MIN_IMAGE_SIZE = 64


@dataclass(frozen=True)
class Sample:
    """One rendered image.

    ``image``: uint8 RGB [S, S, 3]; ``mask``: uint8 [S, S] label map (0 = background,
    class ``k`` = ``k + 1``); ``marking``: bool [S, S], the visible marking pixels (glyphs and
    their outlines, a subset of the object pixels); ``classes``: class index of every object
    in drawing order (later objects occlude earlier ones, never their markings).
    """

    image: np.ndarray
    mask: np.ndarray
    marking: np.ndarray
    classes: tuple[int, ...]


@dataclass
class _Object:
    cls: int
    body: np.ndarray  # bool [S, S]
    glyph: np.ndarray  # bool [S, S]
    mark: np.ndarray  # bool [S, S], glyph + outline
    guard: np.ndarray  # bool [S, S], mark grown by a margin that later bodies must avoid
    visible: np.ndarray  # bool [S, S], body pixels not covered by later objects
    u: np.ndarray  # float [S, S], body-local coordinates in pixels
    v: np.ndarray
    radius: float  # half the body's diameter, pixels


def generate(
    root: str | os.PathLike[str],
    seed: int = 0,
    num_train: int = 160,
    num_val: int = 48,
    image_size: int = 160,
    max_objects: int = 3,
    marking_contrast: float = 1.0,
) -> None:
    """Write the dataset to ``root`` in VOC layout, replacing ``root`` atomically.

    ``max_objects`` (1 to 3) caps the objects of an image (1: one label per image);
    ``marking_contrast`` (0 to 1] scales how far each class's marking colour lies from the
    classes' mean colour (small: visually similar classes that differ only slightly).

    Writes ``JPEGImages/<id>.jpg`` (quality 95), ``SegmentationClass/<id>.png`` (VOC palette
    PNG), ``ImageSets/Segmentation/{train,val}.txt`` and ``classes.txt`` (foreground class
    names, one per line). Ids are ``train_0000``, ``val_0000``, ... Every image is square,
    ``image_size`` pixels a side. The same arguments give byte-identical files; an image
    depends only on ``seed``, its split and its index.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"need at least one image per split (got {num_train}, {num_val})")
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {_MIN_IMAGE_SIZE} (got {image_size})")
    if not 1 <= max_objects <= len(_NUM_OBJECTS_P):
        raise ValueError(f"max_objects must be 1 to {len(_NUM_OBJECTS_P)} (got {max_objects})")
    if not 0 < marking_contrast <= 1:
        raise ValueError(f"marking_contrast must be in (0, 1] (got {marking_contrast})")
    mean = _MARK_COLOURS.mean(0)
    colours = mean + marking_contrast * (_MARK_COLOURS - mean)
    with atomic_dir(root) as tmp:
        images = tmp / "JPEGImages"
        masks = tmp / "SegmentationClass"
        sets = tmp / "ImageSets" / "Segmentation"
        for folder in (images, masks, sets):
            folder.mkdir(parents=True)
        for code, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            plan = _plan_classes(np.random.default_rng([seed, code]), count)
            ids = []
            for index, classes in enumerate(plan):
                sample = render_sample(
                    np.random.default_rng([seed, code, index + 1]),
                    image_size,
                    classes[:max_objects],
                    colours,
                )
                name = f"{split}_{index:04d}"
                Image.fromarray(sample.image).save(images / f"{name}.jpg", quality=95)
                label_image(sample.mask).save(masks / f"{name}.png")
                ids.append(name)
            (sets / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")


def render_sample(
    rng: np.random.Generator,
    image_size: int,
    classes: Sequence[int] | None = None,
    colours: np.ndarray = _MARK_COLOURS,
) -> Sample:
    """Render one ``image_size`` x ``image_size`` image.

    ``classes`` gives the class of each object (1 to 3 objects); by default the number of
    objects and their classes are drawn from ``rng``. ``colours``: the marking colour of
    each class (RGB in [0, 1], [C, 3]).
    """
    if classes is None:
        count = int(rng.choice(len(_NUM_OBJECTS_P), p=_NUM_OBJECTS_P)) + 1
        classes = rng.integers(len(CLASSES), size=count).tolist()
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    canvas = _background(rng, size, xx, yy)
    objects = _place_objects(rng, size, xx, yy, [int(c) for c in classes])
    mask = np.zeros((size, size), dtype=np.uint8)
    marking = np.zeros((size, size), dtype=bool)
    for obj in objects:
        canvas[obj.body] = _body_fill(rng, obj, size)[obj.body]
        canvas[obj.mark] = _OUTLINE
        canvas[obj.glyph] = colours[obj.cls] * rng.uniform(0.9, 1.0)
        mask[obj.body] = obj.cls + 1
        marking |= obj.mark
    image = _photometric(rng, canvas)
    return Sample(image, mask, marking, tuple(obj.cls for obj in objects))


def _plan_classes(rng: np.random.Generator, count: int) -> list[list[int]]:
    """Object classes of ``count`` images, drawing order; classes balanced over images."""
    seen = np.zeros(len(CLASSES), dtype=np.int64)
    plan = []
    for _ in range(count):
        num = int(rng.choice(len(_NUM_OBJECTS_P), p=_NUM_OBJECTS_P)) + 1
        if num == 1:
            distinct = 1
        elif num == 2:
            distinct = int(rng.choice([1, 2], p=[0.3, 0.7]))
        else:
            distinct = int(rng.choice([1, 2, 3], p=[0.15, 0.35, 0.5]))
        order = rng.permutation(len(CLASSES))
        chosen = order[np.argsort(seen[order], kind="stable")[:distinct]]
        seen[chosen] += 1
        objects = np.concatenate([chosen, rng.choice(chosen, size=num - distinct)])
        plan.append(rng.permutation(objects).tolist())
    return plan


def _place_objects(
    rng: np.random.Generator, size: int, xx: np.ndarray, yy: np.ndarray, classes: list[int]
) -> list[_Object]:
    """Bodies and markings, largest first, so that every marking stays visible.

    A candidate is rejected when it covers an earlier marking (plus a margin) or hides more
    than half of an earlier body; rejected candidates are re-drawn slightly smaller.
    """
    diameters = np.sort(rng.uniform(0.2, 0.55, size=len(classes)))[::-1] * size
    placed: list[_Object] = []
    for cls, diameter in zip(classes, diameters):
        for attempt in range(_PLACEMENT_TRIES):
            obj = _sample_object(rng, size, xx, yy, cls, diameter * 0.985**attempt)
            if obj is not None and all(
                not (obj.body & other.guard).any()
                and (other.visible & ~obj.body).sum() >= 0.5 * other.body.sum()
                for other in placed
            ):
                for other in placed:
                    other.visible &= ~obj.body
                placed.append(obj)
                break
    return placed


def _sample_object(
    rng: np.random.Generator,
    size: int,
    xx: np.ndarray,
    yy: np.ndarray,
    cls: int,
    diameter: float,
) -> _Object | None:
    """A body of the given diameter (pixels) and its marking; ``None`` if none fits."""
    a = diameter / 2
    b = a * rng.uniform(0.6, 1.0)
    cx, cy = rng.uniform(0.3 * diameter, size - 0.3 * diameter, size=2)
    angle = rng.uniform(0, np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    kind = rng.integers(3)
    if kind == 0:  # ellipse
        body = (u / a) ** 2 + (v / b) ** 2 <= 1
    elif kind == 1:  # rounded rectangle
        corner = rng.uniform(0.15, 0.6) * b
        qx, qy = np.abs(u) - (a - corner), np.abs(v) - (b - corner)
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        body = outside + np.minimum(np.maximum(qx, qy), 0) <= corner
    else:  # blob: radius modulated by a few random harmonics
        amps = rng.uniform(0, 1, size=3) * np.array([0.2, 0.12, 0.08])
        phases = rng.uniform(0, 2 * np.pi, size=3)
        theta = np.arctan2(v / b, u / a)
        wave = sum(amp * np.cos(k * theta + ph) for k, amp, ph in zip((2, 3, 4), amps, phases))
        body = np.hypot(u / a, v / b) <= (1 + wave) / (1 + amps.sum())
    glyph_radius = max(rng.uniform(0.06, 0.10) * diameter, 0.028 * size)
    outline = max(1, round(0.22 * glyph_radius))
    margin = glyph_radius + outline + 1
    tilt = rng.uniform(-0.4, 0.4)
    gc, gs = np.cos(tilt), np.sin(tilt)
    for spread in np.linspace(0.55, 0.0, 6):
        rho, phi = rng.uniform(0, spread), rng.uniform(0, 2 * np.pi)
        ou, ov = rho * a * np.cos(phi), rho * b * np.sin(phi)
        mx, my = cx + ou * cos - ov * sin, cy + ou * sin + ov * cos
        if not (margin <= mx <= size - margin and margin <= my <= size - margin):
            continue
        p = ((xx - mx) * gc + (yy - my) * gs) / glyph_radius
        q = (-(xx - mx) * gs + (yy - my) * gc) / glyph_radius
        glyph = _glyph(cls, p, q)
        mark = _dilate(glyph, outline)
        if not (mark & ~body).any():
            guard = _dilate(mark, 2)
            return _Object(cls, body, glyph, mark, guard, body.copy(), u, v, a)
    return None


def _glyph(cls: int, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The marking of class ``cls`` at glyph coordinates ``p``, ``q`` (radius 1), bool."""
    ap, aq = np.abs(p), np.abs(q)
    if cls == 0:  # cross
        return ((ap <= 0.3) & (aq <= 1)) | ((aq <= 0.3) & (ap <= 1))
    if cls == 1:  # ring
        r = np.hypot(p, q)
        return (r <= 1) & (r >= 0.5)
    if cls == 2:  # triangle, pointing up
        return (q <= 0.55) & (np.sqrt(3) * ap - q <= 1.1)
    if cls == 3:  # pair of bars
        return (aq <= 0.95) & (np.abs(ap - 0.55) <= 0.25)
    if cls == 4:  # diamond
        return ap + aq <= 1.05
    # five-pointed star
    theta = np.arctan2(p, -q)
    return np.hypot(p, q) <= 0.45 + 0.6 * ((1 + np.cos(5 * theta)) / 2) ** 2


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` grown by ``steps`` pixels (3x3 square neighbourhood per step), bool [H, W]."""
    out = mask
    for _ in range(steps):
        padded = np.pad(out, 1)
        rows = padded[:, :-2] | padded[:, 1:-1] | padded[:, 2:]
        out = rows[:-2] | rows[1:-1] | rows[2:]
    return out


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in [0, 1], float [size, size], ``cells`` features per side."""
    grid = rng.random((cells + 1, cells + 1))
    pos = (np.arange(size) + 0.5) / size * cells
    i = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i
    f = f * f * (3 - 2 * f)
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation background colour, RGB in [0, 1]."""
    return _hsv(rng.random(), rng.uniform(0.03, 0.28), rng.uniform(0.3, 0.85))


def _background(rng: np.random.Generator, size: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Muted smooth noise or gradient, fine grain and sometimes a faint grid, [S, S, 3]."""
    first, second = _muted_colour(rng), _muted_colour(rng)
    if rng.random() < 0.5:
        t = _value_noise(rng, size, int(rng.integers(2, 6)))
    else:
        angle = rng.uniform(0, 2 * np.pi)
        t = (xx * np.cos(angle) + yy * np.sin(angle)) / size
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    canvas = first + (second - first) * t[..., None]
    if rng.random() < 0.5:
        patch = _value_noise(rng, size, int(rng.integers(3, 8))) > rng.uniform(0.55, 0.7)
        canvas = np.where(patch[..., None], 0.7 * canvas + 0.3 * _muted_colour(rng), canvas)
    grain = _value_noise(rng, size, max(4, size // 6)) - 0.5
    canvas = canvas + rng.uniform(0.03, 0.1) * grain[..., None]
    if rng.random() < 0.35:
        period = int(rng.integers(max(6, size // 20), max(7, size // 7)))
        offset = rng.integers(period, size=2)
        lines = ((xx.astype(np.int64) + offset[0]) % period == 0) | (
            (yy.astype(np.int64) + offset[1]) % period == 0
        )
        canvas = canvas + rng.choice([-1, 1]) * rng.uniform(0.04, 0.08) * lines[..., None]
    return canvas


def _body_fill(rng: np.random.Generator, obj: _Object, size: int) -> np.ndarray:
    """Textured, shaded colour of a body over the whole frame, float [S, S, 3]."""
    base = _hsv(rng.random(), rng.uniform(0.4, 0.95), rng.uniform(0.45, 0.95))
    h, s, v = colorsys.rgb_to_hsv(*base)
    if rng.random() < 0.3:
        other = _hsv(rng.random(), rng.uniform(0.4, 0.95), rng.uniform(0.45, 0.95))
    else:
        other = _hsv(h + rng.uniform(-0.08, 0.08), s, v * rng.uniform(0.45, 0.75))
    period = rng.uniform(0.03, 0.08) * size
    direction = rng.uniform(0, np.pi)
    pu = obj.u * np.cos(direction) + obj.v * np.sin(direction)
    pv = -obj.u * np.sin(direction) + obj.v * np.cos(direction)
    kind = rng.integers(4)
    if kind == 0:  # stripes
        t = np.clip(0.5 + 1.5 * np.sin(2 * np.pi * pu / period), 0, 1)
    elif kind == 1:  # dots
        du, dv = np.mod(pu, period) - period / 2, np.mod(pv, period) - period / 2
        t = (np.hypot(du, dv) <= rng.uniform(0.2, 0.35) * period).astype(np.float64)
    elif kind == 2:  # checks
        t = ((np.floor(pu / period) + np.floor(pv / period)) % 2).astype(np.float64)
    else:  # mottled noise
        t = np.clip(2 * _value_noise(rng, size, max(4, int(size / period))) - 0.5, 0, 1)
    fill = base + (other - base) * (rng.uniform(0.5, 1.0) * t)[..., None]
    light = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(0.05, 0.2) / obj.radius
    shade = 1 - slope * (obj.u * np.cos(light) + obj.v * np.sin(light))
    return fill * shade[..., None]


def _photometric(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Slight blur, gain/bias jitter and pixel noise; float [S, S, 3] -> uint8 RGB."""
    padded = np.pad(canvas, ((1, 1), (1, 1), (0, 0)), mode="edge")
    rows = 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]
    blurred = 0.25 * rows[:, :-2] + 0.5 * rows[:, 1:-1] + 0.25 * rows[:, 2:]
    gain = rng.uniform(0.9, 1.1, size=3)
    noisy = blurred * gain + rng.uniform(-0.04, 0.04) + rng.normal(0, 0.015, canvas.shape)
    return np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8)
