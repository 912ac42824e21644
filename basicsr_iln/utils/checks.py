"""Pre-flight checks of dataset options and files, so bad data fails before training starts, with
the option key or the file named (BasicSR would fail later with an assertion or a shape error)."""
import glob
import os
import re
from os import path as osp

from basicsr.data import build_dataset
from PIL import Image, UnidentifiedImageError

from .errors import ConfigError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def list_images(folder, key):
    if not osp.exists(folder):
        raise ConfigError(f"data folder '{folder}' (option {key}) does not exist")
    if not osp.isdir(folder):
        raise ConfigError(f"option {key} must be a folder, got the file '{folder}'")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise ConfigError(f"data folder '{folder}' (option {key}) contains no images")
    return names


def image_header(path):
    """(width, height, mode, more than 8 bits per channel?) from the header; unreadable or truncated files
    raise ConfigError."""
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            rawmode = img.tile[0][3] if img.tile else ''  # e.g. 'RGB;16B': Pillow shows 48-bit PNGs as mode RGB
            rawmode = rawmode if isinstance(rawmode, str) else str(rawmode[0] if rawmode else '')
            deep = img.mode.startswith(('I', 'F')) or ';16' in rawmode
            return img.size[0], img.size[1], img.mode, deep
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ConfigError(f"cannot read image '{path}': {err}") from None


def checked_image_size(path, where, dataset_opt):
    """(width, height) of an image BasicSR reads faithfully. Its reader (OpenCV, IMREAD_COLOR) would
    silently cut 16-bit images to 8 bits and drop alpha channels, so those are refused; gray images
    are fine (read as 3 equal channels, or as Y with ``color: y``)."""
    width, height, mode, deep = image_header(path)
    problem = ('more than 8 bits per channel' if deep else 'an alpha channel' if 'A' in mode else
               'a palette' if mode == 'P' else None)
    if problem and dataset_opt.get('allow_special_modes') is not True:
        raise ConfigError(f"{where}: image '{path}' has {problem} (mode {mode}); BasicSR reads 8-bit gray/RGB only "
                          '(deeper images are cut to 8 bits, alpha is dropped): convert it to 8-bit gray or RGB first')
    return width, height


def _check_crop(dataset_opt, where, path, width, height):
    """Training crops ``gt_size`` squares: BasicSR fails on a smaller image only in the first iterations."""
    gt_size = dataset_opt.get('gt_size')
    if dataset_opt.get('phase') == 'train' and gt_size and gt_size > min(width, height):
        raise ConfigError(f"{where}.gt_size is {gt_size} but GT image '{path}' is only {width}x{height}: "
                          'random crops need gt_size <= the smallest image side')


def _check_paired(dataset_opt, where, scale):
    gt_dir, lq_dir = dataset_opt['dataroot_gt'], dataset_opt['dataroot_lq']
    gt_names = list_images(gt_dir, f'{where}.dataroot_gt')
    lq_names = list_images(lq_dir, f'{where}.dataroot_lq')
    if len(gt_names) != len(lq_names):
        raise ConfigError(f'{where}: {len(gt_names)} GT images in {gt_dir} but {len(lq_names)} LQ images in {lq_dir}')
    tmpl = dataset_opt.get('filename_tmpl', '{}')
    lq_by_stem = {osp.splitext(n)[0]: n for n in lq_names}
    lq_set = set(lq_names)
    for gt_name in gt_names:
        stem, ext = osp.splitext(gt_name)
        lq_name = tmpl.format(stem) + ext  # BasicSR's pairing: the template's name with the GT's extension
        if lq_name not in lq_set:
            other = lq_by_stem.get(tmpl.format(stem))
            found = f"; found '{other}', but BasicSR pairs the extension too" if other else ''
            raise ConfigError(f"{where}: GT image '{gt_name}' has no LQ partner '{lq_name}' in {lq_dir} "
                              f'(filename_tmpl {tmpl!r}){found}')
        gw, gh = checked_image_size(osp.join(gt_dir, gt_name), where, dataset_opt)
        lw, lh = checked_image_size(osp.join(lq_dir, lq_name), where, dataset_opt)
        if gh // scale != lh or gw // scale != lw:
            raise ConfigError(f"{where}: LQ '{lq_name}' is {lw}x{lh} but GT '{gt_name}' is {gw}x{gh}; with "
                              f'scale {scale} the LQ must be {gw // scale}x{gh // scale}')
        _check_crop(dataset_opt, where, osp.join(gt_dir, gt_name), gw, gh)


