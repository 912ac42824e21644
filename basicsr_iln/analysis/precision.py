"""Low-precision inference for the test and inference CLIs: fp32, bf16, fp16, or int8 (dynamic, Linear layers).

bf16/fp16 cast a *copy* of the network, weights, buffers and input alike: pure low-precision
inference. Autocast would not do: it keeps LayerNorm (and other reductions) in fp32 and so hides
exactly the failure the paper reports, LN features of ~1e5+ overflowing half precision. Our own
norms still compute their statistics in fp32 (see archs/norms.py), as a careful fp16 kernel would;
the residual stream itself lives in the chosen dtype.

On CPU, PyTorch has no fast fp16/bf16 convolution or matrix product without AVX-512 FP16/BF16 (it
falls back to reference kernels ~20x slower than fp32). There, Linear and Conv2d layers take inputs
and weights rounded to the half type, accumulate in fp32 and round their output back, which is what
GPU half-precision kernels do (fp32 accumulators); every other operation runs in the half type, and
a value beyond the type's range still becomes inf. int8 quantises the Linear layers' weights to
int8 with activations quantised on the fly (``torch.ao.quantization.quantize_dynamic``, CPU only).
"""
import copy
import warnings

import torch
import torch.distributed as dist
from torch import nn

from basicsr_iln.utils.errors import ConfigError

FLOAT_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
EVAL_PRECISIONS = (*FLOAT_DTYPES, 'int8')


def parse_precisions(value, source):
    """['fp32', 'fp16', ...] from a list or a comma-separated string; ``source`` names it in errors."""
    names = value.split(',') if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names:
        raise ConfigError(f'{source} must be a precision or a list of them ({", ".join(EVAL_PRECISIONS)}), '
                          f'got {value!r}')
    names = [str(n).strip() for n in names]
    for name in names:
        if name not in EVAL_PRECISIONS:
            raise ConfigError(f'{source}: unknown precision {name!r}; valid: {", ".join(EVAL_PRECISIONS)}')
    return list(dict.fromkeys(names))


def accumulate_in_fp32(layer, dtype):
    """Make a Linear/Conv2d compute from ``dtype``-rounded weights and inputs with fp32 accumulation and
    return ``dtype`` (see the module docstring: fast on CPU, the numerics of a GPU half kernel)."""
    layer.to(dtype).float()  # the weights as the half type stores them
    layer.register_forward_pre_hook(lambda module, args: tuple(a.float() for a in args))
    layer.register_forward_hook(lambda module, args, output: output.to(dtype))


def half_precision_copy(net, dtype):
    """A copy of ``net`` converted to ``dtype``; on CPU with fp32-accumulating Linear/Conv2d layers."""
    half = copy.deepcopy(net).to(dtype)
    if next(net.parameters()).device.type == 'cpu':
        for module in half.modules():
            if type(module) in (nn.Linear, nn.Conv2d):
                accumulate_in_fp32(module, dtype)
    return half


def quantize_linear_int8(net):
    """A copy of ``net`` with int8 dynamically quantised Linear layers (CPU inference)."""
    if next(net.parameters()).device.type != 'cpu':
        raise ConfigError('int8 evaluation (dynamic quantisation) runs on CPU only: set num_gpu: 0')
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, still present
        warnings.simplefilter('ignore')
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(net), {nn.Linear}, dtype=torch.qint8)


class PrecisionNetwork(nn.Module):
    """``net`` evaluated in one precision: casts the input, returns fp32, counts non-finite outputs.

    fp32 wraps ``net`` itself; the other precisions wrap a converted copy, so the model's weights
    (and a later fp32 pass) are untouched.
    """

    def __init__(self, net, precision):
        super().__init__()
        if precision == 'int8':
            self.net, self.input_dtype = quantize_linear_int8(net), torch.float32
        else:
            dtype = FLOAT_DTYPES[precision]
            self.net, self.input_dtype = (net if precision == 'fp32' else half_precision_copy(net, dtype)), dtype
        self.precision = precision
        self.nonfinite = 0
        # What the inference helpers (utils/inference.py) read from a network: tiling pads like the network.
        self.upscale = getattr(net, 'upscale', 1)
        self.window_size = getattr(net, 'window_size', 1)
        self.pad_to_window = getattr(net, 'pad_to_window', None)
        self.train(net.training)  # test() restores the mode it found, which must be the network's

    def forward(self, x):
        out = self.net(x.to(self.input_dtype))
        self.nonfinite += int((~torch.isfinite(out)).sum())
        return out.float()

    def take_record(self):
        """{'precision', 'nonfinite'} for a metrics record (count summed over DDP ranks), and a fresh count."""
        count = torch.tensor(self.nonfinite, dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            count = count.to(next(self.parameters(), count).device)
            dist.all_reduce(count)
        self.nonfinite = 0
        return {'precision': self.precision, 'nonfinite': int(count)}
