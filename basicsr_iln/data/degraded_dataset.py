"""Datasets that read clean images and make the degraded input on the fly (denoising, JPEG CAR).

Protocol, checked against SwinIR's ``main_test_swinir.py`` (tasks gray_dn/color_dn, jpeg_car/
color_jpeg_car) and KAIR's training datasets:

* Denoising: lq = gt/255 + N(0, (sigma/255)^2), **not clipped** to [0, 1] (SwinIR feeds the
  unclipped float image to the network; KAIR trains on unclipped noise too). SwinIR reseeds
  ``np.random.seed(0)`` before every test image, so all test images share one noise pattern; we
  instead seed each image from a stable hash of (file stem, sigma) with NumPy's PCG64, so noise is
  independent across images yet identical across runs, processes and machines (for a given NumPy
  version). The noise realisation therefore differs from SwinIR's, the statistics do not.
* JPEG: the clean uint8 image is encoded with ``cv2.imencode('.jpg', IMWRITE_JPEG_QUALITY=q)``
  (BGR for colour, as OpenCV does) and decoded back; lq = decoded uint8 / 255.
* Gray (``in_ch: 1`` or ``color: gray``): SwinIR converts colour files in two different ways, which
  only matters for colour test sets. jpeg_car (LIVE1-gray) takes the Y channel (BT.601, rounded to
  uint8) and leaves single-channel files untouched: ``gray_mode: y`` (default). gray_dn (Urban100
  gray) uses ``cv2.imread(path, IMREAD_GRAYSCALE)``: ``gray_mode: gray`` decodes the same way (for
  PNG the codec's own conversion, which can differ by one level from ``cvtColor(BGR2GRAY)``).
"""
import hashlib
import os.path as osp
import random

import cv2
import numpy as np
from torch.utils import data

from basicsr.data.data_util import paths_from_lmdb
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, bgr2ycbcr, imfrombytes, img2tensor, scandir
from basicsr.utils.registry import DATASET_REGISTRY

from basicsr_iln.utils.checks import IMAGE_SUFFIXES


def noise_seed(path, sigma):
    """64-bit seed for the test-phase noise of one image: sha256 of '<file stem>:<sigma>'.

    The stem (no folder, no extension) makes a disk folder and its lmdb copy (keyed by stem) agree,
    and float(sigma) makes 15 and 15.0 agree. Python's hash() is salted per process, so never used.
    """
    stem = osp.splitext(osp.basename(str(path)))[0]
    digest = hashlib.sha256(f'{stem}:{float(sigma)!r}'.encode('utf-8')).digest()
    return int.from_bytes(digest[:8], 'little')


def seeded_noise_rng(path, sigma):
    """The test-phase noise generator of one image (see ``noise_seed``)."""
    return np.random.Generator(np.random.PCG64(noise_seed(path, sigma)))


def add_gaussian_noise(img, sigma, rng):
    """uint8 HWC image -> float32 image/255 + N(0, (sigma/255)^2) drawn from ``rng``, not clipped."""
    return (img / 255. + rng.normal(0., sigma / 255., img.shape)).astype(np.float32)


