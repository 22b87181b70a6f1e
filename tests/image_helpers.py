"""Real photos for the image tests, from packages the `test` extra installs:
scikit-image's sample images (PNG and JPEG photographs, color and gray) and
matplotlib's grace_hopper.jpg. Also small images written by Pillow."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, (
        f"{name} is not installed: pip install -e '.[test]'"
    )
    return Path(next(iter(spec.submodule_search_locations)))


SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "motorcycle_left.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "camera.png",
    "coins.png",
)


def photos() -> list[Path]:
    """Real photographs: PNG and JPEG, RGB and gray, 300 to 1000 pixels a side."""
    data = _package_dir("skimage") / "data"
    mpl = _package_dir("matplotlib") / "mpl-data" / "sample_data"
    return [data / n for n in SKIMAGE_PHOTOS] + [mpl / "grace_hopper.jpg"]


def write_images(
    folder: Path, sizes: list[tuple[int, int]], seed: int = 0
) -> list[Path]:
    """Small random images: PNG for even indices, JPEG for odd ones."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = folder / f"img{i}.{'png' if i % 2 == 0 else 'jpg'}"
        Image.fromarray(arr).save(path, quality=90)
        out.append(path)
    return out
