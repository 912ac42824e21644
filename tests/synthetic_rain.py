"""Deterministic synthetic rain for the tests and the deraining demo (never for results).

Streaks are drawn on real photos the usual way of synthetic rain sets: sparse random drops are smeared
along one slanted direction (a line-shaped motion blur), softened, and lighten the photo (screen-like
blend: a streak never darkens a pixel). Everything comes from one seed and OpenCV's deterministic
filters, so a set is identical on every run. Photos: ../shared/datasets when beside the clone, else
those bundled with scikit-image (helpers.real_photos).

    python tests/synthetic_rain.py --out datasets/DR_demo     # train/ and val/, input/ + target/
"""
import argparse
from pathlib import Path

import cv2
import numpy as np

DROP_DENSITY = 0.004  # fraction of pixels that start a streak
STREAK_LENGTHS = (9, 17)  # pixels, drawn per image
MAX_SLANT = 20.  # degrees from vertical, drawn per image
OPACITY = 0.8  # how far a full streak lightens a pixel towards white


def streak_kernel(length, slant):
    """A normalised line of ``length`` pixels, ``slant`` degrees from vertical, as a filter kernel."""
    kernel = np.zeros((length, length), np.float32)
    kernel[:, length // 2] = 1.
    rotation = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), slant, 1.)
    kernel = cv2.warpAffine(kernel, rotation, (length, length), flags=cv2.INTER_LINEAR)
    return kernel / kernel.max()


def rain_layer(height, width, rng):
    """float32 (height, width) streak intensities in [0, 1]."""
    drops = (rng.random((height, width)) < DROP_DENSITY) * rng.uniform(0.6, 1., (height, width))
    length = int(rng.integers(*STREAK_LENGTHS))
    streaks = cv2.filter2D(drops.astype(np.float32), -1, streak_kernel(length, rng.uniform(-MAX_SLANT, MAX_SLANT)))
    return np.clip(cv2.GaussianBlur(streaks, (3, 3), 0), 0., 1.)


def add_rain(clean, rng):
    """Rainy uint8 copy of a uint8 image (gray or BGR)."""
    layer = rain_layer(*clean.shape[:2], rng)
    layer = layer[..., None] if clean.ndim == 3 else layer
    rainy = clean + (255. - clean) * OPACITY * layer
    return np.clip(np.round(rainy), 0, 255).astype(np.uint8)


def write_rain_set(folder, crops, seed):
    """A deraining set: ``folder``/input/ (rainy) and ``folder``/target/ (clean), crop i as img<i>.png.
    Returns ``folder``."""
    rng = np.random.default_rng(seed)
    for sub in ('input', 'target'):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i, clean in enumerate(crops):
        cv2.imwrite(str(folder / 'target' / f'img{i:02d}.png'), clean)
        cv2.imwrite(str(folder / 'input' / f'img{i:02d}.png'), add_rain(clean, rng))
    return folder


def tiles(photos, size, per_photo):
    """``per_photo`` square tiles of ``size`` from each photo, evenly spaced along its diagonal, away from the
    corners (fixed positions)."""
    out = []
    for photo in photos:
        span = min(photo.shape[:2]) - size
        steps = [round(span * (k + 1) / (per_photo + 1)) for k in range(per_photo)]
        out += [np.ascontiguousarray(photo[s:s + size, s:s + size]) for s in steps]
    return out


def main(argv=None):
    from helpers import real_photos  # the photos the tests use (../shared or scikit-image)
    from basicsr_iln.metrics.matlab_y_metric import calculate_psnr_matlab_y
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, required=True, help='folder for train/ and val/')
    parser.add_argument('--size', type=int, default=128, help='side of the square tiles (default 128)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    photos = real_photos()
    train = write_rain_set(args.out / 'train', tiles(photos[:-1], args.size, 4), args.seed)
    val = write_rain_set(args.out / 'val', tiles(photos[-1:], args.size, 2), args.seed + 1)
    for folder in (train, val):
        pairs = sorted((folder / 'input').glob('*.png'))
        scores = [calculate_psnr_matlab_y(cv2.imread(str(p)), cv2.imread(str(folder / 'target' / p.name)), 0)
                  for p in pairs]
        print(f'{folder}: {len(pairs)} pairs; rainy input vs target: {np.mean(scores):.2f} dB (deraining Y-PSNR)')


if __name__ == '__main__':
    main()
