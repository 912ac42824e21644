"""ONNX export of the restoration networks, checked against PyTorch with onnxruntime before it counts.

The graph comes from torch's TorchScript-based exporter (``dynamo=False``: it needs no package beyond
``onnx``) at opset ``ONNX_OPSET``, with dynamic batch, height and width. The architectures keep every
size-dependent step in the graph (window padding, shift masks, i-LN statistics), so one file is right
at every input size; ``export_checked`` proves it at two sizes, one of them not a window multiple.
"""
import copy
import inspect
import os
import warnings
from os import path as osp

import numpy as np
import torch

from .errors import ConfigError, UserFacingError

# 17: the first opset with a LayerNormalization operator; run by onnxruntime >= 1.14 and TensorRT >= 8.6.
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = 'input', 'output'
# torch >= 2.9 defaults to the dynamo exporter (it needs onnxscript); before 2.5 there was no choice to make.
_TORCHSCRIPT_EXPORTER = {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters else {}
FP32_TOLERANCE = 1e-4
# One grey level of the 8-bit image the model is saved as. fp16 keeps 11 significant bits: the final
# rounding alone moves an output near 1 by up to 2.4e-4, and every layer adds its own rounding.
FP16_TOLERANCE = 1 / 255


class ExportCheckError(UserFacingError):
    """The exported model does not compute what the PyTorch network computes (the file is set aside)."""


def require_onnxruntime():
    """The ``onnxruntime`` module, or a one-line error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError('exporting needs onnx and onnxruntime to check the result: '
                          'pip install onnx onnxruntime (or pip install basicsr_iln[export])') from None
    return onnxruntime


def input_channels(net):
    return next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels


def check_sizes(window_size):
    """(batch, height, width) of the two check inputs: window multiples with batch 1, then sizes that are
    not (for windows > 1) with batch 2, so padding, shift masks and the dynamic batch are all exercised."""
    return [(1, 2 * window_size, 3 * window_size), (2, 2 * window_size + 1, 3 * window_size - 1)]


def export_onnx(net, path, fp16=False, sample_size=(1, 32, 32)):
    """Write ``net`` (eval mode; copied, never modified) as ONNX to ``path``.

    Input ``input`` (N, C, H, W), output ``output`` (N, C, H*scale, W*scale), both float32, or float16
    with ``fp16`` (weights and activations in half precision, except the i-LN statistics, which the
    network computes in float32). ``sample_size`` (batch, height, width) is only the example to record.
    """
    net = copy.deepcopy(net).eval()
    dtype = torch.float16 if fp16 else torch.float32
    net = net.to(dtype)
    batch, height, width = sample_size
    sample = torch.rand(batch, input_channels(net), height, width, generator=torch.Generator().manual_seed(0))
    dynamic = {0: 'batch', 2: 'height', 3: 'width'}
    with warnings.catch_warnings(), torch.no_grad():
        # Notices about the exporter itself (it is the legacy one; HAT's strided unfold is not constant
        # folded): true, and nothing the user can act on.
        warnings.filterwarnings('ignore', message='.*legacy TorchScript-based ONNX export')
        warnings.filterwarnings('ignore', message='.*will be removed')
        warnings.filterwarnings('ignore', message='Constant folding - Only steps=1')
        torch.onnx.export(net, (sample.to(dtype), ), path, **_TORCHSCRIPT_EXPORTER, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: {0: 'batch', 2: 'out_height',
                                                                           3: 'out_width'}})


def max_abs_diff_to_pytorch(session, net, size, fp16=False):
    """Max |onnxruntime(x) - net(x)| for a seeded random input of (batch, height, width) ``size``. The
    reference is ``net`` itself, in float32 (the model an fp16 file approximates too); an output of
    another shape, or with non-finite values, raises ``ExportCheckError``."""
    batch, height, width = size
    generator = torch.Generator().manual_seed(height * width)
    x = torch.rand(batch, input_channels(net), height, width, generator=generator)
    with torch.no_grad():
        expected = net(x).numpy()
    out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(np.float16 if fp16 else np.float32)})[0]
    where = f"at input {batch}x{height}x{width} ({'fp16' if fp16 else 'fp32'})"
    if out.shape != expected.shape:
        raise ExportCheckError(f'the ONNX model gives an output of shape {out.shape} {where}, PyTorch '
                               f'{expected.shape}')
    if not np.isfinite(out).all():
        hint = ': activations overflow float16, export in fp32' if fp16 else ''
        raise ExportCheckError(f'the ONNX model gives non-finite outputs {where}{hint}')
    diff = float(np.abs(out.astype(np.float32) - expected).max())
    tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    if not diff <= tolerance:
        raise ExportCheckError(f'the ONNX model disagrees with PyTorch {where}: max abs diff {diff:.3g} > '
                               f'{tolerance:.3g}')
    return diff


def onnx_session(path):
    """An onnxruntime CPU session on ``path``, using as many threads as torch does."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def rejected_path(path):
    """Where a model that failed its check is kept: ``NAME.rejected.onnx`` beside ``path``."""
    stem, ext = osp.splitext(path)
    return f'{stem}.rejected{ext}'


def export_checked(net, path, fp16=False, sizes=None):
    """Export ``net`` (float32, eval mode) to ``path``, checked with onnxruntime at ``sizes`` (default
    ``check_sizes``); returns ``[(size, max abs diff)]``.

    The file is written under a temporary name and appears at ``path`` only once every check passes
    (max abs diff within ``FP32_TOLERANCE``, or ``FP16_TOLERANCE`` for ``fp16``). A model that fails is
    kept as ``rejected_path(path)`` for inspection, and ``ExportCheckError`` says where it failed.
    """
    sizes = sizes or check_sizes(getattr(net, 'window_size', 1))
    folder, name = osp.split(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.tmp_{name}')
    try:
        export_onnx(net, tmp, fp16=fp16, sample_size=sizes[0])
        session = onnx_session(tmp)
        diffs = [(size, max_abs_diff_to_pytorch(session, net, size, fp16)) for size in sizes]
    except ExportCheckError as err:
        os.replace(tmp, rejected_path(path))
        raise ExportCheckError(f'{err}; not written to {path}, kept as {rejected_path(path)} for inspection') from None
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
    return diffs
