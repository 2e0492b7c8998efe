"""Write the webapp's sample images: the first Fashion-MNIST test image of each class, as PNG.

Run from the repository root (it reads the IDX files with the `edge` package, which the webapp
itself does not need):

    .venv/bin/python services/webapp/scripts/make_samples.py /work/shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from edge.data import CLASS_NAMES, read_idx

OUT_DIR = Path(__file__).resolve().parent.parent / "src" / "edge_webapp" / "static" / "samples"


def slug(name: str) -> str:
    """Turn a class name into a file-name stem."""
    return name.lower().replace("/", "-").replace(" ", "-")


def read_test_split(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the test images and labels, from the .gz files or their decompressed copies."""

    def pick(stem: str) -> Path:
        gz = source / f"{stem}.gz"
        return gz if gz.is_file() else source / stem

    return read_idx(pick("t10k-images-idx3-ubyte")), read_idx(pick("t10k-labels-idx1-ubyte"))


def main() -> None:
    """Write one PNG per class and the samples.json manifest the webapp lists them from."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with t10k-images/labels IDX files (.gz or not)")
    args = parser.parse_args()
    images, labels = read_test_split(args.source)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    manifest = []
    for class_id, name in enumerate(CLASS_NAMES):
        index = int((labels == class_id).argmax())
        file = f"{slug(name)}.png"
        # optimize + no metadata keeps each file a few hundred bytes and the output reproducible.
        Image.fromarray(images[index]).save(OUT_DIR / file, optimize=True)
        manifest.append({"id": slug(name), "file": file, "label": name, "test_index": index})
    (OUT_DIR / "samples.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(manifest)} samples to {OUT_DIR}")


if __name__ == "__main__":
    main()
