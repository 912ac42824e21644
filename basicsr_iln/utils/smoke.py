"""``--smoke``: any training option file turned into a run of about a minute on a CPU, on local data.

Why: the paper's files need DF2K, GPUs and days. A smoke run answers in a minute whether a file, its
architecture, normalisation and data pipeline work end to end (training steps, validation, checkpoint). It
keeps what defines the setting (task, architecture family, ``norm_type``, ``stdnorm``, ``eps``,
``window_size``, ``upsampler``, ``upscale``, ``in_chans``, losses, metrics) and changes only size, length and
data; each change is listed. The run is named ``<name>_smoke``, so a real run's folder is never touched.

Data, relative to the current directory (the repository root, as for every option file): clean photos from
``../shared/datasets`` (``train/Sun_Hays80`` to train; the file's own validation set when it is there, else
``sr/Set5``), else the quickstart photos (``datasets/quickstart``). A few centre crops of them, and for SR
their MATLAB-bicubic LR at the file's scale, are written once under ``datasets/cache/smoke/``. Deraining
needs real rainy/clean pairs: the file's own folders, cropped the same way.
"""
import json
import os
import shutil
import tempfile
from os import path as osp

import cv2
import torch

from basicsr_iln.data.bicubic import bicubic_downsample
from basicsr_iln.utils.checks import IMAGE_SUFFIXES

from .errors import ConfigError
from .network_config import arch_class, constructor_defaults

SMOKE_SUFFIX = '_smoke'
ITERATIONS = 20  # validation and a checkpoint at the last one
PRINT_FREQ = 10
BATCH = 2
TRAIN_IMAGES, VAL_IMAGES = 8, 3
MOD_CROP = 12  # crops are a multiple of every SR scale: one cached HR folder serves x2, x3 and x4
WINDOWS_PER_CROP = 2  # LQ crops span 2 x 2 windows: shifted windows and their masks are exercised
# Small network of the same family; a key is set only when the architecture takes it (gc: DRCT).
NETWORK = {'embed_dim': 24, 'depths': [2, 2], 'num_heads': [2, 2], 'gc': 8}
# HAT's channel attention has embed_dim // ratio channels: a ratio above the smaller width is capped to it.
# (DRCT accepts the same keys for option-file compatibility but has no such branch: left as they are.)
CHANNEL_RATIOS = ('compress_ratio', 'squeeze_factor')
CHANNEL_ATTENTION_FAMILIES = ('HAT', )

SHARED_DATASETS = osp.join('..', 'shared', 'datasets')
SHARED_TRAIN_SET = 'train/Sun_Hays80'
SHARED_DEFAULT_VAL_SET = 'sr/Set5'
QUICKSTART = osp.join('datasets', 'quickstart')
CACHE = osp.join('datasets', 'cache', 'smoke')
ABSENT = object()


