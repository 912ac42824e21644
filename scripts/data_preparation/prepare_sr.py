#!/usr/bin/env python
"""Prepare super-resolution data with BasicSR's own tools (see datasets/README.md for full commands).

Subcommands:
  modcrop            HR folder(s) -> HR cropped to a multiple of --scale
  bicubic            HR folder(s) -> ROOT/HR and ROOT/LR_bicubic/X{s} (MATLAB bicubic, uint8)
  extract_subimages  folder -> overlapping crop_size sub-images (BasicSR's extract_subimages scheme)
  lmdb               folder -> *.lmdb with meta_info.txt (BasicSR's make_lmdb_from_imgs)

Outputs are PNG files named after the input file stem, so an HR folder and its LR folders hold the
same file names (BasicSR's paired datasets match on names). An existing output folder is an error
unless --overwrite is given, in which case it is deleted and rebuilt.
"""
import argparse
import math
import os
import os.path as osp
import shutil
import sys
from functools import partial
from multiprocessing import Pool

import cv2
import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # works from a bare clone too
from basicsr_iln.data.bicubic import bicubic_downsample  # noqa: E402  (installs the torchvision alias)
from basicsr_iln.utils.checks import IMAGE_SUFFIXES  # noqa: E402
from basicsr_iln.utils.errors import ConfigError, run_cli  # noqa: E402
from basicsr.data.transforms import mod_crop
from basicsr.utils.lmdb_util import make_lmdb_from_imgs


def list_images(folder):
    """Sorted image file names directly inside `folder`."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'input folder does not exist: {folder}')
    names = sorted(n for n in os.listdir(folder)
                   if osp.splitext(n)[1].lower() in IMAGE_SUFFIXES and osp.isfile(osp.join(folder, n)))
    if not names:
        raise ValueError(f'no images ({", ".join(IMAGE_SUFFIXES)}) in input folder {folder}')
    return names


def collect_images(folders):
    """(path, stem) of every image in `folders`, sorted by stem; outputs are named by stem, so two
    inputs with the same stem would overwrite each other and are rejected."""
    owner = {}
    for folder in folders:
        for name in list_images(folder):
            stem, path = osp.splitext(name)[0], osp.join(folder, name)
            if stem in owner:
                raise ValueError(f'{path} and {owner[stem]} would both be written as {stem}.png')
            owner[stem] = path
    return [(owner[stem], stem) for stem in sorted(owner)]


def read_image(path):
    """uint8 image as stored (HW gray or HWC BGR)."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read image {path} (corrupt or not an image file)')
    if img.dtype != np.uint8:
        raise ValueError(f'image {path} must be 8-bit, got dtype {img.dtype}')
    if img.ndim == 3 and img.shape[2] != 3:
        raise ValueError(f'image {path} must be gray or 3-channel, got {img.shape[2]} channels')
    return img


def write_png(img, path):
    if not cv2.imwrite(path, np.ascontiguousarray(img)):
        raise OSError(f'OpenCV could not write {path}')


def crop_starts(length, crop_size, step, thresh_size):
    """Start offsets along one axis: every `step`, plus a last crop flush with the end when the
    uncovered remainder exceeds `thresh_size` (BasicSR's extract_subimages rule)."""
    starts = list(range(0, length - crop_size + 1, step))
    if length - (starts[-1] + crop_size) > thresh_size:
        starts.append(length - crop_size)
    return starts


def prepare_outputs(folders, overwrite, inputs=(), create=True):
    """Make fresh output folders. Existing ones are an error without `overwrite` (checked for all
    before anything is deleted); an input inside an output is always an error, as overwriting
    would delete it."""
    outs = [osp.abspath(f) for f in folders]
    for folder, out in zip(folders, outs):
        for inp in map(osp.abspath, inputs):
            if inp == out or inp.startswith(out + os.sep):
                raise ValueError(f'output folder {folder} contains input {inp}; choose another output')
        if osp.exists(out) and not overwrite:
            raise FileExistsError(f'output folder {folder} already exists; pass --overwrite to replace it')
    for out in outs:
        if osp.exists(out):
            shutil.rmtree(out)
        if create:
            os.makedirs(out)


