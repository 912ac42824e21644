"""HAT (Chen et al., "Activating More Pixels in Image Super-Resolution Transformer", CVPR 2023) with any
normalisation of the norm family, on the shared Transformer core.

* hybrid attention block (HAB) = the core ``TransformerBlock`` with a channel-attention conv branch
  (CAB) next to the window attention; HAT keeps the relative-position index and the shift mask at the
  top level (``relative_position_index_SA``), so the blocks register no buffers;
* overlapping cross-attention block (OCAB): queries from ``ws x ws`` windows, keys/values from the
  enlarged ``ows x ows`` windows around them (``ows = ws + int(ws * overlap_ratio)``, zero padded),
  with its own bias table addressed by ``relative_position_index_OCA``; it uses the core's
  ``biased_attention``;
* residual hybrid attention group (RHAG) = the core ``ResidualGroup`` around ``AttenBlocks``
  (``blocks`` + ``overlap_attn``).

``HAT`` (norm_type 'ln') has the released HAT's state-dict keys and shapes; ``HAT_iLN`` (also
registered as ``HAT-iLN``, the name the official i-LN option files use) has the official i-LN
release's: i-LN in every HAB and OCAB (each residual branch is rescaled by its norm input's
sqrt(var + eps), the HAB's attention + conv branch together, the OCAB's branch after ``proj``) and
affine-only stem norms.
"""
import torch
import torch.nn.functional as F
from basicsr.archs.swinir_arch import window_partition
from basicsr.utils.registry import ARCH_REGISTRY
from timm.layers import Mlp
from torch import nn

from .chunking import attend_in_chunks, tokenwise_in_chunks
from .norms import build_branch_norm, residual_add
from .transformer_core import (NO_STAGE_INPUTS, BlockSequence, ResidualGroup, RestorationTransformer, StageInputs,
                               biased_attention, init_truncated_normal, relative_position_bias, relative_position_index,
                               run_layer, shifted_window_blocks, stage_plan, window_reverse)


def _grid_coords(size):
    """(2, size*size) row/column coordinates of a square grid, row-major."""
    return torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')).flatten(1)


def overlapping_relative_position_index(window_size, overlap_win_size):
    """(ws*ws, ows*ows) index into the OCAB bias table of (ws + ows - 1)^2 rows, for every pair of a
    query in a ws-window and a key in its enlarged ows-window.

    The same values as the released HAT's ``calculate_rpi_oca`` (released checkpoints store this
    buffer): the per-axis offset key - query is shifted by ``ws - ows + 1``, so for ows > ws + 1 some
    entries are negative and address the table from its end (tensor indexing wraps them once). Every
    distinct offset still gets its own table row (the indices are distinct modulo the table size).
    """
    span = window_size + overlap_win_size - 1
    relative = (_grid_coords(overlap_win_size)[:, None, :] - _grid_coords(window_size)[:, :, None]).permute(1, 2, 0)
    relative = relative + (window_size - overlap_win_size + 1)
    return relative[..., 0] * span + relative[..., 1]


def overlap_window_size(window_size, overlap_ratio):
    return int(window_size * overlap_ratio) + window_size


class ChannelAttention(nn.Module):
    """RCAN's channel attention: x * sigmoid(W2 relu(W1 avgpool(x)))."""

    def __init__(self, num_feat, squeeze_factor=16):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, num_feat // squeeze_factor, 1, padding=0),
            nn.ReLU(inplace=True), nn.Conv2d(num_feat // squeeze_factor, num_feat, 1, padding=0), nn.Sigmoid())

    def forward(self, x):
        return x * self.attention(x)


class CAB(nn.Module):
    """HAT's channel attention block: conv3x3 (compress) -> GELU -> conv3x3 -> channel attention, times
    ``out_scale`` (HAT's ``conv_scale``: the hybrid block adds ``conv_scale * CAB`` to its attention)."""

    def __init__(self, num_feat, compress_ratio=3, squeeze_factor=30, out_scale=1.0):
        super().__init__()
        self.out_scale = out_scale
        if num_feat // compress_ratio < 1 or num_feat // squeeze_factor < 1:
            raise ValueError(f'CAB needs num_feat // compress_ratio and num_feat // squeeze_factor >= 1, got '
                             f'num_feat={num_feat}, compress_ratio={compress_ratio}, squeeze_factor={squeeze_factor}.')
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1), ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x):
        return self.cab(x) * self.out_scale


