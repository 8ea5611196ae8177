"""Write examples/data/digits.npz: the UCI handwritten digits in tunefleet's dataset format.

The 1,797 8x8 images ship inside scikit-learn (sklearn.datasets.load_digits), so nothing is
downloaded. Pixels 0..16 are scaled to [0, 1] as float32, and the rows are split 60/20/20 into
train, validation and test, stratified by class with a fixed seed so every run writes the same
file. docs/data.md describes the format.

Usage: python examples/data/make_digits.py [OUTPUT]
"""

import pathlib
import sys

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 20240611
# load_digits stores pixel intensities as counts from 0 to 16.
MAX_PIXEL = 16.0
DEFAULT_OUTPUT = pathlib.Path(__file__).resolve().parent / "digits.npz"


def main():
    output = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUTPUT
    digits = load_digits()
    x = (digits.images / MAX_PIXEL).astype(np.float32)[:, np.newaxis, :, :]
    y = digits.target.astype(np.int64)

    # Split off 20% for test, then a quarter of the remaining 80% (20% overall) for validation.
    rest_x, test_x, rest_y, test_y = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=SEED
    )
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=0.25, stratify=rest_y, random_state=SEED
    )

    splits = {
        "train_x": train_x,
        "train_y": train_y,
        "val_x": val_x,
        "val_y": val_y,
        "test_x": test_x,
        "test_y": test_y,
    }
    # tch reads only C-ordered arrays, and plain np.savez stores them uncompressed.
    np.savez(output, **{name: np.ascontiguousarray(array) for name, array in splits.items()})
    for name, array in splits.items():
        print(f"{name}: {array.dtype} {array.shape}")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
