"""SwinIR (Liang et al., 2021) with any normalisation of the norm family.

With ``norm_type='ln'`` this is the released SwinIR: the same state-dict keys and shapes and the
same output as ``basicsr.archs.swinir_arch.SwinIR`` for the same weights.
"""
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from .transformer_core import BlockSequence, ResidualGroup, RestorationTransformer, shifted_window_blocks, stage_plan


@ARCH_REGISTRY.register()
class SwinIR_iLN(RestorationTransformer):
    """SwinIR for classical SR ('pixelshuffle'), lightweight SR ('pixelshuffledirect'), real SR
    ('nearest+conv'), and denoising / JPEG artifact removal (``upscale=1``, ``upsampler=''``).

    Keyword arguments are those of the released SwinIR plus ``norm_type`` (default 'iln'), ``eps``
    (the norms' eps; None: each norm's default, 1e-4 for i-LN) and ``stdnorm`` (also divide the
    input by the DIV2K per-channel std, as the official i-LN option files do; None: the norm scheme's
    default, true for i-LN and its ablations, false otherwise).
    """
    family = 'SwinIR'

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0.,
                 attn_drop_rate=0., drop_path_rate=0.1, ape=False, patch_norm=True, use_checkpoint=False, upscale=2,
                 img_range=1., upsampler='', resi_connection='1conv', norm_type='iln', eps=None, stdnorm=None):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         window_size=window_size, drop_rate=drop_rate, ape=ape, patch_norm=patch_norm,
                         upscale=upscale, img_range=img_range, upsampler=upsampler, resi_connection=resi_connection,
                         norm_type=norm_type, eps=eps, stdnorm=stdnorm)
        self.layers = nn.ModuleList()
        for depth, heads, drop_paths in stage_plan(depths, num_heads, drop_path_rate):
            blocks = shifted_window_blocks(
                depth, drop_paths, embed_dim, self.patches_resolution, heads, window_size, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate, norm_type=norm_type,
                norm_eps=eps)
            self.layers.append(ResidualGroup(BlockSequence(blocks, use_checkpoint), embed_dim, resi_connection))
        self.apply(self._init_weights)