def smoke_options(opt, opt_path):
    """``opt`` (a loaded option file) changed into a smoke run, and one ``key: old -> new`` line per change.

    Builds the data cache it points at (module docstring); no local data for a phase raises ConfigError
    naming the folders looked for. The result still goes through the option checks.
    """
    changes = []

    def put(dotted, value):
        *sections, key = dotted.split('.')
        node = opt
        for section in sections:
            if not isinstance(node.get(section), dict):
                node[section] = {}
            node = node[section]
        old = node.get(key, ABSENT)
        if old != value:
            node[key] = value
            changes.append(f'{dotted}: {_text(old)} -> {_text(value)}')

    if opt.get('name') is not None:  # else the option checks report it
        put('name', f"{opt['name']}{SMOKE_SUFFIX}")
    put('num_gpu', min(torch.cuda.device_count(), 1))
    if opt.get('compile'):
        put('compile', False)  # compiling takes minutes on a CPU
    if (opt.get('path') or {}).get('pretrain_network_g'):
        put('path.pretrain_network_g', None)  # the parent run's weights do not fit the small network
    put('train.total_iter', ITERATIONS)
    if (opt.get('train') or {}).get('global_batch_size') is not None:
        put('train.global_batch_size', None)
    if opt.get('val') is not None:
        put('val.val_freq', ITERATIONS)
    put('logger.print_freq', PRINT_FREQ)
    put('logger.save_checkpoint_freq', ITERATIONS)

    scale = opt.get('scale', 1)
    if MOD_CROP % scale:
        raise ConfigError(f'--smoke: scale must divide {MOD_CROP} (1, 2, 3, 4, 6 or 12), got {scale} in {opt_path}')
    network = opt.get('network_g') or {}
    arch = arch_class(network.get('type'))
    defaults = constructor_defaults(arch)
    lq_crop = WINDOWS_PER_CROP * network.get('window_size', defaults['window_size'])
    for key, value in _small_network(network, defaults, lq_crop, getattr(arch, 'family', None)).items():
        put(f'network_g.{key}', value)

    gt_size = scale * lq_crop
    side = 2 * gt_size // MOD_CROP * MOD_CROP  # of the cached crops: room for random training crops
    for phase, dataset in (opt.get('datasets') or {}).items():
        if not isinstance(dataset, dict):
            continue  # the option checks report it
        where = f'datasets.{phase}'
        count = TRAIN_IMAGES if phase == 'train' else VAL_IMAGES
        for key, value in _smoke_data(dataset, where, scale, side, count, opt_path).items():
            put(f'{where}.{key}', value)
        if phase == 'train':
            put(f'{where}.gt_size', gt_size)
            put(f'{where}.batch_size_per_gpu', BATCH)
            put(f'{where}.num_worker_per_gpu', 0)
            if dataset.get('persistent_workers'):
                put(f'{where}.persistent_workers', False)  # needs loader workers
    return opt, changes


def _text(value):
    if value is ABSENT:
        return '(absent)'
    return value if isinstance(value, str) else json.dumps(value)


def _small_network(network, defaults, lq_crop, family):
    """The network_g values of the small network: NETWORK, img_size = the LQ crop, and for a family with
    channel attention the capped channel ratios (``defaults``: the architecture's constructor defaults,
    which also say which keys it takes)."""
    small = {key: value for key, value in NETWORK.items() if key in defaults}
    small['img_size'] = lq_crop
    width = small['embed_dim']
    for key in CHANNEL_RATIOS if family in CHANNEL_ATTENTION_FAMILIES else ():
        if network.get(key, defaults[key]) > width:
            small[key] = width
    return small


def _smoke_data(dataset, where, scale, side, count, opt_path):
    """The data keys of one dataset pointed at cached crops of local images (``side`` px at most)."""
    data = {}
    if dataset.get('meta_info_file'):
        data['meta_info_file'] = None  # it lists the files of the original set
    if (dataset.get('io_backend') or {}).get('type', 'disk') != 'disk':
        data['io_backend'] = {'type': 'disk'}
    kind = dataset.get('type')
    if kind in ('GaussianNoiseDataset', 'JPEGCompressionDataset'):  # degraded on the fly from clean images
        data['dataroot_gt'] = _cached_crops(_clean_source(dataset, where, opt_path), side, count)
    elif kind == 'PairedImageDataset' and scale > 1:
        hr = _cached_crops(_clean_source(dataset, where, opt_path), side, count)
        data.update(dataroot_gt=hr, dataroot_lq=_cached_downsampled(hr, scale))
        if dataset.get('filename_tmpl', '{}') != '{}':
            data['filename_tmpl'] = '{}'  # the cache names LR files as their HR ones
    elif kind == 'PairedImageDataset':  # same-size pairs (deraining): only real pairs will do
        data.update(_cached_pairs(dataset, where, side, count, opt_path))
    else:
        raise ConfigError(f"--smoke: {where}.type must be PairedImageDataset, GaussianNoiseDataset or "
                          f"JPEGCompressionDataset in {opt_path}, got {kind!r}")
    return data


def _clean_source(dataset, where, opt_path):
    """(label, folder) of the first local folder of clean photos for this phase."""
    if where == 'datasets.train':
        shared = [osp.join(SHARED_DATASETS, SHARED_TRAIN_SET)]
        quickstart = osp.join(QUICKSTART, 'train', 'HR')
    else:
        name = str(dataset.get('name'))
        shared = [osp.join(SHARED_DATASETS, group, name) for group in ('sr', 'dn', 'car')]
        shared.append(osp.join(SHARED_DATASETS, SHARED_DEFAULT_VAL_SET))
        quickstart = osp.join(QUICKSTART, 'val', 'HR')
    for folder in shared:
        if _images(folder):
            return osp.basename(folder), folder
    if _images(quickstart):
        return f"quickstart_{osp.basename(osp.dirname(quickstart))}", quickstart
    raise ConfigError(f'--smoke: no local images for {where} of {opt_path}: looked for {", ".join(shared)} and '
                      f'{quickstart} (make the latter with python scripts/make_quickstart_dataset.py)')


