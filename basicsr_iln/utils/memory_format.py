"""The ``channels_last`` option: convolution weights in NHWC memory format, so that oneDNN (CPU) and cuDNN run
the convolutions on their native layout instead of reordering weights and feature maps at every call. The
tokens of these networks are (B, H*W, C), so the feature maps they hand to a convolution are NHWC views
already; with NCHW weights each convolution converts one of the two. Measured in docs/benchmarks.md ("Memory
format: channels_last"): it depends on the machine, hence off by default, as in torch and BasicSR.

Only the layout changes, never a value's meaning: checkpoints are written contiguous (they load into either
layout, and into BasicSR's networks), and the optimizer's per-parameter state follows its parameter's layout
(``match_state_layouts``).
"""
import torch


def to_memory_format(net, channels_last):
    """``net`` with its 4-D weights and buffers in channels_last when ``channels_last`` (in place, as
    ``Module.to``); unchanged otherwise."""
    return net.to(memory_format=torch.channels_last) if channels_last else net


def add_channels_last_argument(parser):
    """``--channels-last`` of the CLIs without an option file (infer, tables, benchmarks)."""
    parser.add_argument('--channels-last', action='store_true', help='convolution weights and input images in NHWC '
                        'memory format, as option channels_last does (faster or slower by machine: '
                        'docs/benchmarks.md)')


def image_memory_format(channels_last):
    """The ``memory_format`` argument of ``Tensor.to`` for the network's input images: in channels_last as well
    (torch's advice: its first convolution then reorders neither), else as they come."""
    return torch.channels_last if channels_last else torch.preserve_format


def match_state_layouts(optimizer):
    """Give every per-parameter state tensor of the shape of its parameter (Adam's moments) the parameter's
    strides; returns how many were re-laid.

    torch's fused Adam reads parameter, gradient and moments as flat memory: a moment saved from a network in
    the other layout (a run resumed with ``channels_last`` switched) would be combined element by element with
    the wrong entries, silently. Gradients cannot differ: autograd lays them out as their parameter.
    """
    moved = 0
    for group in optimizer.param_groups:
        for param in group['params']:
            state = optimizer.state.get(param, {})
            for key, value in list(state.items()):
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
                    moved += 1
    return moved
