"""Inference CLI: restore an image or a folder of images (``basicsr-iln-infer`` or ``python basicsr_iln/infer.py``).

    basicsr-iln-infer --opt OPT.yml -i photo.png -o out/                    # network_g + path.pretrain_network_g
    basicsr-iln-infer --opt OPT.yml -c net_g_latest.pth -i folder/ -o out/ --tile 256 --tile-overlap 32
    basicsr-iln-infer --arch SwinIR_iLN --arch-opt "{upscale: 1, upsampler: '', window_size: 8}" -c ckpt.pth ...

SR, denoising and JPEG artifact removal alike: the network decides (its ``upscale``). For DN/CAR
the input is taken as already degraded; ``--sigma`` / ``--jpeg-quality`` first add seeded Gaussian
noise / OpenCV JPEG to it (as the test datasets do), for demos, and also save that input. Outputs
are ``OUT/<name>.png``. ``--tile`` runs crop by crop with blended overlaps (basicsr_iln/utils/inference.py),
``--precision bf16|fp16`` under autocast, ``--self-ensemble`` averages the 8 flips/rotations.
"""
import argparse
import os
import sys
from os import path as osp

if __package__ in (None, ''):  # run as a script: make the repository importable
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import basicsr_iln  # noqa: E402,F401
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from basicsr.utils import img2tensor, imwrite, tensor2img  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from basicsr_iln.data.degraded_dataset import add_gaussian_noise, jpeg_roundtrip, seeded_noise_rng  # noqa: E402
from basicsr_iln.models.ir_model import PRECISIONS, build_network_checked  # noqa: E402
from basicsr_iln.utils.checkpoint import load_weights  # noqa: E402
from basicsr_iln.utils.checks import IMAGE_SUFFIXES  # noqa: E402
from basicsr_iln.utils.errors import ConfigError, run_cli  # noqa: E402
from basicsr_iln.utils.inference import check_tiling, restore  # noqa: E402
from basicsr_iln.utils.options import load_yaml_file  # noqa: E402


def build_arg_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    net = parser.add_argument_group('network (--opt, or --arch with --arch-opt)')
    net.add_argument('--opt', help='option file: its network_g, and path.pretrain_network_g unless -c is given')
    net.add_argument('--arch', help="registered architecture, e.g. SwinIR_iLN, HAT_iLN, DRCT_iLN")
    net.add_argument('--arch-opt', default='{}', help="its keyword arguments as a YAML mapping, e.g. \"{upscale: 4}\"")
    net.add_argument('-c', '--checkpoint', help='weights (.pth): BasicSR, SwinIR-repo or official i-LN layout')
    net.add_argument('--param-key', default=None, help='key of the weights in the checkpoint (default: option '
                     "file's path.param_key_g, else params_ema, then params)")
    parser.add_argument('-i', '--input', required=True, help='an image or a folder of images')
    parser.add_argument('-o', '--output', default='results/infer', help='output folder (default results/infer)')
    parser.add_argument('--sigma', type=float, help='add Gaussian noise of this std (0-255) first (denoising demo)')
    parser.add_argument('--jpeg-quality', type=int, help='JPEG-compress at this quality (1-100) first (CAR demo)')
    parser.add_argument('--tile', type=int, help='tile size in input pixels (a multiple of the window size)')
    parser.add_argument('--tile-overlap', type=int, default=32, help='overlap of neighbouring tiles (default 32)')
    parser.add_argument('--precision', choices=list(PRECISIONS), default='fp32', help='autocast precision')
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    parser.add_argument('--self-ensemble', action='store_true', help='average over the 8 flips/rotations')
    parser.add_argument('--traceback', action='store_true', help='show the Python traceback of user errors')
    return parser


def network_from_args(args):
    """(network in eval mode, checkpoint path) from --opt or --arch/--arch-opt, weights loaded."""
    if bool(args.opt) == bool(args.arch):
        raise ConfigError('give the network either with --opt OPT.yml or with --arch NAME (and --arch-opt)')
    param_key = args.param_key
    if args.opt:
        opt = load_yaml_file(args.opt)
        if not isinstance(opt.get('network_g'), dict):
            raise ConfigError(f"option file {args.opt} has no 'network_g' mapping")
        net_opt, path_opt = opt['network_g'], opt.get('path') or {}
        checkpoint = args.checkpoint or path_opt.get('pretrain_network_g')
        param_key = param_key or path_opt.get('param_key_g')
    else:
        try:
            kwargs = yaml.safe_load(args.arch_opt)
        except yaml.YAMLError as err:
            raise ConfigError(f'--arch-opt is not valid YAML: {err}') from None
        if not isinstance(kwargs, dict):
            raise ConfigError(f'--arch-opt must be a YAML mapping of keyword arguments, got {args.arch_opt!r}')
        net_opt, checkpoint = {'type': args.arch, **kwargs}, args.checkpoint
    if not checkpoint:
        raise ConfigError('no checkpoint: give -c CHECKPOINT.pth (or path.pretrain_network_g in the option file)')
    net = build_network_checked(dict(net_opt))
    load_weights(net, checkpoint, param_key=param_key or 'params_ema', arch_desc=net_opt['type'])
    return net.eval(), checkpoint


