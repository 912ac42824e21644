"""Pre-flight checks of dataset options and files, so bad data fails before training starts, with
the option key or the file named (BasicSR would fail later with an assertion or a shape error)."""
import os
from os import path as osp

from basicsr.utils.registry import DATASET_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY
from PIL import Image, UnidentifiedImageError

from .errors import ConfigError
from .options import did_you_mean

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def _registered(registry):
    return sorted(name for name, _ in registry)


def check_registered(kind, name, registry, where):
    if name not in registry:
        valid = _registered(registry)
        raise ConfigError(f"unknown {kind} '{name}' at {where}.{did_you_mean(name, valid)} Valid: {', '.join(valid)}")


def list_images(folder, key):
    if not osp.exists(folder):
        raise ConfigError(f"data folder '{folder}' (option {key}) does not exist")
    if not osp.isdir(folder):
        raise ConfigError(f"option {key} must be a folder, got the file '{folder}'")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise ConfigError(f"data folder '{folder}' (option {key}) contains no images")
    return names


def image_size(path):
    """(width, height, mode) from the header; unreadable or truncated files raise ConfigError."""
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            return img.size[0], img.size[1], img.mode
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ConfigError(f"cannot read image '{path}': {err}") from None


def _check_paired(dataset_opt, where, scale):
    gt_dir, lq_dir = dataset_opt['dataroot_gt'], dataset_opt['dataroot_lq']
    gt_names = list_images(gt_dir, f'{where}.dataroot_gt')
    lq_names = list_images(lq_dir, f'{where}.dataroot_lq')
    if len(gt_names) != len(lq_names):
        raise ConfigError(f'{where}: {len(gt_names)} GT images in {gt_dir} but {len(lq_names)} LQ images in {lq_dir}')
    tmpl = dataset_opt.get('filename_tmpl', '{}')
    lq_by_stem = {osp.splitext(n)[0]: n for n in lq_names}
    for gt_name in gt_names:
        stem = tmpl.format(osp.splitext(gt_name)[0])
        if stem not in lq_by_stem:
            raise ConfigError(f"{where}: GT image '{gt_name}' has no LQ partner '{stem}.*' in {lq_dir} "
                              f'(filename_tmpl {tmpl!r})')
        gw, gh, gmode = image_size(osp.join(gt_dir, gt_name))
        lw, lh, _ = image_size(osp.join(lq_dir, lq_by_stem[stem]))
        if gh // scale != lh or gw // scale != lw:
            raise ConfigError(f"{where}: LQ '{lq_by_stem[stem]}' is {lw}x{lh} but GT '{gt_name}' is {gw}x{gh}; with "
                              f'scale {scale} the LQ must be {gw // scale}x{gh // scale}')
        if gmode in ('I;16', 'I;16B', 'I', 'RGBA', 'LA', 'P') and dataset_opt.get('allow_special_modes') is not True:
            raise ConfigError(f"{where}: image '{osp.join(gt_dir, gt_name)}' has mode {gmode} (16-bit, alpha or "
                              'palette); convert it to 8-bit gray or RGB first')


def check_datasets(opt):
    """Registered types, existing non-empty folders, and for paired folders: counts, names and sizes."""
    for phase, dataset_opt in opt['datasets'].items():
        where = f'datasets.{phase}'
        check_registered('dataset type', dataset_opt['type'], DATASET_REGISTRY, f'{where}.type')
        backend = (dataset_opt.get('io_backend') or {}).get('type', 'disk')
        for key in ('dataroot_gt', 'dataroot_lq'):
            if key in dataset_opt and dataset_opt[key] is None:
                raise ConfigError(f'option {where}.{key} is empty: set it to your data folder')
            if dataset_opt.get(key) and backend == 'lmdb' and not osp.isdir(dataset_opt[key]):
                raise ConfigError(f"lmdb '{dataset_opt[key]}' (option {where}.{key}) does not exist")
        if backend != 'disk':
            continue
        if dataset_opt.get('dataroot_gt') and dataset_opt.get('dataroot_lq'):
            _check_paired(dataset_opt, where, opt.get('scale', 1))
        else:
            for key in ('dataroot_gt', 'dataroot_lq'):
                if dataset_opt.get(key):
                    list_images(dataset_opt[key], f'{where}.{key}')


def check_model_and_metrics(opt):
    check_registered('model_type', opt['model_type'], MODEL_REGISTRY, 'model_type')
    for name, metric in ((opt.get('val') or {}).get('metrics') or {}).items():
        check_registered('metric type', metric.get('type'), METRIC_REGISTRY, f'val.metrics.{name}.type')