class OCAB(nn.Module):
    """Overlapping cross-attention block: ``x + s1*proj(OCA(n1(x)))``, then ``x + s2*mlp(n2(x))``.

    Queries come from non-overlapping ws x ws windows, keys and values from the ows x ows windows
    centred on them (the key/value map is zero padded by (ows - ws) / 2 on each side, after the qkv
    projection, as in the released code). ``s1``/``s2`` come from the norms (i-LN: sqrt(var + eps)).
    """

    def __init__(self, dim, input_resolution, window_size, overlap_ratio, num_heads, qkv_bias=True, qk_scale=None,
                 mlp_ratio=2, norm_type='ln', norm_eps=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads}).')
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads)**-0.5
        self.overlap_win_size = overlap_window_size(window_size, overlap_ratio)

        self.norm1 = build_branch_norm(norm_type, dim, norm_eps)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((window_size + self.overlap_win_size - 1)**2, num_heads))
        init_truncated_normal(self.relative_position_bias_table)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = build_branch_norm(norm_type, dim, norm_eps)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def _key_value_windows(self, k, v):
        """(b, h, w, c) keys and values -> two (b*nW, heads, ows*ows, d), windows in window_partition order."""
        b, _, _, c = k.shape
        ws, ows, heads = self.window_size, self.overlap_win_size, self.num_heads
        kv = torch.cat((k, v), dim=-1).permute(0, 3, 1, 2)
        # (ows - ws) / 2 zeros on each side; an odd surplus goes to the bottom/right, so the number of
        # enlarged windows always equals the number of query windows.
        before = (ows - ws) // 2
        after = ows - ws - before
        kv = F.unfold(F.pad(kv, (before, after, before, after)), kernel_size=ows, stride=ws)  # b, 2c*ows*ows, nW
        kv = kv.view(b, 2, heads, c // heads, ows * ows, -1).permute(1, 0, 5, 2, 4, 3)
        return kv.reshape(2, -1, heads, ows * ows, c // heads).unbind(0)

    def forward(self, x, x_size, stage=NO_STAGE_INPUTS):
        h, w = x_size
        b, _, c = x.shape
        ws, ows, heads = self.window_size, self.overlap_win_size, self.num_heads
        y, scale = self.norm1(x)
        q, k, v = self.qkv(y).view(b, h, w, 3, c).unbind(3)
        q = window_partition(q, ws).view(-1, ws * ws, heads, c // heads).transpose(1, 2)
        k, v = self._key_value_windows(k, v)

        rpi_oca = stage.rpi_oca
        if rpi_oca is None:
            rpi_oca = overlapping_relative_position_index(ws, ows).to(x.device)
        bias = relative_position_bias(self.relative_position_bias_table, rpi_oca, ws * ws, ows * ows)
        out = attend_in_chunks(lambda q_, k_, v_, mask: biased_attention(q_, k_, v_, bias, scale=self.scale),
                               q, None, q.shape[0] // b, ws * ws, k, v)
        out = window_reverse(out.transpose(1, 2).reshape(-1, ws, ws, c), ws, h, w).reshape(b, h * w, c)

        x = residual_add(x, self.proj(out), scale)
        y, scale = self.norm2(x)
        return residual_add(x, tokenwise_in_chunks(self.mlp, y), scale)

    def extra_repr(self):
        return (f'dim={self.dim}, window_size={self.window_size}, overlap_win_size={self.overlap_win_size}, '
                f'num_heads={self.num_heads}')


class AttenBlocks(BlockSequence):
    """The body of one RHAG: the hybrid attention blocks (``blocks``), then one OCAB (``overlap_attn``)."""

    def __init__(self, blocks, overlap_attn, use_checkpoint=False):
        super().__init__(blocks, use_checkpoint)
        self.overlap_attn = overlap_attn

    def forward(self, x, x_size, stage=NO_STAGE_INPUTS):
        x = super().forward(x, x_size, stage)
        return run_layer(self.overlap_attn, x, x_size, stage, self.use_checkpoint)


@ARCH_REGISTRY.register()
class HAT(RestorationTransformer):
    """Hybrid Attention Transformer for classical SR ('pixelshuffle'; the released code supports only
    this one), and, through the shared core, 'pixelshuffledirect', 'nearest+conv' and restoration at
    scale 1 (``upsampler=''``).

    Keyword arguments are those of the released HAT (except ``norm_layer``; choose ``norm_type``),
    plus ``norm_type`` (default 'ln'), ``eps`` (the norms' eps; None: each norm's default, 1e-4 for
    i-LN) and ``stdnorm`` (also divide the input by the DIV2K std, as the official i-LN option files
    do; None: the norm scheme's default, so ``HAT_iLN`` gets true as released). Unknown keyword
    arguments raise TypeError. Inputs of any size are reflect-padded to a window multiple and the
    output cropped back.
    """
    family = 'HAT'

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, compress_ratio=3, squeeze_factor=30, conv_scale=0.01,
                 overlap_ratio=0.5, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
                 drop_path_rate=0.1, ape=False, patch_norm=True, use_checkpoint=False, upscale=2, img_range=1.,
                 upsampler='', resi_connection='1conv', norm_type='ln', eps=None, stdnorm=None):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         window_size=window_size, drop_rate=drop_rate, ape=ape, patch_norm=patch_norm,
                         upscale=upscale, img_range=img_range, upsampler=upsampler, resi_connection=resi_connection,
                         norm_type=norm_type, eps=eps, stdnorm=stdnorm)
        if min(self.patches_resolution) < window_size:
            # The blocks would shrink their windows to the image while the shared index stays ws x ws.
            raise ValueError(f'HAT needs img_size // patch_size >= window_size, got {self.patches_resolution} '
                             f'and window_size {window_size}.')
        if overlap_ratio < 0:
            raise ValueError(f'overlap_ratio must be >= 0, got {overlap_ratio}.')
        self.overlap_ratio = overlap_ratio
        self.register_buffer('relative_position_index_SA', relative_position_index(window_size))
        self.register_buffer('relative_position_index_OCA',
                             overlapping_relative_position_index(window_size,
                                                                 overlap_window_size(window_size, overlap_ratio)))

        self.layers = nn.ModuleList()
        for depth, heads, drop_paths in stage_plan(depths, num_heads, drop_path_rate):
            blocks = shifted_window_blocks(
                depth, drop_paths, embed_dim, self.patches_resolution, heads, window_size,
                conv_layer=lambda dim: CAB(dim, compress_ratio, squeeze_factor, out_scale=conv_scale),
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                norm_type=norm_type, norm_eps=eps, register_buffers=False)
            overlap_attn = OCAB(embed_dim, self.patches_resolution, window_size, overlap_ratio, heads,
                                qkv_bias=qkv_bias, qk_scale=qk_scale, mlp_ratio=mlp_ratio, norm_type=norm_type,
                                norm_eps=eps)
            self.layers.append(
                ResidualGroup(AttenBlocks(blocks, overlap_attn, use_checkpoint), embed_dim, resi_connection))
        self.apply(self._init_weights)

    def stage_inputs(self, x_size, device):
        """The shift mask for this input size and the two shared relative-position indices."""
        return StageInputs(attn_mask=self.shift_mask(x_size, device) if self._shifted else None,
                           rpi_sa=self.relative_position_index_SA,
                           rpi_oca=self.relative_position_index_OCA)


@ARCH_REGISTRY.register()
class HAT_iLN(HAT):
    """HAT with i-LN (default ``norm_type='iln'``): the official i-LN release's ``HAT-iLN`` layout."""

    def __init__(self, *args, norm_type='iln', **kwargs):
        super().__init__(*args, norm_type=norm_type, **kwargs)


# The name used by the official i-LN option files.
ARCH_REGISTRY._do_register('HAT-iLN', HAT_iLN)
