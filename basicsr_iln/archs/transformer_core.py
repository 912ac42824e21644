"""The Transformer core that SwinIR, HAT and DRCT share.

* window attention with a learned relative-position bias (``relative_position_bias``), run by torch's
  fused ``scaled_dot_product_attention`` (bias and shift mask are passed as one additive mask);
* the (shifted-)window Transformer block, optionally with HAT's parallel convolution branch;
  its two residual branches take their scale from the norm family's branch norms
  (``y, scale = norm(x)``), so every ``norm_type`` (LN, i-LN, ablations, ...) works in every backbone;
* the residual group (SwinIR's RSTB, HAT's RHAG) and the top-level restoration network
  (input normalisation, window padding, shallow conv, body, reconstruction heads).

Module and attribute names follow the released SwinIR/HAT/DRCT code so that released checkpoints
load key for key.
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from basicsr.archs.swinir_arch import PatchEmbed, PatchUnEmbed, Upsample, UpsampleOneStep, window_partition
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from .chunking import attend_in_chunks, tokenwise_in_chunks
from .norms import (build_branch_norm, build_stem_norm, check_norm_type, recording_graph, residual_add,
                    resolve_stdnorm)

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, as in SwinIR/HAT/DRCT
RGB_STD = (0.2842, 0.2701, 0.2920)  # DIV2K std, used by the official i-LN release with stdnorm
SHIFT_MASK_VALUE = -100.0  # the released models' value for cross-region pairs (not -inf)
UPSAMPLERS = ('pixelshuffle', 'pixelshuffledirect', 'nearest+conv', '')


@dataclass(frozen=True)
class StageInputs:
    """What every stage of one forward pass shares, computed once for the input size: the shift mask
    (None: the blocks compute it, or do not shift) and HAT's shared relative-position indices (None:
    each attention uses its own buffer)."""
    attn_mask: Optional[torch.Tensor] = None
    rpi_sa: Optional[torch.Tensor] = None
    rpi_oca: Optional[torch.Tensor] = None


NO_STAGE_INPUTS = StageInputs()


def run_layer(layer, x, x_size, stage, use_checkpoint):
    """``layer(x, x_size, stage)``; with ``use_checkpoint`` its activations are recomputed in backward
    instead of stored (gradient checkpointing; only while training, where there is a backward)."""
    if use_checkpoint and layer.training:
        return checkpoint(layer, x, x_size, stage, use_reentrant=False)
    return layer(x, x_size, stage)


def init_truncated_normal(tensor, std=.02):
    """timm's truncated-normal init, skipped for meta tensors (a network built on the meta device only to
    check its arguments or read its layout has nothing to fill, and there torch runs clamp_ as a Python
    decomposition: the init would cost more than the real one)."""
    if not tensor.is_meta:
        trunc_normal_(tensor, std=std)


def relative_position_index(window_size):
    """(N, N) index into a (2*ws-1)^2 bias table for every query/key pair of a square window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing='ij'))
    coords = coords.flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return relative[..., 0] * (2 * window_size - 1) + relative[..., 1]