def check_datasets(opt):
    """Existing non-empty folders of readable 8-bit images at least ``gt_size`` big, channels matching the
    network, and for paired folders: counts, names and sizes (the option keys and types: schema.py)."""
    for phase, dataset_opt in opt['datasets'].items():
        where = f'datasets.{phase}'
        backend = (dataset_opt.get('io_backend') or {}).get('type', 'disk')
        for key in ('dataroot_gt', 'dataroot_lq'):
            if key in dataset_opt and dataset_opt[key] is None:
                raise ConfigError(f'option {where}.{key} is empty: set it to your data folder')
            if dataset_opt.get(key) and backend == 'lmdb' and not osp.isdir(dataset_opt[key]):
                raise ConfigError(f"lmdb '{dataset_opt[key]}' (option {where}.{key}) does not exist")
        if backend != 'disk':
            continue
        if dataset_opt.get('dataroot_gt') and dataset_opt.get('dataroot_lq'):
            _check_paired(dataset_opt, where, opt['scale'])
        else:
            for key in ('dataroot_gt', 'dataroot_lq'):
                for name in list_images(dataset_opt[key], f'{where}.{key}') if dataset_opt.get(key) else []:
                    path = osp.join(dataset_opt[key], name)
                    width, height = checked_image_size(path, where, dataset_opt)
                    if key == 'dataroot_gt':
                        _check_crop(dataset_opt, where, path, width, height)
        _check_channels(opt['network_g'], dataset_opt, where)


def _check_channels(net_opt, dataset_opt, where):
    """BasicSR reads every image as 3 channels unless the dataset converts to Y / gray, and a channel
    mismatch would only fail inside the first forward pass."""
    in_chans = net_opt.get('in_chans', net_opt.get('num_in_ch', 3))
    gray = dataset_opt.get('color') in ('y', 'gray') or dataset_opt.get('in_ch') == 1
    if in_chans == (1 if gray else 3):
        return
    if gray:
        how = ', '.join(f'{where}.{key}: {dataset_opt[key]}' for key in ('color', 'in_ch') if key in dataset_opt)
        fix = 'drop that option or set network_g.in_chans: 1'
    else:
        how = 'RGB; gray files too are read as 3 equal channels'
        fix = f'set {where}.color: y to train on the Y channel, or network_g.in_chans: 3'
    raise ConfigError(f'network_g.in_chans is {in_chans} but {where} gives {1 if gray else 3}-channel images '
                      f'({how}): {fix}')


def check_checkpoint_path(opt):
    """``path.pretrain_network_g``, if set, must be a file: fail before any folder is created. A fine-tuning
    file (x4 from x2, a noise level from another) names the run that writes the checkpoint."""
    path = opt['path'].get('pretrain_network_g')
    if not path or osp.isfile(path):
        return
    what = 'is a folder, not a checkpoint file' if osp.isdir(path) else 'not found'
    parent = re.search(r'experiments/([^/]+)/models/[^/]+$', path.replace(osp.sep, '/'))
    hint = ''
    if parent and not osp.isdir(path):
        options = sorted(glob.glob(osp.join('options', 'train', '*', f'{parent.group(1)}.yml')))
        how = f'python basicsr_iln/train.py -opt {options[0]}' if options else f'the training run {parent.group(1)}'
        hint = f': it is written by {parent.group(1)}; run that first ({how})'
    raise ConfigError(f'checkpoint {what}: {path} (option path.pretrain_network_g){hint}')


def check_writable_folder(folder, what):
    """``folder`` can be created (or replaced) below its nearest existing ancestor."""
    parent = osp.dirname(osp.abspath(folder))
    while not osp.exists(parent):
        parent = osp.dirname(parent)
    if not osp.isdir(parent):
        raise ConfigError(f"cannot create the {what} folder {folder}: '{parent}' is a file, not a folder "
                          '(set BASICSR_ILN_ROOT or run from a writable folder)')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot create the {what} folder {folder}: '{parent}' is not writable "
                          '(set BASICSR_ILN_ROOT or run from a writable folder)')


def build_dataset_checked(dataset_opt, phase):
    """BasicSR's ``build_dataset``; its assertion/lookup failures become one error naming ``datasets.<phase>``."""
    try:
        return build_dataset(dataset_opt)
    except (AssertionError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f'datasets.{phase} ({dataset_opt["type"]}): {type(err).__name__}: {err}') from None
