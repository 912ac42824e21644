#!/usr/bin/env python
"""Large images: peak memory and time of one-piece, chunked and tiled inference, side by side in one run.

    python scripts/benchmark_large_image.py [--archs SwinIR HAT DRCT] [--norms ln iln] [--lr-size 1080 960]
        [--embed-dim 60 --depths 6 6 --heads 6 6 --window 16] [--modes unchunked chunked tiled]
        [--max-chunk-tokens 16384] [--tile 256 --tile-overlap 32] [--device cpu] [--out docs/...md] [--json]

For every arch x norm, one x2 network (random weights, seeded: what is measured is memory and time,
which do not depend on the weights) restores one LR input of ``--lr-size`` (H W): a real photo from
../shared/datasets resized to that size when present, else a smooth synthetic image. Modes:

* ``unchunked``: the whole image in one piece (``max_chunk_tokens`` 0), the reference output;
* ``chunked``: the whole image, attention and MLPs ``--max-chunk-tokens`` tokens at a time
  (basicsr_iln/archs/chunking.py), the default of the inference CLI, the test CLI and validation;
* ``tiled``: ``--tile`` crops with ``--tile-overlap``, blended.

Per mode, from one run: peak memory above the start (CPU: torch's allocations recorded by the
profiler, as in benchmark_speed.py; CUDA: ``max_memory_allocated``), the chunked bound of
``memory_bound_bytes``, wall time (of that run, so under the CPU profiler's small overhead), and the output's max |diff| and PSNR against the reference (unchunked, else the first mode).
Random weights say nothing about how far tiling is from exact for a trained network: the tiled PSNR
here measures the mechanism only (docs/benchmarks.md quotes a trained one).
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'scripts'))

import basicsr_iln  # noqa: E402,F401
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402
from benchmark_speed import ARCH_TYPES, cpu_peak_bytes, cuda_peak_bytes, hardware  # noqa: E402

from basicsr_iln.archs.chunking import DEFAULT_CHUNK_TOKENS, memory_bound_bytes  # noqa: E402
from basicsr_iln.utils.inference import restore  # noqa: E402

PHOTO = REPO.parent / 'shared' / 'datasets' / 'sr' / 'Set14' / 'HR' / 'baboon.png'
MODES = ('unchunked', 'chunked', 'tiled')


def build(args, arch, norm, device):
    torch.manual_seed(0)
    kwargs = dict(upscale=2, in_chans=3, img_size=64, window_size=args.window, img_range=1.0, depths=args.depths,
                  embed_dim=args.embed_dim, num_heads=args.heads, mlp_ratio=2, upsampler='pixelshuffle',
                  norm_type=norm)
    if arch == 'HAT':
        kwargs.update(compress_ratio=3, squeeze_factor=16)
    return ARCH_REGISTRY.get(ARCH_TYPES[arch])(**kwargs).eval().to(device)


def test_image(height, width, device):
    """(1, 3, H, W) in [0, 1]: the photo resized, or smooth gradients with texture when it is absent."""
    img = cv2.imread(str(PHOTO)) if PHOTO.is_file() else None
    if img is not None:
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)[..., ::-1].astype(np.float32) / 255.
    else:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        img = np.stack([(np.sin(xx / 17) + 1) / 2, (np.cos(yy / 23) + 1) / 2, ((xx + yy) % 64) / 64], -1)
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].clamp(0, 1).to(device)


def run_mode(args, net, x, mode):
    """(output, peak bytes, seconds) of one restore in ``mode``, timed while its memory is recorded."""
    kwargs = {'unchunked': dict(max_chunk_tokens=0), 'chunked': dict(max_chunk_tokens=args.max_chunk_tokens),
              'tiled': dict(tile=args.tile, tile_overlap=args.tile_overlap, max_chunk_tokens=0)}[mode]
    result = {}

    def run():
        start = time.perf_counter()
        result['y'] = restore(net, x, **kwargs)
        if x.device.type == 'cuda':
            torch.cuda.synchronize()
        result['seconds'] = time.perf_counter() - start

    peak = (cuda_peak_bytes if x.device.type == 'cuda' else cpu_peak_bytes)(run)
    return result['y'], peak, result['seconds']


def psnr(a, b):
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1))**2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def benchmark(args):
    device = torch.device(args.device)
    x = test_image(*args.lr_size, device)
    rows = []
    for arch in args.archs:
        for norm in args.norms:
            net = build(args, arch, norm, device)
            bound = memory_bound_bytes(net, *args.lr_size, args.max_chunk_tokens)
            reference = None
            for mode in args.modes:
                y, peak, seconds = run_mode(args, net, x, mode)
                reference = y if reference is None else reference
                rows.append(dict(arch=arch, norm=norm, mode=mode, peak_mb=peak / 2**20, bound_mb=bound / 2**20,
                                 seconds=seconds, max_abs_diff=float((y - reference).abs().max()),
                                 psnr_vs_reference=psnr(y, reference)))
                print(f"{arch} {norm} {mode}: peak {rows[-1]['peak_mb']:.0f} MB, {seconds:.2f} s", file=sys.stderr)
    return rows


def markdown(args, rows):
    ref = args.modes[0]
    lines = [f'Input {args.lr_size[0]}x{args.lr_size[1]} LR ({args.lr_size[0] * args.lr_size[1] / 1e6:.2f} MP), x2, '
             f'embed {args.embed_dim}, depths {args.depths}, heads {args.heads}, window {args.window}; '
             f'chunks of {args.max_chunk_tokens} tokens; tiles {args.tile} overlap {args.tile_overlap}; '
             f'{hardware(torch.device(args.device))}. Reference output: {ref}.', '',
             f'| arch | norm | mode | peak memory (MB) | chunked bound (MB) | time (s) | max abs diff vs {ref} | '
             f'PSNR vs {ref} (dB) |', '|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f"| {r['arch']} | {r['norm']} | {r['mode']} | {r['peak_mb']:.0f} | {r['bound_mb']:.0f} | "
                     f"{r['seconds']:.2f} | {r['max_abs_diff']:.2e} | {r['psnr_vs_reference']:.1f} |")
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--archs', nargs='+', default=list(ARCH_TYPES), choices=list(ARCH_TYPES))
    parser.add_argument('--norms', nargs='+', default=['ln', 'iln'])
    parser.add_argument('--lr-size', nargs=2, type=int, default=[1080, 960], metavar=('H', 'W'))
    parser.add_argument('--embed-dim', type=int, default=60)
    parser.add_argument('--depths', type=int, nargs='+', default=[6, 6])
    parser.add_argument('--heads', type=int, nargs='+', default=[6, 6])
    parser.add_argument('--window', type=int, default=16)
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    parser.add_argument('--max-chunk-tokens', type=int, default=DEFAULT_CHUNK_TOKENS)
    parser.add_argument('--tile', type=int, default=256)
    parser.add_argument('--tile-overlap', type=int, default=32)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--out', help='also write the markdown table to this file')
    parser.add_argument('--json', action='store_true', help='print the rows as one JSON line (for tests)')
    args = parser.parse_args(argv)
    if len(args.heads) != len(args.depths):
        parser.error('--heads needs one value per --depths entry')
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = benchmark(args)
    table = markdown(args, rows)
    if args.out:
        Path(args.out).write_text(table)
    print(json.dumps(rows) if args.json else table)


if __name__ == '__main__':
    main()