def window_reverse(windows, window_size, h, w):
    """(B*nW, ws, ws, C) windows -> (B, h, w, C), as basicsr's ``window_reverse``, which converts the batch
    size to a Python int: here it is inferred, so a traced or exported graph keeps the batch dynamic."""
    channels = windows.shape[-1]
    x = windows.view(-1, h // window_size, w // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, channels)


def shifted_window_mask(x_size, window_size, shift_size, device=None):
    """(num_windows, N, N) additive mask that stops attention across the regions a cyclic shift joins.

    Built from comparisons with ``x_size`` (no Python branch or loop over it), so a traced or exported
    network computes the mask for the size it is given.
    """
    rows, cols = (_shift_regions(size, window_size, shift_size, device) for size in x_size)
    region = (rows[:, None] * 3 + cols[None, :])[None, :, :, None]
    region = window_partition(region, window_size).view(-1, window_size * window_size)
    different = (region.unsqueeze(1) - region.unsqueeze(2)) != 0
    return torch.zeros(different.shape, device=device).masked_fill(different, SHIFT_MASK_VALUE)


def _shift_regions(size, window_size, shift_size, device):
    """Region of every row (or column) after a cyclic shift by ``shift_size``: 0 up to the last window,
    1 in the last window before the wrapped-around strip, 2 in the last ``shift_size`` (the released slices)."""
    index = torch.arange(size, device=device)
    return (index >= size - window_size).long() + (index >= size - shift_size).long()


def relative_position_bias(table, index, n_query, n_key):
    """(heads, n_query, n_key) attention bias: the rows of ``table`` (entries, heads) that ``index``
    (n_query, n_key) addresses; negative entries address it from its end.

    Under torch.compile (not while a graph is recorded for export) the gather is one opaque op whose
    result is stored: inlined, inductor repeats the indirect, unvectorised load in every pass of the
    softmax over all windows (docs/benchmarks.md, "The bias gather under torch.compile").
    """
    if torch.compiler.is_compiling() and not recording_graph():
        return stored_relative_position_bias(table, index, n_query, n_key)
    return _gathered_bias(table, index, n_query, n_key)


def _gathered_bias(table, index, n_query, n_key):
    return table[index.view(-1)].view(n_query, n_key, -1).permute(2, 0, 1)


@torch.library.custom_op('basicsr_iln::relative_position_bias', mutates_args=())
def stored_relative_position_bias(table: torch.Tensor, index: torch.Tensor, n_query: int,
                                  n_key: int) -> torch.Tensor:
    """``relative_position_bias`` as a custom op (what torch.compile graphs call), contiguous."""
    return _gathered_bias(table, index, n_query, n_key).contiguous()


@stored_relative_position_bias.register_fake
def _(table, index, n_query, n_key):
    return table.new_empty((table.shape[1], n_query, n_key))


def _keep_bias_index(ctx, inputs, output):
    table, index = inputs[:2]
    ctx.save_for_backward(index)
    ctx.entries = table.shape[0]


def _bias_table_gradient(ctx, grad):
    """Every bias entry's gradient added into the table row it was read from, as autograd does for
    ``table[index]`` (an accumulating ``index_put_``, which also has a deterministic CUDA kernel)."""
    index, = ctx.saved_tensors
    heads = grad.shape[0]
    grad_table = grad.new_zeros(ctx.entries, heads)
    grad_table.index_put_((index.reshape(-1), ), grad.permute(1, 2, 0).reshape(-1, heads), accumulate=True)
    return grad_table, None, None, None


stored_relative_position_bias.register_autograd(_bias_table_gradient, setup_context=_keep_bias_index)


def biased_attention(q, k, v, bias, mask=None, dropout_p=0.0, scale=None):
    """softmax(q k^T * scale + bias [+ mask]) v over windows with torch's fused attention.

    q: (B*nW, heads, Nq, d); k, v: (B*nW, heads, Nk, d); bias: (heads, Nq, Nk);
    mask: (nW, Nq, Nk) or None, shared by the B images of the batch.

    Training on CPU uses the explicit formula instead: torch's fused CPU kernel has no gradient for
    the mask (the learned bias), so SDPA would fall back to its math path, about twice as slow. A
    recorded graph (trace, export) always holds the fused attention, whatever the grad mode.
    Elsewhere (CUDA) see ``_folded_attention``.
    """
    if q.device.type == 'cpu' and bias.requires_grad and torch.is_grad_enabled() and not recording_graph():
        return _explicit_biased_attention(q, k, v, bias, mask, dropout_p, scale)
    if q.device.type != 'cpu':
        return _folded_attention(q, k, v, bias, mask, dropout_p, scale)
    if mask is None:
        attn_mask = bias.unsqueeze(0)
    else:
        nw = mask.shape[0]
        per_window = _per_window_mask(bias, mask)
        attn_mask = per_window.unsqueeze(0).expand(q.shape[0] // nw, -1, -1, -1, -1).reshape(
            q.shape[0], *per_window.shape[1:])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype), dropout_p=dropout_p, scale=scale)


def _per_window_mask(bias, mask):
    """(nW, heads, Nq, Nk): the bias (heads, Nq, Nk) plus each window's shift mask (nW, Nq, Nk)."""
    return bias.unsqueeze(0) + mask.unsqueeze(1)


# CUDA's fused attention kernels with an additive mask (memory-efficient, cuDNN) need head dims of a multiple
# of 8 in half precision (4 in fp32, sm80+; torch's sdp_utils.cpp), else SDPA runs its unfused math path.
# The released SwinIR and HAT have 180 channels over 6 heads: 30.
FUSED_HEAD_DIM_MULTIPLE = 8