def input_channels(net):
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels


def list_inputs(path):
    if not osp.exists(path):
        raise ConfigError(f'input not found: {path}')
    if osp.isfile(path):
        return [path]
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise ConfigError(f"input folder '{path}' contains no images ({', '.join(IMAGE_SUFFIXES)})")
    return [osp.join(path, n) for n in names]


def read_image(path, channels):
    """uint8 HWC image (BGR for colour) with exactly ``channels`` channels, or a one-line error."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ConfigError(f"cannot read '{path}' as an image (not an image file, or corrupt)")
    if img.dtype != np.uint8:
        raise ConfigError(f"'{path}' has {img.dtype} pixels; only 8-bit images are supported")
    img = img[..., None] if img.ndim == 2 else img
    if img.shape[2] != channels:
        kind = {1: 'gray', 3: 'colour (RGB)', 4: 'RGBA (with alpha)'}.get(img.shape[2], 'unsupported')
        raise ConfigError(f"'{path}' has {img.shape[2]} channel(s) ({kind}) but the network takes {channels}: "
                          f"convert it to {'gray' if channels == 1 else 'RGB'} first")
    return img


def degrade(img, path, args):
    """float32 [0, 1]-scaled HWC input: the image as is, or with the requested demo degradation."""
    if args.sigma is not None:
        return add_gaussian_noise(img, args.sigma, seeded_noise_rng(path, args.sigma))
    if args.jpeg_quality is not None:
        return jpeg_roundtrip(img, args.jpeg_quality, path)
    return img.astype(np.float32) / 255.


def check_args(args):
    if args.sigma is not None and args.jpeg_quality is not None:
        raise ConfigError('give --sigma or --jpeg-quality, not both')
    if args.sigma is not None and not 0 <= args.sigma <= 255:
        raise ConfigError(f'--sigma must be in [0, 255], got {args.sigma}')
    if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
        raise ConfigError(f'--jpeg-quality must be in [1, 100], got {args.jpeg_quality}')
    if osp.isdir(args.input) and osp.abspath(args.input) == osp.abspath(args.output):
        raise ConfigError('the output folder is the input folder: results would overwrite the inputs')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('--device cuda but CUDA is not available (use --device cpu or auto)')


def infer(argv=None):
    args = build_arg_parser().parse_args(argv)
    check_args(args)
    paths = list_inputs(args.input)
    device = torch.device('cuda' if args.device != 'cpu' and torch.cuda.is_available() else 'cpu')
    net, checkpoint = network_from_args(args)
    net = net.to(device)
    if args.tile:
        check_tiling(args.tile, args.tile_overlap, getattr(net, 'window_size', 1))
    channels = input_channels(net)
    images = [(p, read_image(p, channels)) for p in paths]  # every input is checked before any work
    os.makedirs(args.output, exist_ok=True)
    for path, img in tqdm(images, desc='restore', unit='image'):
        lq = degrade(img, path, args)
        x = img2tensor(lq, bgr2rgb=channels == 3, float32=True).unsqueeze(0).to(device)
        out = restore(net, x, tile=args.tile, tile_overlap=args.tile_overlap, ensemble=args.self_ensemble,
                      dtype=PRECISIONS[args.precision], progress=True)
        stem = osp.splitext(osp.basename(path))[0]
        imwrite(tensor2img(out.cpu()), osp.join(args.output, f'{stem}.png'))
        if args.sigma is not None or args.jpeg_quality is not None:
            imwrite(tensor2img(x.cpu()), osp.join(args.output, f'{stem}_input.png'))
    print(f'{len(images)} image(s) restored with {checkpoint} on {device} ({args.precision}) -> {args.output}')


def main(argv=None):
    run_cli(infer, argv)


if __name__ == '__main__':
    main()
