"""`shapes`: a generated image-folder dataset of drawn shapes on photo textures.

Each image is a random crop of one of the two photos scikit-learn ships
(`load_sample_images`: a temple in China, a flower), rescaled and softened
(its contrast scaled by 0.4-0.8 around its mean colour), with one shape drawn
on it: varied colour (at least 120 RGB levels from the background's mean;
10% closer, 50+), size (radius 22-40% of the side), rotation, position (at
most 10% of the radius past the border), partial transparency; then Gaussian
pixel noise and, for a quarter, a slight blur. The files are real PNG and JPEG
images in `<root>/<class>/`, so the image-folder loader is what reads them.
Seeded: the same arguments give the same files (the folder name carries a hash
of them and of the generator's `VERSION`).

Version 1 (smaller, fainter shapes on full-contrast photos) was not learnable
from scratch in CPU-minutes: networks memorized the backgrounds (train 0.97,
validation at chance). Version 2 is the easier default (docs/images.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

CLASSES = ("circle", "cross", "square", "star", "triangle")
VERSION = 2  # part of the folder's hash: a new generator writes a new folder


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple]:
    if kind == "square":
        k, radii = 4, [r]
    elif kind == "triangle":
        k, radii = 3, [r]
    elif kind == "star":
        k, radii = 10, [r, r * 0.45]
    else:  # cross: a 12-gon plus sign
        k, radii = 12, None
    if kind == "cross":
        a = r * 0.33
        pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a),
               (-r, a), (-r, -a), (-a, -a)]
    else:
        pts = [(radii[i % len(radii)] * np.cos(2 * np.pi * i / k),
                radii[i % len(radii)] * np.sin(2 * np.pi * i / k)) for i in range(k)]
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def draw_shape(rng: np.random.Generator, kind: str, size: int, textures: list[np.ndarray]):
    """One `(size, size, 3)` uint8 image of `kind` on a photo texture."""
    from PIL import Image, ImageDraw, ImageFilter

    photo = textures[rng.integers(len(textures))]
    crop = int(rng.integers(size, min(photo.shape[:2])))
    top = int(rng.integers(0, photo.shape[0] - crop + 1))
    left = int(rng.integers(0, photo.shape[1] - crop + 1))
    bg = Image.fromarray(photo[top:top + crop, left:left + crop]).resize((size, size),
                                                                        Image.BILINEAR)
    bg = np.asarray(bg, "float32")
    bg_mean = bg.mean((0, 1))
    bg = Image.fromarray(np.clip(bg_mean + (bg - bg_mean) * rng.uniform(0.4, 0.8), 0, 255)
                         .astype("uint8"))
    low = rng.uniform() < 0.1  # lower contrast: nearer the background's mean colour
    for _ in range(100):
        colour = (np.clip(bg_mean + rng.normal(0, 60, 3), 0, 255) if low
                  else rng.integers(0, 256, 3).astype("float32"))
        if np.linalg.norm(colour - bg_mean) >= (50 if low else 120):
            break
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    r = rng.uniform(0.22, 0.40) * size
    cx, cy = rng.uniform(r * 0.9, size - r * 0.9, 2)
    alpha = int(rng.integers(200, 256))
    fill = (*[int(v) for v in colour], alpha)
    if kind == "circle":
        ry = r * rng.uniform(0.75, 1.0)  # slightly elliptic
        draw.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=fill)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, rng.uniform(0, 2 * np.pi)), fill=fill)
    img = Image.alpha_composite(bg.convert("RGBA"), layer).convert("RGB")
    if rng.uniform() < 0.25:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    x = np.asarray(img, "float32") + rng.normal(0, rng.uniform(2, 10), (size, size, 3))
    return np.clip(x, 0, 255).astype("uint8")


def _textures() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(im) for im in load_sample_images().images]


def default_root() -> Path:
    """Keras's dataset cache (`$KERAS_HOME/datasets`, else `~/.keras/datasets`)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def write_shapes(root: str | os.PathLike | None = None, *, per_class: int = 1000,
                 image_size: int = 64, classes: int = 5, seed: int = 0) -> Path:
    """Writes the set (once) and returns its folder `<root>/kdl_shapes-<hash>/`.

    Args:
        root: where to put it (default: Keras's dataset cache).
        per_class: images per class (1,000 by default: at 300 a MobileNet from scratch
            memorizes them instead of learning the shapes, docs/images.md).
        image_size: width and height in pixels.
        classes: how many of `CLASSES` (2 to 5).
        seed: the generator's seed.
    """
    from PIL import Image

    if not 2 <= classes <= len(CLASSES):
        raise ValueError(f"shapes: classes must be 2..{len(CLASSES)}, got {classes}")
    if per_class < 1 or image_size < 16:
        raise ValueError(f"shapes: per_class >= 1 and image_size >= 16 (got {per_class}, "
                         f"{image_size})")
    args = {"per_class": per_class, "image_size": image_size, "classes": classes, "seed": seed,
            "version": VERSION}
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:10]
    base = Path(root) if root is not None else default_root()
    out = base / f"kdl_shapes-{key}"
    if (out / "shapes.json").is_file():
        return out
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=".kdl_shapes-"))
    try:
        rng = np.random.default_rng(seed)
        textures = _textures()
        names = CLASSES[:classes]
        for name in names:
            (tmp / name).mkdir()
        for i in range(per_class):
            for name in names:
                img = Image.fromarray(draw_shape(rng, name, image_size, textures))
                if i % 2:
                    img.save(tmp / name / f"{name}_{i:05d}.jpg", quality=int(rng.integers(70, 96)))
                else:
                    img.save(tmp / name / f"{name}_{i:05d}.png")
        (tmp / "shapes.json").write_text(json.dumps(args))
        try:
            tmp.rename(out)
        except OSError:  # another process wrote it meanwhile
            if not (out / "shapes.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