def _map(func, items, workers):
    if workers > 1:
        with Pool(workers) as pool:
            return pool.map(func, items, chunksize=1)
    return [func(item) for item in items]


def _modcrop_one(job, output, scale):
    path, stem = job
    write_png(mod_crop(read_image(path), scale), osp.join(output, f'{stem}.png'))


def modcrop(inputs, output, scale, overwrite=False, workers=1):
    """Crop every image to a multiple of `scale` (bottom/right rows and columns are dropped)."""
    if scale < 1:
        raise ValueError(f'scale must be a positive integer, got {scale}')
    jobs = collect_images(inputs)
    prepare_outputs([output], overwrite, inputs)
    _map(partial(_modcrop_one, output=output, scale=scale), jobs, workers)
    print(f'modcrop x{scale}: {len(jobs)} images -> {output}')
    return len(jobs)


def _bicubic_one(job, output, scales, hr_mod):
    path, stem = job
    hr = mod_crop(read_image(path), hr_mod)
    write_png(hr, osp.join(output, 'HR', f'{stem}.png'))
    for scale in scales:
        write_png(bicubic_downsample(mod_crop(hr, scale), scale),
                  osp.join(output, 'LR_bicubic', f'X{scale}', f'{stem}.png'))


def bicubic(inputs, output, scales=(2, 3, 4), per_scale=False, overwrite=False, workers=1):
    """Write ``output/HR`` and ``output/LR_bicubic/X{s}``.

    Default: HR is mod-cropped to the lcm of `scales` (12 for 2,3,4) and every LR is exactly HR/s,
    which paired training crops need. `per_scale`: HR is kept whole and X{s} is made from HR
    mod-cropped by s — the standard benchmark protocol (BasicSR crops GT to s * LR at test time).
    """
    if not scales or any(s < 2 for s in scales):
        raise ValueError(f'scales must be integers >= 2, got {scales}')
    jobs = collect_images(inputs)
    targets = [osp.join(output, 'HR')] + [osp.join(output, 'LR_bicubic', f'X{s}') for s in scales]
    prepare_outputs(targets, overwrite, inputs)
    hr_mod = 1 if per_scale else math.lcm(*scales)
    _map(partial(_bicubic_one, output=output, scales=tuple(scales), hr_mod=hr_mod), jobs, workers)
    mode = 'HR kept whole, LR per scale' if per_scale else f'HR mod-cropped to {hr_mod}'
    print(f'bicubic x{",".join(map(str, scales))} ({mode}): {len(jobs)} images -> {output}/HR, {output}/LR_bicubic')
    return len(jobs)


def _subimages_one(job, output, crop_size, step, thresh_size):
    path, stem = job
    img = read_image(path)
    h, w = img.shape[:2]
    if h < crop_size or w < crop_size:
        raise ValueError(f'image {path} ({h}x{w}) is smaller than crop size {crop_size}')
    index = 0
    for top in crop_starts(h, crop_size, step, thresh_size):
        for left in crop_starts(w, crop_size, step, thresh_size):
            index += 1
            write_png(img[top:top + crop_size, left:left + crop_size], osp.join(output, f'{stem}_s{index:03d}.png'))
    return index


