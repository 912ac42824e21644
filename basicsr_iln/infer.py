"""Inference CLI: restore an image or a folder of images (``basicsr-iln-infer`` or ``python basicsr_iln/infer.py``).

    basicsr-iln-infer -c experiments/RUN/models/net_g_latest.pth -i photo.png -o out/   # our checkpoints
    basicsr-iln-infer --opt OPT.yml -i photo.png -o out/                    # network_g + path.pretrain_network_g
    basicsr-iln-infer --opt OPT.yml -c net_g_latest.pth -i folder/ -o out/ --tile 256 --tile-overlap 32
    basicsr-iln-infer --arch SwinIR_iLN --arch-opt "{norm_type: ln, upscale: 1, ...}" -c released.pth ...

Our checkpoints record their network (``network_config``); a released one needs every ``network_g``
key of its release (the README's Inference section has a full example).

SR, denoising and JPEG artifact removal alike: the network decides (its ``upscale``). For DN/CAR
the input is taken as already degraded; ``--sigma`` / ``--jpeg-quality`` first add seeded Gaussian
noise / OpenCV JPEG to it (as the test datasets do), for demos, and also save that input. Outputs
are ``OUT/<name>.png``. ``--tile`` runs crop by crop with blended overlaps (basicsr_iln/utils/inference.py),
``--precision bf16|fp16|int8`` runs a cast copy of the network (the test CLI's meaning: pure low
precision, so an LN network's fp16 overflow shows), ``--self-ensemble`` averages the 8 flips/rotations.
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
from basicsr.utils import bgr2ycbcr, img2tensor, imwrite, tensor2img  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from basicsr_iln.archs.chunking import DEFAULT_CHUNK_TOKENS  # noqa: E402
from basicsr_iln.data.degraded_dataset import add_gaussian_noise, jpeg_roundtrip, seeded_noise_rng  # noqa: E402
from basicsr_iln.analysis.precision import EVAL_PRECISIONS, PrecisionNetwork  # noqa: E402
from basicsr_iln.utils.checkpoint import load_checkpoint_file, load_weights  # noqa: E402
from basicsr_iln.utils.checks import IMAGE_SUFFIXES  # noqa: E402
from basicsr_iln.utils.denormals import add_keep_denormals_argument, flush_unless_kept  # noqa: E402
from basicsr_iln.utils.errors import ConfigError, run_cli  # noqa: E402
from basicsr_iln.utils.network_config import (  # noqa: E402
    build_network_checked, checkpoint_network_config, config_differences, describe_differences, network_config,
    network_options)
from basicsr_iln.utils.inference import check_tiling, restore, tiling_caveats  # noqa: E402
from basicsr_iln.utils.memory_format import (add_channels_last_argument, image_memory_format,  # noqa: E402
                                             to_memory_format)
from basicsr_iln.utils.options import load_yaml_file  # noqa: E402


def add_network_arguments(parser):
    """The arguments ``network_from_args`` reads (shared with the export CLI)."""
    net = parser.add_argument_group('network (-c alone for our checkpoints; --opt, or --arch with --arch-opt)')
    net.add_argument('--opt', help='option file: its network_g, and path.pretrain_network_g unless -c is given')
    net.add_argument('--arch', help="registered architecture, e.g. SwinIR_iLN, HAT_iLN, DRCT_iLN")
    net.add_argument('--arch-opt', default='{}', help="its keyword arguments as a YAML mapping, e.g. \"{upscale: 4}\"")
    net.add_argument('-c', '--checkpoint', help='weights (.pth or .safetensors): ours (they record their network), '
                     'BasicSR, SwinIR-repo or official i-LN layout')
    net.add_argument('--param-key', default=None, help='key of the weights in the checkpoint (default: option '
                     "file's path.param_key_g, else params_ema, then params)")


def build_arg_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_arguments(parser)
    parser.add_argument('-i', '--input', required=True, help='an image or a folder of images')
    parser.add_argument('-o', '--output', default='results/infer', help='output folder (default results/infer)')
    parser.add_argument('--sigma', type=float, help='add Gaussian noise of this std (0-255) first (denoising demo)')
    parser.add_argument('--jpeg-quality', type=int, help='JPEG-compress at this quality (1-100) first (CAR demo)')
    parser.add_argument('--tile', type=int, help='tile size in input pixels (a multiple of the window size)')
    parser.add_argument('--tile-overlap', type=int, default=32, help='overlap of neighbouring tiles (default 32)')
    parser.add_argument('--max-chunk-tokens', type=int, default=DEFAULT_CHUNK_TOKENS,
                        help='whole images exactly in bounded memory: attention and MLPs this many tokens at a time '
                        f'(default {DEFAULT_CHUNK_TOKENS}; 0: in one piece)')
    parser.add_argument('--precision', choices=list(EVAL_PRECISIONS), default='fp32',
                        help='run a cast copy of the network in this precision, as the test CLI evaluates it '
                        '(bf16/fp16: weights, input and features in the half type; int8: dynamic Linear, CPU)')
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    parser.add_argument('--self-ensemble', action='store_true', help='average over the 8 flips/rotations')
    add_channels_last_argument(parser)
    add_keep_denormals_argument(parser)
    parser.add_argument('--traceback', action='store_true', help='show the Python traceback of user errors')
    return parser


def network_from_args(args):
    """(network in eval mode, checkpoint path, its network_g options), weights loaded. Our checkpoints record
    their network, so
    ``-c`` alone is enough; released ones need --opt or --arch/--arch-opt. Given with a checkpoint that
    records its network, --opt / --arch values are checked against it: a differing one is an error."""
    if args.opt and args.arch:
        raise ConfigError('give the network either with --opt OPT.yml or with --arch NAME (and --arch-opt), not both')
    param_key, checkpoint, given, source = args.param_key, args.checkpoint, None, None
    if args.opt:
        opt = load_yaml_file(args.opt)
        if not isinstance(opt.get('network_g'), dict):
            raise ConfigError(f"option file {args.opt} has no 'network_g' mapping")
        given, path_opt, source = opt['network_g'], opt.get('path') or {}, f'network_g of {args.opt}'
        checkpoint = checkpoint or path_opt.get('pretrain_network_g')
        param_key = param_key or path_opt.get('param_key_g')
    elif args.arch:
        try:
            kwargs = yaml.safe_load(args.arch_opt)
        except yaml.YAMLError as err:
            raise ConfigError(f'--arch-opt is not valid YAML: {err}') from None
        if not isinstance(kwargs, dict):
            raise ConfigError(f'--arch-opt must be a YAML mapping of keyword arguments, got {args.arch_opt!r}')
        given, source = {'type': args.arch, **kwargs}, '--arch/--arch-opt'
    if not checkpoint:
        raise ConfigError('no checkpoint: give -c CHECKPOINT (.pth or .safetensors; or path.pretrain_network_g in '
                          'the option file)')
    content = load_checkpoint_file(checkpoint)
    saved = checkpoint_network_config(content, checkpoint)
    if saved is None and given is None:
        raise ConfigError(f'checkpoint {checkpoint} records no network config (a released checkpoint): give the '
                          'network either with --opt OPT.yml or with --arch NAME (and --arch-opt)')
    net_opt = given if saved is None else {**network_options(saved), **(given or {})}
    built = network_config(net_opt)
    differences = [] if saved is None else config_differences(saved, built)
    if differences:
        raise ConfigError(f'checkpoint {checkpoint} records its network, and {source} differs from it: '
                          f"{describe_differences(differences, source)} (leave these keys out to use the checkpoint's)")
    net = build_network_checked(dict(net_opt))
    load_weights(net, checkpoint, param_key=param_key or 'params_ema', arch_desc=net_opt['type'],
                 network_config=built, checkpoint=content)
    return net.eval(), checkpoint, net_opt


def input_channels(net):
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels


def list_inputs(path):
    """(image paths, names of the other files in the folder): a folder may hold notes or metadata."""
    if not osp.exists(path):
        raise ConfigError(f'input not found: {path}')
    if osp.isfile(path):
        return [path], []
    files = sorted(n for n in os.listdir(path) if osp.isfile(osp.join(path, n)))
    names = [n for n in files if n.lower().endswith(IMAGE_SUFFIXES)]
    if not names:
        raise ConfigError(f"input folder '{path}' contains no images ({', '.join(IMAGE_SUFFIXES)})")
    return [osp.join(path, n) for n in names], [n for n in files if n not in names]


def read_image(path, channels):
    """(uint8 HWC image, BGR for colour, with exactly ``channels`` channels; a note on any conversion, or
    None). Gray files for a colour network become 3 equal channels and colour files for a gray network
    their Y channel (BT.601), as the test datasets read them; anything else is a one-line error."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ConfigError(f"cannot read '{path}' as an image (not an image file, or corrupt)")
    if img.dtype != np.uint8:
        raise ConfigError(f"'{path}' has {img.dtype} pixels; only 8-bit images are supported")
    img = img[..., None] if img.ndim == 2 else img
    if img.shape[2] == channels:
        return img, None
    if img.shape[2] == 1 and channels == 3:
        return np.repeat(img, 3, axis=2), 'gray, fed to the colour network as 3 equal channels'
    if img.shape[2] == 3 and channels == 1:
        return bgr2ycbcr(img, y_only=True)[..., None], 'colour, fed to the gray network as its Y channel (BT.601)'
    kind = {4: 'RGBA (with alpha)'}.get(img.shape[2], 'unsupported')
    raise ConfigError(f"'{path}' has {img.shape[2]} channel(s) ({kind}) but the network takes {channels}: "
                      f"convert it to {'gray' if channels == 1 else 'RGB'} first")


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
    if args.max_chunk_tokens < 0:
        raise ConfigError(f'--max-chunk-tokens must be >= 0 (0: in one piece), got {args.max_chunk_tokens}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise ConfigError('--device cuda but CUDA is not available (use --device cpu or auto)')


def infer(argv=None):
    args = build_arg_parser().parse_args(argv)
    check_args(args)
    flush_unless_kept(args)  # before any parallel op: threads inherit it
    paths, skipped = list_inputs(args.input)
    device = torch.device('cuda' if args.device != 'cpu' and torch.cuda.is_available() else 'cpu')
    net, checkpoint, _ = network_from_args(args)
    net = PrecisionNetwork(to_memory_format(net.to(device), args.channels_last), args.precision)
    if args.tile:
        check_tiling(args.tile, args.tile_overlap, getattr(net, 'window_size', 1))
    channels = input_channels(net)
    caveats = tiling_caveats(net) if args.tile else []
    if caveats:
        print(f"note: tiled output is not exact for this network: {'; '.join(caveats)}")
    if skipped:
        print(f"skipped {len(skipped)} file(s) that are not images ({', '.join(IMAGE_SUFFIXES)}): "
              f"{', '.join(skipped)}")
    os.makedirs(args.output, exist_ok=True)
    failed = []
    for path in tqdm(paths, desc='restore', unit='image', disable=len(paths) == 1):
        try:
            restore_file(net, path, channels, device, args)
        except ConfigError as err:  # one bad file costs only itself
            failed.append(str(err))
            tqdm.write(f'failed: {failed[-1]}')
        except RuntimeError as err:  # so does one out of memory
            if args.traceback:
                raise
            failed.append(f"'{path}': {str(err).splitlines()[0]}")
            tqdm.write(f'failed: {failed[-1]}')
    done = len(paths) - len(failed)
    print(f'{done} image(s) restored with {checkpoint} on {device} ({args.precision}) -> {args.output}')
    if failed:
        raise ConfigError(f"{len(failed)} of {len(paths)} image(s) failed: {'; '.join(failed)}")


def restore_file(net, path, channels, device, args):
    """Restore one image file into ``args.output`` (and its degraded input for the demo options)."""
    img, note = read_image(path, channels)
    if note:
        tqdm.write(f'{osp.basename(path)}: {note}')
    lq = degrade(img, path, args)
    x = img2tensor(lq, bgr2rgb=channels == 3, float32=True).unsqueeze(0).to(
        device, memory_format=image_memory_format(args.channels_last))
    out = restore(net, x, tile=args.tile, tile_overlap=args.tile_overlap, ensemble=args.self_ensemble,
                  progress=True, max_chunk_tokens=args.max_chunk_tokens)
    if net.nonfinite:
        count = net.take_record()['nonfinite']
        tqdm.write(f'{osp.basename(path)}: {count} non-finite output values in {args.precision}: the network '
                   'overflows this precision')
    stem = osp.splitext(osp.basename(path))[0]
    imwrite(tensor2img(out.cpu()), osp.join(args.output, f'{stem}.png'))
    if args.sigma is not None or args.jpeg_quality is not None:
        imwrite(tensor2img(x.cpu()), osp.join(args.output, f'{stem}_input.png'))


def main(argv=None):
    run_cli(infer, argv)


if __name__ == '__main__':
    main()