def _folded_attention(q, k, v, bias, mask, dropout_p, scale):
    """``biased_attention`` for CUDA's fused kernels. With a shift mask, the windows of each image become heads,
    (B, nW * heads, N, d): the per-window bias + mask, (1, nW * heads, N, N), is then broadcast over the batch
    instead of being stored (and kept for backward) once per image, B*nW*heads*N*N values (HAT-mini's batch of
    16: 100 MB per shifted block in fp32), for contiguous copies of q, k, v (d / N of that size each).
    q, k, v are zero-padded to a head dim of a multiple of FUSED_HEAD_DIM_MULTIPLE where needed: zeros add nothing
    to q k^T, the scale stays that of the real head dim, and v's zero columns are sliced off the output."""
    head_dim, windows_heads = q.shape[-1], q.shape[:2]
    pad = -head_dim % FUSED_HEAD_DIM_MULTIPLE
    if pad:
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    attn_mask = bias.unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        folded = (q.shape[0] // nw, nw * q.shape[1])
        q, k, v = (t.reshape(*folded, *t.shape[2:]) for t in (q, k, v))
        attn_mask = _per_window_mask(bias, mask).reshape(1, folded[1], *bias.shape[1:])
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype), dropout_p=dropout_p,
                                         scale=head_dim**-0.5 if scale is None else scale)
    return out[..., :head_dim].reshape(*windows_heads, *out.shape[2:-1], head_dim)


