#!/usr/bin/env python
"""Build a tiny paired SR dataset from photos that ship inside the scikit-image wheel (no download).

    python scripts/make_quickstart_dataset.py [--out datasets/quickstart] [--scale 2]

Layout (LR is MATLAB bicubic of the HR image, rounded to uint8, same file names):
    train/HR/<photo>_sNNN.png     192x192 tiles cut from 5 training photos
    train/LR_x<s>/<photo>_sNNN.png
    val/HR/<photo>.png            240x240 centre crops of 3 held-out photos (gray ones as 3 equal channels)
    val/LR_x<s>/<photo>.png
Tile and crop sizes are multiples of 2, 3, 4, 6, 8, so HR files do not depend on --scale and several
scales can share one folder. Re-running rewrites nothing that is already identical.
"""
import argparse
import os
import os.path as osp
import sys

import cv2
import numpy as np
import skimage.data

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), 'data_preparation'))
from prepare_sr import bicubic_downsample, crop_starts  # noqa: E402  (imports basicsr_iln before basicsr)

from basicsr_iln.utils.errors import ConfigError, run_cli  # noqa: E402

# RGB photos in skimage/data (no pooch fetch needed); hubble_deep_field and retina are left out
# because their tiles are mostly black, colorwheel because it is synthetic.
TRAIN_PHOTOS = ('astronaut', 'coffee', 'rocket', 'stereo_motorcycle', 'immunohistochemistry')
VAL_PHOTOS = ('chelsea', 'camera', 'coins')  # camera and coins are gray
TILE = 192
VAL_SIZE = 240


def load_photo(name):
    """BGR uint8 photo from skimage.data; gray photos become 3 equal channels."""
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
        img = img[0]
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR if img.ndim == 2 else cv2.COLOR_RGB2BGR)


def training_tiles(name):
    img = load_photo(name)
    h, w = img.shape[:2]
    tops, lefts = crop_starts(h, TILE, TILE, 0), crop_starts(w, TILE, TILE, 0)
    return [(f'{name}_s{i:03d}', img[t:t + TILE, l:l + TILE])
            for i, (t, l) in enumerate(((t, l) for t in tops for l in lefts), start=1)]


def validation_crop(name):
    img = load_photo(name)
    top, left = (img.shape[0] - VAL_SIZE) // 2, (img.shape[1] - VAL_SIZE) // 2
    return name, img[top:top + VAL_SIZE, left:left + VAL_SIZE]


def write_if_changed(img, path):
    """Write a PNG unless the file already holds exactly these bytes; True when written."""
    ok, encoded = cv2.imencode('.png', np.ascontiguousarray(img))
    if not ok:
        raise OSError(f'OpenCV could not encode {path}')
    data = encoded.tobytes()
    if osp.isfile(path):
        with open(path, 'rb') as f:
            if f.read() == data:
                return False
    with open(path, 'wb') as f:
        f.write(data)
    return True


def build(out, scale):
    """Write the dataset; returns {relative folder: [file paths]}."""
    if scale < 2 or TILE % scale or VAL_SIZE % scale:
        raise ValueError(f'--scale must be >= 2 and divide {TILE} and {VAL_SIZE}, got {scale}')
    splits = {'train': [tile for name in TRAIN_PHOTOS for tile in training_tiles(name)],
              'val': [validation_crop(name) for name in VAL_PHOTOS]}
    folders, written = {}, 0
    for split, items in splits.items():
        for sub, make in (('HR', lambda hr: hr), (f'LR_x{scale}', lambda hr: bicubic_downsample(hr, scale))):
            folder = osp.join(out, split, sub)
            os.makedirs(folder, exist_ok=True)
            paths = [osp.join(folder, f'{stem}.png') for stem, _ in items]
            written += sum(write_if_changed(make(hr), path) for (_, hr), path in zip(items, paths))
            folders[f'{split}/{sub}'] = paths
    total = sum(len(p) for p in folders.values())
    print(f'quickstart x{scale} dataset in {osp.abspath(out)}: {written} files written, {total - written} unchanged')
    for rel, paths in folders.items():
        h, w = cv2.imread(paths[0]).shape[:2]
        size_mb = sum(osp.getsize(p) for p in paths) / 2**20
        print(f'  {rel:<12} {len(paths):3d} images  {h}x{w}  {size_mb:.1f} MB')
    return folders


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='datasets/quickstart', help='output root (default datasets/quickstart)')
    parser.add_argument('--scale', type=int, default=2, help='SR scale (default 2)')
    args = parser.parse_args(argv)
    try:
        build(args.out, args.scale)
    except ValueError as err:
        raise ConfigError(str(err)) from None


if __name__ == '__main__':
    run_cli(main)