def jpeg_roundtrip(img, quality, path):
    """uint8 HWC image (BGR or 1 channel) -> float32 [0, 1] image after OpenCV JPEG at ``quality``."""
    ok, encoded = cv2.imencode('.jpg', img, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise RuntimeError(f'OpenCV could not JPEG-encode {path}')
    flag = cv2.IMREAD_GRAYSCALE if img.shape[2] == 1 else cv2.IMREAD_COLOR
    return cv2.imdecode(encoded, flag).reshape(img.shape).astype(np.float32) / 255.


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _parse_level(opt, key, range_key, low, high, integer, is_train):
    """Read a degradation level given as a fixed `key` or (training only) a `range_key: [lo, hi]`."""
    fixed, span = opt.get(key), opt.get(range_key)
    kind = 'an integer' if integer else 'a number'

    def check(name, value):
        if not _is_number(value) or (integer and int(value) != value):
            raise ValueError(f'option {name} must be {kind} in [{low}, {high}], got {value!r}')
        if not low <= value <= high:
            raise ValueError(f'option {name} must be in [{low}, {high}], got {value!r}')
        return int(value) if integer else float(value)

    if fixed is not None and span is not None:
        raise ValueError(f'give either {key} or {range_key}, not both (got {key}={fixed!r}, {range_key}={span!r})')
    if span is not None:
        if not is_train:
            raise ValueError(f'{range_key} is for training only; phase {opt.get("phase")!r} needs a fixed {key}')
        if not isinstance(span, (list, tuple)) or len(span) != 2:
            raise ValueError(f'option {range_key} must be [low, high], got {span!r}')
        lo, hi = check(f'{range_key}[0]', span[0]), check(f'{range_key}[1]', span[1])
        if lo > hi:
            raise ValueError(f'option {range_key} must have low <= high, got {span!r}')
        return None, (lo, hi)
    if fixed is None:
        raise ValueError(f'option {key} is required (or {range_key}: [low, high] for training)')
    return check(key, fixed), None


def _parse_gray(opt):
    """True when the dataset should produce 1-channel images (`in_ch: 1` or `color: gray`)."""
    in_ch, color = opt.get('in_ch'), opt.get('color')
    if in_ch not in (None, 1, 3):
        raise ValueError(f'option in_ch must be 1 or 3, got {in_ch!r}')
    if color not in (None, 'rgb', 'gray'):
        raise ValueError(f"option color must be 'rgb' or 'gray', got {color!r}")
    if in_ch is not None and color is not None and (in_ch == 1) != (color == 'gray'):
        raise ValueError(f'option in_ch={in_ch} contradicts color={color!r}')
    gray_mode = opt.get('gray_mode', 'y')
    if gray_mode not in ('y', 'gray'):
        raise ValueError(f"option gray_mode must be 'y' or 'gray', got {gray_mode!r}")
    return in_ch == 1 or color == 'gray', gray_mode


class _CleanImageDataset(data.Dataset):
    """Shared base: lists and reads clean images, crops/augments for training, and returns a
    BasicSR dict whose lq comes from the subclass's `degrade(img_uint8_hwc, path)`.

    Options: dataroot_gt (required: folder, or *.lmdb with io_backend type lmdb); io_backend
    (default {type: disk}); meta_info_file (disk only; else every image in the folder, sorted);
    phase (set by BasicSR; only 'train' crops, augments and samples levels); gt_size (train, default
    None = whole image); use_hflip, use_rot (train, default true); in_ch 1|3 or color rgb|gray
    (default 3 channels); gray_mode y|gray (default y).
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.is_train = opt.get('phase') == 'train'
        if not opt.get('dataroot_gt'):
            raise ValueError(f'option dataroot_gt is required for {type(self).__name__}')
        self.gt_folder = str(opt['dataroot_gt'])
        self.gray, self.gray_mode = _parse_gray(opt)

        io_opt = dict(opt.get('io_backend') or {'type': 'disk'})
        self._backend = io_opt.pop('type', None)
        if self._backend == 'lmdb':
            io_opt.update(db_paths=[self.gt_folder], client_keys=['gt'])
        elif self._backend != 'disk':
            raise ValueError(f"option io_backend.type must be 'disk' or 'lmdb', got {self._backend!r}")
        self._backend_kwargs = io_opt
        self.file_client = None  # opened lazily, once per dataloader worker
        self.paths = self._list_images()

        self.gt_size = opt.get('gt_size')
        if self.gt_size is not None and (not isinstance(self.gt_size, int) or self.gt_size <= 0):
            raise ValueError(f'option gt_size must be a positive integer, got {self.gt_size!r}')
        self.use_hflip = opt.get('use_hflip', True)
        self.use_rot = opt.get('use_rot', True)

    def _list_images(self):
        folder = self.gt_folder
        if self._backend == 'lmdb':
            meta = osp.join(folder, 'meta_info.txt')
            if not folder.endswith('.lmdb') or not osp.isfile(meta):
                raise FileNotFoundError(f'dataroot_gt {folder} is not an lmdb folder (*.lmdb with meta_info.txt)')
            paths = paths_from_lmdb(folder)
        elif not osp.isdir(folder):
            raise FileNotFoundError(f'dataroot_gt folder does not exist: {folder}')
        elif self.opt.get('meta_info_file'):
            meta = self.opt['meta_info_file']
            if not osp.isfile(meta):
                raise FileNotFoundError(f'meta_info_file does not exist: {meta}')
            with open(meta) as f:
                paths = [osp.join(folder, line.split()[0]) for line in f if line.strip()]
            missing = [p for p in paths if not osp.isfile(p)]
            if missing:
                raise FileNotFoundError(f'{len(missing)} image(s) listed in {meta} are missing, e.g. {missing[0]}')
        else:
            paths = sorted(p for p in scandir(folder, full_path=True) if osp.splitext(p)[1].lower() in IMAGE_SUFFIXES)
        if not paths:
            raise ValueError(f'no images ({", ".join(IMAGE_SUFFIXES)}) found in dataroot_gt {folder}')
        return paths

    def _read(self, path):
        """Clean image as uint8 HWC (C = 1 or 3, BGR)."""
        if self.file_client is None:
            self.file_client = FileClient(self._backend, **self._backend_kwargs)
        content = self.file_client.get(path, 'gt')
        if not content:
            raise ValueError(f'image {path} is empty or missing from {self.gt_folder}')
        flag = 'color' if not self.gray else ('unchanged' if self.gray_mode == 'y' else 'grayscale')
        img = imfrombytes(content, flag=flag)
        if img is None:
            raise ValueError(f'cannot decode image {path} (corrupt or not an image file)')
        if img.dtype != np.uint8:
            raise ValueError(f'image {path} must be 8-bit, got dtype {img.dtype}')
        if img.ndim == 3 and self.gray:  # gray_mode 'y' on a colour file
            if img.shape[2] not in (3, 4):
                raise ValueError(f'image {path} must have 1, 3 or 4 channels, got {img.shape[2]}')
            img = bgr2ycbcr(img[..., :3], y_only=True)
        return img[..., None] if img.ndim == 2 else img

    def degrade(self, img, path):
        raise NotImplementedError

    def __getitem__(self, index):
        path = self.paths[index]
        img = self._read(path)
        if self.is_train:
            if self.gt_size is not None:
                img, _ = paired_random_crop(img, img, self.gt_size, 1, path)
            img = augment(img, self.use_hflip, self.use_rot)
        img = np.ascontiguousarray(img)
        lq = self.degrade(img, path)
        gt, lq = img2tensor([img.astype(np.float32) / 255., lq], bgr2rgb=True, float32=True)
        return {'lq': lq, 'gt': gt, 'lq_path': path, 'gt_path': path}

    def __len__(self):
        return len(self.paths)


@DATASET_REGISTRY.register()
class GaussianNoiseDataset(_CleanImageDataset):
    """Additive white Gaussian noise of std `sigma` (0-255 units); lq is not clipped (as SwinIR).

    Training draws noise from NumPy's global RNG, which BasicSR's worker_init_fn seeds per worker;
    with `sigma_range: [lo, hi]` each item draws sigma ~ U(lo, hi). Other phases use the fixed
    `sigma` and a per-image Generator(PCG64(noise_seed(path, sigma))), so results are reproducible.
    """

    def __init__(self, opt):
        super().__init__(opt)
        self.sigma, self.sigma_range = _parse_level(opt, 'sigma', 'sigma_range', 0, 255, False, self.is_train)

    def degrade(self, img, path):
        if self.is_train:
            sigma = np.random.uniform(*self.sigma_range) if self.sigma_range else self.sigma
            return add_gaussian_noise(img, sigma, np.random)
        return add_gaussian_noise(img, self.sigma, seeded_noise_rng(path, self.sigma))


@DATASET_REGISTRY.register()
class JPEGCompressionDataset(_CleanImageDataset):
    """OpenCV JPEG at `quality` (1-100); training may draw an integer quality from `quality_range`."""

    def __init__(self, opt):
        super().__init__(opt)
        self.quality, self.quality_range = _parse_level(opt, 'quality', 'quality_range', 1, 100, True,
                                                        self.is_train)

    def degrade(self, img, path):
        quality = random.randint(*self.quality_range) if self.quality_range else self.quality
        return jpeg_roundtrip(img, quality, path)
