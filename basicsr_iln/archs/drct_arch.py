"""DRCT (Hsu et al., "DRCT: Saving Image Super-Resolution away from Information Bottleneck", CVPRW
2024) with any normalisation of the norm family, on the shared Transformer core.

The body is a sequence of residual dense groups (RDG). Each RDG densely connects five Swin blocks
(``swin1`` .. ``swin5``, the core ``TransformerBlock`` with its own relative-position index and, in
the shifted ``swin2``/``swin4``, shift-mask buffers): block k sees the concatenation of the group
input and the ``gc``-channel outputs of the blocks before it, each squeezed by a 1x1 conv
(``adjust1`` .. ``adjust4``, LeakyReLU 0.2); ``adjust5`` maps back to ``embed_dim`` without an
activation, and the group returns ``0.2 * that + input``.

``DRCT`` (norm_type 'ln') has the released DRCT's state-dict keys and shapes; ``DRCT_iLN`` uses i-LN.
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from .transformer_core import (NO_STAGE_INPUTS, RestorationTransformer, TransformerBlock, image_to_tokens, run_layer,
                               stochastic_depth, tokens_to_image)

NUM_DENSE_BLOCKS = 5
DENSE_RESIDUAL_SCALE = 0.2


def dense_block_heads(dim, num_heads):
    """The released rule for the heads of a widened block: num_heads - (dim % num_heads)."""
    heads = num_heads - dim % num_heads
    if dim % heads:
        raise ValueError(f'DRCT block of width {dim} gets {heads} heads (num_heads - width % num_heads), '
                         f'which do not divide it; choose embed_dim, gc and num_heads accordingly.')
    return heads


class RDG(nn.Module):
    """Residual dense group of five Swin blocks (see the module docstring).

    Blocks 1, 3, 5 use plain windows, 2 and 4 shifted ones; blocks 4 and 5 have ``mlp_ratio`` 1. All
    five get the same drop-path rate, as in the released code.
    """

    def __init__(self, dim, input_resolution, num_heads, window_size, mlp_ratio=2., qkv_bias=True, qk_scale=None,
                 drop=0., attn_drop=0., drop_path=0., gc=32, norm_type='ln', norm_eps=None, use_checkpoint=False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        for k in range(NUM_DENSE_BLOCKS):
            width = dim + k * gc
            block = TransformerBlock(
                width, input_resolution, dense_block_heads(width, num_heads), window_size=window_size,
                shift_size=window_size // 2 if k % 2 else 0, mlp_ratio=mlp_ratio if k < 3 else 1, qkv_bias=qkv_bias,
                qk_scale=qk_scale, drop=drop, attn_drop=attn_drop, drop_path=drop_path, norm_type=norm_type,
                norm_eps=norm_eps, register_buffers=True)
            self.add_module(f'swin{k + 1}', block)
            self.add_module(f'adjust{k + 1}', nn.Conv2d(width, gc if k < NUM_DENSE_BLOCKS - 1 else dim, 1))
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x, x_size, stage=NO_STAGE_INPUTS):
        features = [x]
        for k in range(1, NUM_DENSE_BLOCKS + 1):
            y = run_layer(getattr(self, f'swin{k}'), torch.cat(features, dim=-1) if k > 1 else x, x_size, stage,
                          self.use_checkpoint)
            y = getattr(self, f'adjust{k}')(tokens_to_image(y, x_size))
            if k < NUM_DENSE_BLOCKS:
                y = self.lrelu(y)
            features.append(image_to_tokens(y))
        return x + features[-1] * DENSE_RESIDUAL_SCALE  # x first: keep its row-major layout (see ResidualGroup)


@ARCH_REGISTRY.register()
class DRCT(RestorationTransformer):
    """Dense-residual-connected Transformer for classical SR ('pixelshuffle'; the released code
    supports only this one) and, through the shared core, the other upsamplers and scale 1.

    Keyword arguments are those of the released DRCT (except ``norm_layer``; choose ``norm_type``).
    As released, ``len(depths)`` is the number of RDGs (each has five blocks whatever its depth
    entry; the depths only shape the drop-path schedule: RDG i uses the rate of block
    ``sum(depths[:i])``), and ``compress_ratio``, ``squeeze_factor``, ``conv_scale`` and
    ``overlap_ratio`` are accepted for option-file compatibility but unused. Added: ``norm_type``
    (default 'ln'), ``eps`` (the norms' eps; None: each norm's default) and ``stdnorm`` (None: the
    norm scheme's default, true for i-LN).
    """
    family = 'DRCT'

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, compress_ratio=3, squeeze_factor=30, conv_scale=0.01,
                 overlap_ratio=0.5, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
                 drop_path_rate=0.1, ape=False, patch_norm=True, use_checkpoint=False, upscale=2, img_range=1.,
                 upsampler='', resi_connection='1conv', gc=32, norm_type='ln', eps=None, stdnorm=None):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         window_size=window_size, drop_rate=drop_rate, ape=ape, patch_norm=patch_norm,
                         upscale=upscale, img_range=img_range, upsampler=upsampler, resi_connection=resi_connection,
                         norm_type=norm_type, eps=eps, stdnorm=stdnorm)
        del compress_ratio, squeeze_factor, conv_scale, overlap_ratio  # unused, as in the released DRCT
        if len(depths) != len(num_heads):
            raise ValueError(f'depths and num_heads need one entry per stage, got {list(depths)} and '
                             f'{list(num_heads)}.')
        self.layers = nn.ModuleList([
            RDG(embed_dim, self.patches_resolution, heads, window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate, drop_path=rates[0] if rates else 0.,
                gc=gc, norm_type=norm_type, norm_eps=eps, use_checkpoint=use_checkpoint)
            for heads, rates in zip(num_heads, stochastic_depth(drop_path_rate, depths))
        ])
        self.apply(self._init_weights)


@ARCH_REGISTRY.register()
class DRCT_iLN(DRCT):
    """DRCT with i-LN (default ``norm_type='iln'``): i-LN in every Swin block, affine-only stem norms."""

    def __init__(self, *args, norm_type='iln', **kwargs):
        super().__init__(*args, norm_type=norm_type, **kwargs)