def _explicit_biased_attention(q, k, v, bias, mask, dropout_p, scale):
    """``biased_attention`` as the released SwinIR computes it: bias and mask broadcast, never expanded."""
    attn = (q * (q.shape[-1]**-0.5 if scale is None else scale)) @ k.transpose(-2, -1) + bias.unsqueeze(0)
    if mask is not None:
        attn = (attn.view(-1, mask.shape[0], *attn.shape[1:]) + mask.unsqueeze(1).to(attn.dtype)).view(attn.shape)
    return F.dropout(attn.softmax(dim=-1), dropout_p) @ v


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows with a relative-position bias.

    ``register_index``: keep the (N, N) relative-position index as this module's buffer (SwinIR,
    DRCT); HAT keeps one index for all blocks at the top level and passes it as ``rpi``.

    q, k, v are split off the last dim of ``qkv``'s output, not unbound from a (3, ...) permuted view: the same
    strided views, but under torch.compile the backward of ``unbind``, a stack through a permute, becomes one
    scalar gather of all 3 * dim channels in inductor's CPU code; that of ``split`` is a cat of three slices
    (docs/benchmarks.md, "q, k, v by split under torch.compile").
    """

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0., proj_drop=0.,
                 register_index=True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'the width {dim} must be divisible by num_heads ({num_heads}): each head gets '
                             'width / num_heads channels')
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads)**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1)**2, num_heads))
        if register_index:
            self.register_buffer('relative_position_index', relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        init_truncated_normal(self.relative_position_bias_table)

    def forward(self, x, mask=None, rpi=None):
        b_, n, c = x.shape
        heads = self.num_heads  # split by self.dim, not c: under jit.trace x.shape holds tensors, which split refuses
        q, k, v = (t.view(b_, n, heads, c // heads).transpose(1, 2) for t in self.qkv(x).split(self.dim, -1))
        bias = relative_position_bias(self.relative_position_bias_table,
                                      self.relative_position_index if rpi is None else rpi, n, n)
        x = biased_attention(q, k, v, bias, mask, self.attn_drop if self.training else 0.0, self.scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b_, n, c)))

    def extra_repr(self):
        return f'dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}'


class TransformerBlock(nn.Module):
    """(Shifted-)window Transformer block: ``x + s1*attn(n1(x))``, then ``x + s2*mlp(n2(x))``.

    ``s1``/``s2`` come from the norms (None for plain pre-norm; sqrt(var+eps) for i-LN).

    Its layers are factories, as in timm: ``attn_layer(dim, window_size, num_heads, qkv_bias, qk_scale,
    attn_drop, proj_drop, register_index=...)`` (``WindowAttention``) and ``mlp_layer(in_features=,
    hidden_features=, act_layer=, drop=)`` (timm's ``Mlp``); a variant swaps one without touching the block.
    ``conv_layer(dim)``, when given, is a convolutional branch beside the attention on the same normalised
    input, (B, C, H, W) -> (B, C, H, W), as in HAT's hybrid attention block: the first branch is then
    ``attn(n1(x)) + conv_block(n1(x))``, so i-LN rescales the conv branch too.

    ``register_buffers``: keep the relative-position index and, for shifted blocks, the shift mask
    for ``input_resolution`` as buffers (SwinIR, DRCT layouts); HAT passes both in. The mask buffer
    is only there for the released checkpoints' keys: forward uses the mask for the actual size (the
    ``attn_mask`` argument, else computed), so a traced or exported block is right at every size.
    """

    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0, mlp_ratio=4., qkv_bias=True,
                 qk_scale=None, drop=0., attn_drop=0., drop_path=0., act_layer=nn.GELU, norm_type='ln', norm_eps=None,
                 register_buffers=True, attn_layer=WindowAttention, mlp_layer=Mlp, conv_layer=None):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution)
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        if min(self.input_resolution) <= window_size:  # one window covers the image: no shift
            self.shift_size = 0
            self.window_size = min(self.input_resolution)
        if not 0 <= self.shift_size < self.window_size:
            raise ValueError(f'shift_size must be in [0, window_size), got {self.shift_size} for {self.window_size}')
        if register_buffers and self.shift_size > 0 and any(r % self.window_size for r in self.input_resolution):
            # The shift-mask buffer is built for this resolution (as in the released SwinIR/DRCT).
            raise ValueError(f'img_size // patch_size {self.input_resolution} must be a multiple of window_size '
                             f'{self.window_size}')

        self.norm1 = build_branch_norm(norm_type, dim, norm_eps)
        self.attn = attn_layer(dim, self.window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop,
                               register_index=register_buffers)
        self.conv_block = conv_layer(dim) if conv_layer is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = build_branch_norm(norm_type, dim, norm_eps)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        if register_buffers and self.shift_size > 0:
            self.register_buffer('attn_mask', shifted_window_mask(self.input_resolution, self.window_size,
                                                                  self.shift_size))
        else:
            self.attn_mask = None

    def _window_attention(self, x, x_size, attn_mask, rpi):
        b, h, w, c = x.shape
        ws, shift = self.window_size, self.shift_size
        mask = None
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(x_size, ws, shift, x.device) if attn_mask is None else attn_mask
        windows = window_partition(x, ws).view(-1, ws * ws, c)
        windows = attend_in_chunks(lambda q, m: self.attn(q, mask=m, rpi=rpi), windows, mask, windows.shape[0] // b,
                                   ws * ws)
        windows = windows.view(-1, ws, ws, c)
        x = window_reverse(windows, ws, h, w)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x.reshape(b, h * w, c)

    def forward(self, x, x_size, stage=NO_STAGE_INPUTS):
        h, w = x_size
        b, _, c = x.shape
        y, scale = self.norm1(x)
        y = y.view(b, h, w, c)
        branch = self.drop_path(self._window_attention(y, x_size, stage.attn_mask, stage.rpi_sa))
        if self.conv_block is not None:
            conv = self.conv_block(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, h * w, c)
            branch = branch + conv
        x = residual_add(x, branch, scale)
        y, scale = self.norm2(x)
        return residual_add(x, self.drop_path(tokenwise_in_chunks(self.mlp, y)), scale)

    def extra_repr(self):
        return (f'dim={self.dim}, input_resolution={self.input_resolution}, num_heads={self.num_heads}, '
                f'window_size={self.window_size}, shift_size={self.shift_size}')


def residual_stream(x):
    """``x`` in the dtype of the residual stream (the tokens from the stem norm to the final norm): float32
    under autocast on every device, whatever the norm.

    Why: CUDA's autocast runs layer_norm in float32, CPU's in its input's dtype, so the conv_first output
    (bfloat16) would make a LayerNorm network's stream float32 on a GPU and bfloat16 on a CPU, while i-LN's
    affine stem (float32 parameters) keeps it float32 on both and the norm-free schemes keep it bfloat16 on
    both. Then neither the schemes nor the devices would be compared at one precision. The residual adds and
    DRCT's concatenations keep the stream float32 from here on."""
    device = x.device.type  # is_autocast_enabled raises for devices without autocast (meta)
    return x.float() if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device) else x