def _images(folder):
    """Sorted paths of the images directly in ``folder`` ([] when it does not exist)."""
    if not osp.isdir(folder):
        return []
    return [osp.join(folder, n) for n in sorted(os.listdir(folder)) if n.lower().endswith(IMAGE_SUFFIXES)]


def _centre_crop(img, side):
    """The centre square of at most ``side`` px, its side a multiple of MOD_CROP."""
    h, w = img.shape[:2]
    size = min(side, h, w) // MOD_CROP * MOD_CROP
    top, left = (h - size) // 2, (w - size) // 2
    return img[top:top + size, left:left + size]


def _read(path):
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ConfigError(f'--smoke: cannot read image {path}')
    return img


def _write(img, path):
    if not cv2.imwrite(path, img):
        raise OSError(f'OpenCV could not write {path}')


def _cached_crops(source, side, count):
    """HR folder of the centre crops of the first ``count`` images of ``source`` = (label, folder)."""
    label, folder = source
    paths = _images(folder)[:count]
    target = osp.join(CACHE, f'{label}_{count}x{side}px', 'HR')

    def write(out):
        for path in paths:
            _write(_centre_crop(_read(path), side), osp.join(out, f'{_stem(path)}.png'))

    return _build_once(target, write)


def _cached_downsampled(hr_folder, scale):
    """``LR_x<scale>`` beside ``hr_folder``: the MATLAB-bicubic LR of each crop, with the same file names."""
    def write(out):
        for path in _images(hr_folder):
            _write(bicubic_downsample(_read(path), scale), osp.join(out, osp.basename(path)))

    return _build_once(osp.join(osp.dirname(hr_folder), f'LR_x{scale}'), write)


def _cached_pairs(dataset, where, side, count, opt_path):
    """dataroot_gt / dataroot_lq of the same centre crops of the file's own first ``count`` pairs."""
    gt, lq = dataset.get('dataroot_gt'), dataset.get('dataroot_lq')
    targets = _images(gt) if gt else []
    if not (targets and lq and osp.isdir(lq)):
        raise ConfigError(f'--smoke: no local image pairs for {where} of {opt_path} (same-size pairs: deraining): '
                          f'looked for {gt} and {lq}; they cannot be made from clean photos (datasets/README.md)')
    root = osp.join(CACHE, f'{osp.basename(osp.dirname(osp.normpath(gt)))}_{count}x{side}px')
    names = [osp.basename(path) for path in targets[:count]]
    for name in names:
        if not osp.isfile(osp.join(lq, name)):
            raise ConfigError(f'--smoke: {where}: {osp.join(gt, name)} has no partner {osp.join(lq, name)}')

    def writer(folder):
        def write(out):
            for name in names:
                _write(_centre_crop(_read(osp.join(folder, name)), side), osp.join(out, f'{_stem(name)}.png'))
        return write

    return {'dataroot_gt': _build_once(osp.join(root, 'target'), writer(gt)),
            'dataroot_lq': _build_once(osp.join(root, 'input'), writer(lq))}


def _stem(path):
    return osp.splitext(osp.basename(path))[0]


def _build_once(folder, write):
    """``folder``, made by ``write(temporary folder)`` and renamed unless it exists: a killed or concurrent
    build (DDP ranks) never leaves a half-written folder under the final name."""
    if osp.isdir(folder):
        return folder
    os.makedirs(osp.dirname(folder), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.tmp_', dir=osp.dirname(folder))
    try:
        write(tmp)
        os.rename(tmp, folder)
    except OSError:
        if not osp.isdir(folder):  # not a concurrent build that finished first
            raise
    finally:
        if osp.isdir(tmp):
            shutil.rmtree(tmp)
    return folder