def extract_subimages(input_folder, output, crop_size=480, step=240, thresh_size=0, scale=1, overwrite=False,
                      workers=1):
    """Cut every image into crop_size squares named ``{stem}_s{NNN}.png``.

    Give the HR sizes and `scale` s for an LR folder: sizes are divided by s, so LR and HR
    sub-images with the same name cover the same region.
    """
    sizes = {'crop_size': crop_size, 'step': step, 'thresh_size': thresh_size}
    bad = {k: v for k, v in sizes.items() if v % scale}
    if bad:
        raise ValueError(f'{bad} not divisible by scale {scale}')
    if crop_size <= 0 or step <= 0 or thresh_size < 0:
        raise ValueError(f'need crop_size > 0, step > 0, thresh_size >= 0, got {sizes}')
    jobs = collect_images([input_folder])
    prepare_outputs([output], overwrite, [input_folder])
    counts = _map(
        partial(_subimages_one, output=output, crop_size=crop_size // scale, step=step // scale,
                thresh_size=thresh_size // scale), jobs, workers)
    print(f'extract_subimages: {len(jobs)} images -> {sum(counts)} sub-images of {crop_size // scale}px in {output}')
    return sum(counts)


def make_lmdb(input_folder, output, overwrite=False, workers=1, compress_level=1):
    """Pack a folder into ``output`` (*.lmdb) with keys = file stems, readable by BasicSR's lmdb backend."""
    if not output.endswith('.lmdb'):
        raise ValueError(f'lmdb output must end with .lmdb, got {output}')
    names = list_images(input_folder)
    keys = [osp.splitext(n)[0] for n in names]
    for name, key in zip(names, keys):
        # BasicSR reads keys back as meta_info line.split('.')[0] and encodes them as ASCII.
        if '.' in key or not key.isascii():
            raise ValueError(f'{osp.join(input_folder, name)}: lmdb keys must be ASCII without dots, got {key!r}')
        if not cv2.haveImageReader(osp.join(input_folder, name)):
            raise ValueError(f'cannot read image {osp.join(input_folder, name)} (corrupt or not an image file)')
    if len(set(keys)) != len(keys):
        raise ValueError(f'{input_folder} has several images with the same stem; lmdb keys must be unique')
    prepare_outputs([output], overwrite, [input_folder], create=False)  # make_lmdb_from_imgs creates it
    make_lmdb_from_imgs(input_folder, output, names, keys, compress_level=compress_level,
                        multiprocessing_read=workers > 1, n_thread=max(workers, 1))
    return len(names)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)

    def add_common(p):
        p.add_argument('--overwrite', action='store_true', help='replace existing output folders')
        p.add_argument('--workers', type=int, default=1, help='worker processes (default 1)')

    p = sub.add_parser('modcrop', help='crop HR images to a multiple of --scale')
    p.add_argument('--input', nargs='+', required=True, help='HR folder(s)')
    p.add_argument('--output', required=True)
    p.add_argument('--scale', type=int, required=True)
    add_common(p)

    p = sub.add_parser('bicubic', help='HR folder(s) -> OUTPUT/HR and OUTPUT/LR_bicubic/X{s}')
    p.add_argument('--input', nargs='+', required=True, help='HR folder(s), merged into one set')
    p.add_argument('--output', required=True, help='dataset root, e.g. datasets/DF2K')
    p.add_argument('--scales', type=int, nargs='+', default=[2, 3, 4])
    p.add_argument('--per-scale', action='store_true',
                   help='benchmark protocol: keep HR whole, make X{s} from HR mod-cropped by s')
    add_common(p)

    p = sub.add_parser('extract_subimages', help='cut images into overlapping sub-images')
    p.add_argument('--input', required=True)
    p.add_argument('--output', required=True)
    p.add_argument('--crop-size', type=int, default=480, help='HR crop size (default 480)')
    p.add_argument('--step', type=int, default=240, help='HR step (default 240)')
    p.add_argument('--thresh-size', type=int, default=0, help='HR threshold (default 0)')
    p.add_argument('--scale', type=int, default=1, help='for an LR folder: divide the HR sizes by this')
    add_common(p)

    p = sub.add_parser('lmdb', help='pack a folder into an lmdb')
    p.add_argument('--input', required=True)
    p.add_argument('--output', required=True, help='path ending in .lmdb')
    p.add_argument('--compress-level', type=int, default=1, help='PNG compression level in the lmdb')
    add_common(p)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == 'modcrop':
            modcrop(args.input, args.output, args.scale, args.overwrite, args.workers)
        elif args.command == 'bicubic':
            bicubic(args.input, args.output, args.scales, args.per_scale, args.overwrite, args.workers)
        elif args.command == 'extract_subimages':
            extract_subimages(args.input, args.output, args.crop_size, args.step, args.thresh_size, args.scale,
                              args.overwrite, args.workers)
        else:
            make_lmdb(args.input, args.output, args.overwrite, args.workers, args.compress_level)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise ConfigError(str(err)) from None


if __name__ == '__main__':
    run_cli(main)