def tokens_to_image(x, x_size):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x_size[0], x_size[1])


def image_to_tokens(x):
    return x.flatten(2).transpose(1, 2)


def build_resi_conv(dim, resi_connection):
    """The convolution at the end of a residual group / after the body ('1conv', '3conv', 'identity')."""
    if resi_connection == '1conv':
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == '3conv':  # fewer parameters
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1))
    if resi_connection == 'identity':  # HAT/DRCT option: no convolution
        return nn.Identity()
    raise ValueError(f"Unknown resi_connection '{resi_connection}'. Valid: '1conv', '3conv', 'identity'.")


class BlockSequence(nn.Module):
    """Transformer blocks applied in order (``blocks``), with optional gradient checkpointing."""

    def __init__(self, blocks, use_checkpoint=False):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.use_checkpoint = use_checkpoint

    def forward(self, x, x_size, stage=NO_STAGE_INPUTS):
        for block in self.blocks:
            x = run_layer(block, x, x_size, stage, self.use_checkpoint)
        return x


class ResidualGroup(nn.Module):
    """SwinIR's RSTB / HAT's RHAG: blocks, a convolution on the image-shaped result, a long skip."""

    def __init__(self, residual_group, dim, resi_connection='1conv'):
        super().__init__()
        self.residual_group = residual_group
        self.conv = build_resi_conv(dim, resi_connection)

    def forward(self, x, x_size, stage=NO_STAGE_INPUTS):
        y = self.residual_group(x, x_size, stage)
        # x first: the sum takes the memory layout of its first operand, and image_to_tokens is a
        # transposed view that would make every later token op run on strided memory.
        return x + image_to_tokens(self.conv(tokens_to_image(y, x_size)))


