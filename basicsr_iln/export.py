"""Export CLI: a trained network to a checked ONNX file and/or safetensors (``basicsr-iln-export`` or
``python basicsr_iln/export.py``).

    basicsr-iln-export -c experiments/RUN/models/net_g_latest.pth --onnx model.onnx --safetensors model.safetensors
    basicsr-iln-export --opt OPT.yml -c net_g_latest.pth --onnx model.onnx
    basicsr-iln-export --arch SwinIR_iLN --arch-opt "{upscale: 4, upsampler: pixelshuffle}" -c ckpt.pth --onnx m.onnx
    basicsr-iln-export --opt OPT.yml --onnx model_fp16.onnx --fp16

The network is given as for basicsr-iln-infer. The ONNX file (opset 17) has dynamic batch, height and
width: input 'input' (N, C, H, W) with values in [0, 1], output 'output' (N, C, H*scale, W*scale),
float32, or float16 with --fp16. Any H and W work: the graph pads to the window multiple itself.

After writing, onnxruntime runs the file on two input sizes (one not a window multiple) and compares it
with PyTorch in float32: the max abs diff must be <= 1e-4 (fp32) or <= 1/255, one 8-bit grey level
(fp16). Otherwise the command exits 2 and the model is not written under its name: it is kept as
NAME.rejected.onnx for inspection.

``--safetensors`` writes the loaded weights with the network config (arch type and every constructor
argument, norm type, stdnorm, eps, package version) as JSON in the metadata key ``network_config``:
loadable without pickle by any tool, and by ours with ``-c FILE`` alone (docs/interop.md).
"""
import argparse
import sys
from os import path as osp

if __package__ in (None, ''):  # run as a script: make the repository importable
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import basicsr_iln  # noqa: E402,F401
from basicsr_iln.infer import add_network_arguments, network_from_args  # noqa: E402
from basicsr_iln.utils.checkpoint import SAFETENSORS_SUFFIX, save_safetensors  # noqa: E402
from basicsr_iln.utils.errors import ConfigError, run_cli  # noqa: E402
from basicsr_iln.utils.export import ONNX_OPSET, export_checked, require_onnxruntime  # noqa: E402
from basicsr_iln.utils.network_config import network_config  # noqa: E402


def build_arg_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_arguments(parser)
    parser.add_argument('--onnx', help=f'output ONNX file (.onnx), opset {ONNX_OPSET}')
    parser.add_argument('--safetensors', help='output weights (.safetensors) with the network config in the metadata')
    parser.add_argument('--fp16', action='store_true', help='half-precision weights, input and output')
    parser.add_argument('--traceback', action='store_true', help='show the Python traceback of user errors')
    return parser


def export(argv=None):
    args = build_arg_parser().parse_args(argv)
    if not args.onnx and not args.safetensors:
        raise ConfigError('nothing to write: give --onnx FILE.onnx and/or --safetensors FILE.safetensors')
    if args.onnx and not args.onnx.endswith('.onnx'):
        raise ConfigError(f'--onnx must name a .onnx file, got {args.onnx!r}')
    if args.safetensors and not args.safetensors.endswith(SAFETENSORS_SUFFIX):
        raise ConfigError(f'--safetensors must name a {SAFETENSORS_SUFFIX} file, got {args.safetensors!r}')
    if args.onnx:
        require_onnxruntime()  # before the network is built: the check cannot be skipped
    net, checkpoint, net_opt = network_from_args(args)
    if args.safetensors:
        save_safetensors(net.state_dict(), args.safetensors, network_config(net_opt))
        print(f'{checkpoint} -> {args.safetensors} (weights and network config)')
    if not args.onnx:
        return
    diffs = export_checked(net.cpu(), args.onnx, fp16=args.fp16)
    checks = ', '.join(f'{b}x{h}x{w}: {diff:.2g}' for (b, h, w), diff in diffs)
    print(f"{checkpoint} -> {args.onnx} (ONNX opset {ONNX_OPSET}, {'fp16' if args.fp16 else 'fp32'}); "
          f'onnxruntime vs PyTorch max abs diff at N x H x W {checks}')


def main(argv=None):
    run_cli(export, argv)


if __name__ == '__main__':
    main()
