"""The sample photos that ship in the repository (examples/ and tests/data/), made reproducibly.

Sources are public-domain / CC0 scikit-image photos from the pristine set (skimage_rocket: PD, NASA;
skimage_coffee: CC0, Rachel Michetti). Each sample gets known degradations from export.synth.

    python -m export.test_images
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from export import synth
from export.data import pristine_dir
from export.manifest import wrote

ROOT = Path(__file__).resolve().parents[1]
D = synth.Degradation
SAMPLES = {  # output -> (source photo, degradations)
    "examples/coffee.jpg": ("skimage/skimage_coffee.jpg", [D("luma_noise", 0.7, (2, 0, 4, 2), 1)]),
    "examples/rocket_shake.jpg": ("skimage/skimage_rocket.jpg", [D("motion_blur", 0.5, None, 5)]),
    "tests/data/rocket_clean.jpg": ("skimage/skimage_rocket.jpg", []),
    "tests/data/coffee_clean.jpg": ("skimage/skimage_coffee.jpg", []),
    "tests/data/rocket_blur.jpg": ("skimage/skimage_rocket.jpg", [D("gaussian_blur", 0.6, None, 2)]),
    "tests/data/coffee_dark.jpg": ("skimage/skimage_coffee.jpg", [D("underexposure", 0.7, None, 3)]),
    "tests/data/coffee_jpeg_local.jpg": ("skimage/skimage_coffee.jpg", [D("jpeg", 0.9, (0, 2, 2, 4), 4)]),
}


def main() -> None:
    for out, (src, degs) in SAMPLES.items():
        rgb = np.asarray(Image.open(pristine_dir() / src).convert("RGB"))
        path = ROOT / out
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synth.apply(rgb, degs)).save(path, quality=95, subsampling=0)
        wrote(path)


if __name__ == "__main__":
    main()