class RestorationTransformer(nn.Module):
    """Shared skeleton of SwinIR, HAT and DRCT.

    normalise input -> pad to the window multiple -> conv_first -> tokens (+ stem norm) -> stages
    -> final (stem) norm -> conv_after_body + skip -> reconstruction head -> crop -> denormalise.

    Subclasses build ``self.layers`` (each called as ``layer(x, x_size, stage)``), may override
    ``stage_inputs`` (a ``StageInputs`` shared by all stages), then call ``self.apply(self._init_weights)``.
    Input sizes that are not window multiples are reflect-padded and the output cropped back.

    ``family`` names the backbone (SwinIR, HAT, DRCT) whatever the registered name or norm: the
    ``*_iLN`` classes are the same family with i-LN as their default ``norm_type``.
    """
    family = None

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, window_size=7, drop_rate=0., ape=False,
                 patch_norm=True, upscale=2, img_range=1., upsampler='', resi_connection='1conv', norm_type='ln',
                 eps=None, stdnorm=None, num_feat=64):
        super().__init__()
        check_norm_type(norm_type)
        if upsampler not in UPSAMPLERS:
            raise ValueError(f"Unknown upsampler '{upsampler}'. Valid: {', '.join(map(repr, UPSAMPLERS))}.")
        if in_chans not in (1, 3):
            raise ValueError(f'in_chans must be 1 (gray) or 3 (RGB), got {in_chans}.')
        if upsampler == '' and upscale != 1:
            raise ValueError(f"upsampler '' (denoising / JPEG) needs upscale 1, got {upscale}.")
        self.img_range = img_range
        self.upscale = upscale
        self.upsampler = upsampler
        self.window_size = window_size
        self.norm_type = norm_type
        self.embed_dim = embed_dim
        mean = RGB_MEAN if in_chans == 3 else (0.0, )
        self.stdnorm = resolve_stdnorm(norm_type, stdnorm)
        std = (RGB_STD if in_chans == 3 else RGB_STD[:1]) if self.stdnorm else (1.0, ) * in_chans
        self.register_buffer('mean', torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, in_chans, 1, 1), persistent=False)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=embed_dim, embed_dim=embed_dim,
            norm_layer=(lambda dim: build_stem_norm(norm_type, dim, eps)) if patch_norm else None)
        self.patches_resolution = tuple(self.patch_embed.patches_resolution)
        # Blocks shift their windows only when the construction-time resolution exceeds the window.
        self._shifted = min(self.patches_resolution) > window_size
        self.register_buffer('kept_shift_mask', None, persistent=False)
        self.keep_shift_mask(self.patches_resolution)
        self.patch_unembed = PatchUnEmbed(img_size=img_size, patch_size=patch_size, in_chans=embed_dim,
                                          embed_dim=embed_dim)
        self.ape = ape
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            init_truncated_normal(self.absolute_pos_embed)
        self.pos_drop = nn.Dropout(p=drop_rate)
        self.norm = build_stem_norm(norm_type, embed_dim, eps)
        self.conv_after_body = build_resi_conv(embed_dim, resi_connection)
        self._build_head(upsampler, upscale, embed_dim, num_feat, in_chans)

    def _build_head(self, upsampler, upscale, embed_dim, num_feat, out_chans):
        if upsampler in ('pixelshuffle', 'nearest+conv'):
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1),
                                                      nn.LeakyReLU(inplace=True))
        if upsampler == 'pixelshuffle':  # classical SR
            self.upsample = with_channels_last_pixel_shuffles(Upsample(upscale, num_feat))
            self.conv_last = nn.Conv2d(num_feat, out_chans, 3, 1, 1)
        elif upsampler == 'pixelshuffledirect':  # lightweight SR
            self.upsample = with_channels_last_pixel_shuffles(
                UpsampleOneStep(upscale, embed_dim, out_chans, self.patches_resolution))
        elif upsampler == 'nearest+conv':  # real-world SR, fewer checkerboard artefacts
            if upscale != 4:
                raise ValueError(f"upsampler 'nearest+conv' supports upscale 4 only, got {upscale}.")
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, out_chans, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        else:  # denoising / JPEG artifact removal: predict a residual at full resolution
            self.conv_last = nn.Conv2d(embed_dim, out_chans, 3, 1, 1)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            init_truncated_normal(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {'absolute_pos_embed'}

    @torch.jit.ignore
    def no_weight_decay_keywords(self):
        return {'relative_position_bias_table'}

    def stage_inputs(self, x_size, device):
        """The ``StageInputs`` of every stage: the shift mask for ``x_size``, unless overridden. Whether
        there is one depends on the construction only."""
        if not self._shifted:
            return NO_STAGE_INPUTS
        return StageInputs(attn_mask=self.shift_mask(x_size, device))

    def shift_mask(self, x_size, device):
        """The shift mask for ``x_size``: the kept one when it is of that size, else computed.
        Why keep one: computed inside a torch.compile graph, the mask made inductor (CPU) lay the attention
        scores out with the windows innermost, so that every batched matmul on them ran window by window
        (docs/benchmarks.md, torch.compile). A recorded graph (trace, export) always computes it, so that it
        is right at every size."""
        kept = self.kept_shift_mask
        if kept is not None and not recording_graph() and tuple(x_size) == self.kept_mask_size:
            return kept
        return shifted_window_mask(x_size, self.window_size, self.window_size // 2, device)

    def keep_shift_mask(self, image_size):
        """Keep the shift mask of inputs of ``image_size`` (h, w; padded to the window): that of ``img_size``
        from construction, the training patch's when IRModel compiles the network for training."""
        ws = self.window_size
        size = tuple(-(-side // ws) * ws for side in image_size)
        self.kept_mask_size = size if self._shifted else None
        self.kept_shift_mask = shifted_window_mask(size, ws, ws // 2, self.mean.device) if self._shifted else None

    def forward_features(self, x):
        x_size = (x.shape[2], x.shape[3])
        # Row-major tokens: PatchEmbed returns a transposed view, which LayerNorm happens to copy but
        # affine-only (i-LN) or absent stem norms pass on to every later op.
        x = self.patch_embed(residual_stream(x)).contiguous()
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        stage = self.stage_inputs(x_size, x.device)
        for layer in self.layers:
            x = layer(x, x_size, stage)
        return self.patch_unembed(self.norm(x), x_size)

    def _reconstruct(self, feat):
        if self.upsampler == 'pixelshuffle':
            return self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        if self.upsampler == 'pixelshuffledirect':
            return self.upsample(feat)
        feat = self.conv_before_upsample(feat)  # nearest+conv
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode='nearest')))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode='nearest')))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))

    def pad_to_window(self, x):
        """Pad bottom and right to a window multiple: reflect, or replicate when a side is too short
        to reflect (as ``F.pad``'s modes), by gathering rows and columns. The pad (possibly of 0) and
        the choice of mode are tensor ops, so traced and exported networks pad at every input size."""
        h, w = x.shape[-2:]
        ws = self.window_size
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        # A bool tensor in every mode: the comparisons give Python bools in eager mode, tensors when traced.
        reflect = torch.ones((), dtype=torch.bool, device=x.device) & (pad_h < h) & (pad_w < w)
        rows = _padded_index(h, pad_h, reflect, x.device)
        cols = _padded_index(w, pad_w, reflect, x.device)
        return x.index_select(-2, rows).index_select(-1, cols)

    def forward(self, x):
        h, w = x.shape[-2:]
        x = (self.pad_to_window(x) - self.mean) * self.img_range / self.std
        feat = self.conv_first(x)
        feat = self.conv_after_body(self.forward_features(feat)) + feat
        if self.upsampler == '':
            x = x + self.conv_last(feat)
        else:
            x = self._reconstruct(feat)
        x = x * self.std / self.img_range + self.mean
        return x[..., :h * self.upscale, :w * self.upscale]


