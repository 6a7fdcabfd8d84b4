"""Procedural toy scenes: coloured shapes on textured, noisy backgrounds, with exact label maps.

Every scene is a pure function of (seed, index), so any scene can be rebuilt on its own and two
seeds never share a scene. About half the scenes also hold a twin: a second object of a class
already in the scene that touches or overlaps it (the case instance segmentation must split). The
twin is drawn from its own random stream and painted last, so the other objects of a scene are
the same with or without it. Each shape also has its own surface finish (see _object_pixels): a
4-layer ViT trained for half an hour on CPU did not learn bare outlines (shape accuracy stayed
at chance after 60k images), while colour came in a few hundred steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from autolabel.toyworld import DEFAULT_SIZE

# Vivid class colours (RGB); backgrounds stay desaturated so that colour names stay meaningful.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 35),
    "green": (40, 165, 60),
    "blue": (40, 85, 215),
    "yellow": (235, 205, 35),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# Class id = position + 1 (0 is background), the order of OUT/vocab.txt.
CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
# Words the toy model was trained to read as "not an object".
BACKGROUND_WORDS: tuple[str, ...] = ("background", "texture", "noise", "pattern", "surface")
MAX_OBJECTS = 4
# Object radius as a fraction of the scene side; shapes with less area per radius get a boost so
# that all classes cover similar areas on average.
RADIUS_RANGE = (0.13, 0.27)
AREA_BOOST = {"circle": 0.92, "square": 1.0, "triangle": 1.15, "star": 1.3}
TWIN_PROB = 0.5  # share of scenes with a touching same-class twin
TWIN_MAX_COVER = 0.3  # the twin hides at most this share of any other object
FINISH_PERIOD = 7.0  # pixels between stripes / dots / checks
FINISH_DARK = 0.55  # brightness of the finish's dark parts
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}.",
    "a picture of {}",
    "an image showing {}.",
    "a scene with {}.",
    "there is {} in the scene",
)


@dataclass(frozen=True)
class ToyObject:
    """One painted shape: class id (1-based), centre (x, y) and radius in pixels, angle (deg)."""

    class_id: int
    centre: tuple[float, float]
    radius: float
    angle: float

    @property
    def name(self) -> str:
        """Class name, e.g. "red circle"."""
        return CLASSES[self.class_id - 1]


@dataclass
class Scene:
    """An RGB image, its label map (0 = background, k = CLASSES[k-1]), its objects with their
    visible pixels (one instance each, in painting order) and captions."""

    image: np.ndarray  # H x W x 3 uint8
    labels: np.ndarray  # H x W uint8
    objects: list[ToyObject]
    captions: list[str]
    masks: list[np.ndarray] = field(default_factory=list)  # objects[i]'s visible pixels

    @property
    def present(self) -> list[int]:
        """Class ids with at least one visible pixel, ascending."""
        return [int(k) for k in np.unique(self.labels) if k > 0]


def make_scene(seed: int, index: int, size: int = DEFAULT_SIZE) -> Scene:
    """Build scene `index` of the stream `seed` at size x size pixels."""
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size)
    labels = np.zeros((size, size), np.uint8)
    objects = _place_objects(rng, size)
    masks = [shape_mask(obj, size) for obj in objects]
    for obj, mask in zip(objects, masks, strict=True):
        labels[mask] = obj.class_id
        image[mask] = _object_pixels(rng, obj, mask)
    twin_rng = np.random.default_rng([seed, index, 1])
    twin = _place_twin(twin_rng, objects, masks, size)
    if twin is not None:
        mask = shape_mask(twin, size)
        labels[mask] = twin.class_id
        image[mask] = _object_pixels(twin_rng, twin, mask)
        objects, masks = [*objects, twin], [*masks, mask]
    noise = rng.normal(0.0, rng.uniform(2.0, 8.0), image.shape)
    image = np.clip(image + noise, 0, 255).astype(np.uint8)
    visible, shown = [], []
    for i, (obj, mask) in enumerate(zip(objects, masks, strict=True)):
        seen = mask.copy()
        for later in masks[i + 1 :]:
            seen &= ~later
        if seen.any():
            visible.append(obj)
            shown.append(seen)
    names = [o.name for o in visible]
    captions = [t.format(describe(names)) for t in CAPTION_TEMPLATES]
    return Scene(image, labels, visible, captions, shown)


def describe(names: list[str]) -> str:
    """English list of objects: "a red circle, a blue star and a green square"."""
    items = [f"{'an' if n[0] in 'aeiou' else 'a'} {n}" for n in names]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def shape_mask(obj: ToyObject, size: int) -> np.ndarray:
    """Boolean size x size mask of the pixels the object covers."""
    shape = SHAPES[(obj.class_id - 1) % len(SHAPES)]
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(_polygon(shape, obj), fill=1)
    return np.asarray(canvas, dtype=bool)


def _polygon(shape: str, obj: ToyObject) -> list[tuple[float, float]]:
    cx, cy = obj.centre
    r = obj.radius
    if shape == "circle":
        radii, count = [r], 64
    elif shape == "square":
        radii, count = [r], 4
    elif shape == "triangle":
        radii, count = [r], 3
    else:  # five-pointed star: alternate outer and inner vertices
        radii, count = [r, 0.45 * r], 10
    start = math.radians(obj.angle)
    points = []
    for i in range(count):
        theta = start + 2 * math.pi * i / count
        rad = radii[i % len(radii)]
        points.append((cx + rad * math.cos(theta), cy + rad * math.sin(theta)))
    return points


def _place_objects(rng: np.random.Generator, size: int) -> list[ToyObject]:
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    class_ids = rng.choice(len(CLASSES), size=count, replace=False) + 1
    placed: list[ToyObject] = []
    for class_id in class_ids:
        shape = SHAPES[(int(class_id) - 1) % len(SHAPES)]
        for _ in range(30):
            radius = rng.uniform(*RADIUS_RANGE) * size * AREA_BOOST[shape]
            margin = 0.7 * radius
            centre = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
            # Objects may touch and overlap a little, never hide each other.
            if all(math.dist(centre, o.centre) > 0.85 * (radius + o.radius) for o in placed):
                placed.append(ToyObject(int(class_id), centre, radius, rng.uniform(0, 360)))
                break
    return placed


def _place_twin(
    rng: np.random.Generator, placed: list[ToyObject], masks: list[np.ndarray], size: int
) -> ToyObject | None:
    """A second object of one placed object's class, touching or overlapping it, or None."""
    if not placed or rng.uniform() >= TWIN_PROB:
        return None
    pick = int(rng.integers(len(placed)))
    sibling, sibling_mask = placed[pick], masks[pick]
    shape = SHAPES[(sibling.class_id - 1) % len(SHAPES)]
    grown = ndimage.binary_dilation(sibling_mask, iterations=2)
    for attempt in range(30):
        radius = rng.uniform(*RADIUS_RANGE) * size * AREA_BOOST[shape]
        # Start far enough apart to be two objects; come closer until they touch.
        reach = (sibling.radius + radius) * (0.95 - 0.02 * attempt)
        theta = rng.uniform(0, 2 * math.pi)
        centre = (
            sibling.centre[0] + reach * math.cos(theta),
            sibling.centre[1] + reach * math.sin(theta),
        )
        margin = 0.7 * radius
        if not all(margin <= c <= size - margin for c in centre):
            continue
        twin = ToyObject(sibling.class_id, centre, radius, rng.uniform(0, 360))
        mask = shape_mask(twin, size)
        if not (mask & grown).any():
            continue
        if all((mask & m).sum() <= TWIN_MAX_COVER * m.sum() for m in masks):
            return twin
    return None


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Desaturated base colour + low-frequency blotches + a random stripe or checker pattern."""
    hue = rng.uniform(0, 1)
    sat = rng.uniform(0.0, 0.3)
    val = rng.uniform(0.3, 0.9)
    base = np.array(_hsv_to_rgb(hue, sat, val)) * 255.0
    coarse = rng.normal(0.0, 1.0, (rng.integers(3, 9), rng.integers(3, 9), 3))
    blotches = np.asarray(
        Image.fromarray(((coarse * 20 + 128).clip(0, 255)).astype(np.uint8)).resize(
            (size, size), Image.BILINEAR
        ),
        dtype=np.float64,
    )
    image = base + (blotches - 128.0) * rng.uniform(0.2, 1.0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    kind = rng.integers(0, 3)
    amplitude = rng.uniform(8, 30)
    period = rng.uniform(6, 24)
    if kind == 0:
        theta = rng.uniform(0, math.pi)
        wave = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
    elif kind == 1:
        wave = np.sign(np.sin(2 * math.pi * xx / period) * np.sin(2 * math.pi * yy / period))
    else:
        wave = np.zeros_like(xx)
    image = image + amplitude * wave[..., None]
    return np.clip(image, 0, 255)


def _object_pixels(rng: np.random.Generator, obj: ToyObject, mask: np.ndarray) -> np.ndarray:
    """Class colour with a per-object shade, the shape's surface finish and per-pixel grain.

    Each shape has its own finish (circle plain, square stripes, triangle dots, star checks),
    drawn in the object's own rotated frame, so that a part of an object tells its shape.
    """
    colour = np.array(COLOURS[obj.name.split()[0]], dtype=np.float64)
    shade = rng.uniform(0.85, 1.1) * colour + rng.uniform(-12, 12, 3)
    ys, xs = np.nonzero(mask)
    theta = np.radians(obj.angle)
    dx, dy = xs - obj.centre[0], ys - obj.centre[1]
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    shape = SHAPES[(obj.class_id - 1) % len(SHAPES)]
    period = FINISH_PERIOD
    if shape == "square":
        dark = np.sin(2 * np.pi * u / period) > 0
    elif shape == "triangle":
        du, dv = np.mod(u, period) - period / 2, np.mod(v, period) - period / 2
        dark = du**2 + dv**2 < (period / 3) ** 2
    elif shape == "star":
        dark = np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period) > 0
    else:
        dark = np.zeros(len(xs), bool)
    pixels = np.repeat(shade[None], len(xs), axis=0)
    pixels[dark] *= FINISH_DARK
    grain = rng.normal(0.0, 6.0, pixels.shape)
    return np.clip(pixels + grain, 0, 255)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