def _padded_index(size, pad, reflect, device):
    """Source index of each of the ``size + pad`` rows (or columns) of a bottom/right pad: mirrored
    at the last one if ``reflect`` (a bool tensor), else clamped to it."""
    index = torch.arange(size + pad, device=device)
    last = size - 1
    return torch.where(reflect, last - (index - last).abs(), index.clamp(max=last))


class ChannelsLastPixelShuffle(nn.PixelShuffle):
    """``nn.PixelShuffle`` that, under torch.compile on CPU, gathers its output in channels_last order.

    Why: inductor lays convolution outputs out in channels_last; from such an input it writes the plain
    pixel shuffle as a scalar gather into a contiguous NCHW tensor, then transposes that back to channels_last
    for the next convolution. Gathered in NHWC order instead, each output pixel's channels are one run, and
    the next convolution reads it as it is (docs/benchmarks.md, "The pixel shuffle under torch.compile").
    Eager code, other devices and recorded graphs (ONNX's DepthToSpace) keep ``F.pixel_shuffle``. A compiled
    network's output is then channels_last, as with option ``channels_last``; its values are the same.
    """

    def forward(self, x):
        if x.device.type != 'cpu' or not torch.compiler.is_compiling() or recording_graph():
            return F.pixel_shuffle(x, self.upscale_factor)
        b, c, h, w = x.shape
        r = self.upscale_factor
        shuffled = x.permute(0, 2, 3, 1).reshape(b, h, w, c // (r * r), r, r).permute(0, 1, 4, 2, 5, 3)
        return shuffled.reshape(b, h * r, w * r, c // (r * r)).permute(0, 3, 1, 2)


def with_channels_last_pixel_shuffles(upsample):
    """``upsample`` (BasicSR's Upsample / UpsampleOneStep) with each PixelShuffle a ChannelsLastPixelShuffle;
    neither has parameters, so the state-dict keys stay the released ones."""
    for name, module in upsample.named_children():
        if type(module) is nn.PixelShuffle:
            setattr(upsample, name, ChannelsLastPixelShuffle(module.upscale_factor))
    return upsample


def shifted_window_blocks(depth, drop_paths, dim, input_resolution, num_heads, window_size, **block_kwargs):
    """``depth`` TransformerBlocks alternating regular and half-window-shifted windows (Swin's
    W-MSA / SW-MSA pairs)."""
    return [
        TransformerBlock(dim, input_resolution, num_heads, window_size=window_size,
                         shift_size=0 if i % 2 == 0 else window_size // 2, drop_path=drop_paths[i], **block_kwargs)
        for i in range(depth)
    ]


def stage_plan(depths, num_heads, drop_path_rate):
    """(depth, heads, per-block drop-path rates) of each stage, once depths and heads are checked to pair up."""
    if len(depths) != len(num_heads):
        raise ValueError(f'depths and num_heads need one entry per stage, got {list(depths)} and {list(num_heads)}.')
    return zip(depths, num_heads, stochastic_depth(drop_path_rate, depths))


def stochastic_depth(drop_path_rate, depths):
    """Per-block drop-path rates rising linearly over all blocks, split per stage."""
    rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()  # also under a meta device
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[s:s + d] for s, d in zip(starts, depths)]
