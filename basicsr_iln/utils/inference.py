"""Test-time inference shared by IRModel.test, the inference CLI and the table script: x8 self-ensemble,
tiled inference with blended overlaps, and whole images in bounded memory (chunked attention).

Self-ensemble (Lim et al., EDSR+, and the '+' rows of SR papers): the network is run on the 8
flips/rotations of the input, each output is mapped back and the 8 are averaged.

Tiling splits the input into ``tile x tile`` crops that overlap by ``overlap`` pixels; the last crop
of a row/column is shifted back inside the image, so every crop has the same size. The network's own
padding to its window multiple is applied to the whole image first, so the edge crops see what the
untiled forward sees. Outputs are blended with weights that ramp linearly from 0 to 1 across the
middle half of each overlap and are 0 on its outer quarter: a crop's pixels next to its cut edge
(where its receptive field is truncated) never contribute, and two crops overlapping by exactly
``overlap`` sum to 1.

What that makes exact: a network whose receptive radius is at most ``overlap / 4`` input pixels and
whose every operation is local (convolutions) gives the untiled output. Shifted-window attention
reaches further with every block, so a LayerNorm Transformer is close but not equal. A network with
image-wide statistics is not exact at all: i-LN (LN*) and InstanceNorm normalise each crop with that
crop's own statistics, HAT's channel attention pools over the crop (``tiling_caveats`` names them).
Measured on a tiny SwinIR trained 200 iterations (x2, LR 256 px, tile 64, overlap 32), tiled vs
untiled: LN 122 dB, i-LN 77.5 dB (at most 0.25 of an 8-bit level).
"""
import torch
from torch import nn
from tqdm import tqdm

from ..archs.chunking import DEFAULT_CHUNK_TOKENS, chunked_inference
from .errors import ConfigError


def self_ensemble(forward, x):
    """Mean of ``forward`` over the 8 dihedral transforms of ``x`` (N, C, H, W), each mapped back."""
    total = None
    for rotations in range(4):
        for flip in (False, True):
            view = torch.rot90(x, rotations, (-2, -1))
            out = forward(view.flip(-1) if flip else view).float()
            out = torch.rot90(out.flip(-1) if flip else out, -rotations, (-2, -1))
            total = out if total is None else total + out
    return total / 8


def tile_starts(size, tile, overlap):
    """Start offsets of crops of length ``min(tile, size)`` covering ``size`` with >= ``overlap`` overlap."""
    if size <= tile:
        return [0]
    return list(range(0, size - tile, tile - overlap)) + [size - tile]


def edge_ramp(length, overlap, ramp_start, ramp_end):
    """1D blending weights of one crop (``length`` output pixels); ramps at the cut ends only."""
    weight = torch.ones(length)
    if overlap == 0:
        return weight
    dead = overlap // 4
    distance = torch.arange(length, dtype=torch.float32)
    ramp = ((distance - dead + 0.5) / (overlap - 2 * dead)).clamp(0, 1)
    if ramp_start:
        weight = weight * ramp
    if ramp_end:
        weight = weight * ramp.flip(0)
    return weight


def tiling_caveats(net):
    """Why tiling ``net`` is not exact (a list of short reasons; empty when only its reach is limited)."""
    reasons = []
    names = sorted({type(m).__name__ for m in net.modules() if getattr(m, 'image_wide_statistics', False)})
    if names:
        reasons.append(f"its norms ({', '.join(names)}) use whole-image statistics, which each tile computes "
                       'from itself')
    if any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) for m in net.modules()):
        reasons.append('its channel attention pools over the whole feature map, which each tile pools over itself')
    return reasons


def check_tiling(tile, overlap, window_size):
    """One clear error for a tile size the network would pad, or an overlap that leaves no stride."""
    if tile <= 0 or tile % window_size:
        raise ConfigError(f'tile must be a positive multiple of the window size {window_size}, got {tile}')
    if not 0 <= overlap < tile:
        raise ConfigError(f'tile overlap must be in [0, tile) = [0, {tile}), got {overlap}')


def tiled_forward(forward, x, tile, overlap, scale, progress=False, pad=None):
    """``forward(x)`` computed crop by crop (see the module docstring); same output size as untiled.

    ``pad`` is the padding the network itself applies to a whole input (``pad_to_window``): it is
    applied to the whole image first, so the crops at the right and bottom edges see the same padded
    content as the untiled forward instead of a bare edge, and the output is cropped back."""
    _, _, h, w = x.shape
    if pad is not None:
        x = pad(x)
    out = _blend_tiles(forward, x, tile, overlap, scale, progress)
    return out[..., :h * scale, :w * scale]


def _blend_tiles(forward, x, tile, overlap, scale, progress):
    _, _, h, w = x.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    out = weights = None
    for y0, x0 in tqdm([(y, x) for y in ys for x in xs], desc='tiles', unit='tile', leave=False,
                       disable=not progress or len(ys) * len(xs) == 1):
        crop = forward(x[..., y0:y0 + th, x0:x0 + tw]).float()
        if out is None:
            out = crop.new_zeros(*crop.shape[:2], h * scale, w * scale)
            weights = crop.new_zeros(1, 1, h * scale, w * scale)
        wy = edge_ramp(th * scale, overlap * scale, y0 > 0, y0 + th < h).to(crop.device)
        wx = edge_ramp(tw * scale, overlap * scale, x0 > 0, x0 + tw < w).to(crop.device)
        weight = wy[:, None] * wx[None, :]
        region = (..., slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale))
        out[region] += crop * weight
        weights[region] += weight
    return out / weights


def restore(net, x, tile=None, tile_overlap=32, ensemble=False, progress=False, max_chunk_tokens=DEFAULT_CHUNK_TOKENS):
    """The network's float32 output for ``x`` without gradients, optionally self-ensembled and/or tiled
    (``tile`` in input pixels; None: whole image). Low precision is the network's own: wrap it in
    ``analysis.precision.PrecisionNetwork`` (a cast copy, as the test CLI evaluates it).

    The whole image is computed exactly in bounded memory: attention and MLPs run ``max_chunk_tokens``
    tokens at a time (``basicsr_iln/archs/chunking.py`` states the bound; 0 or None: in one piece), so tiling
    is only needed when a few copies of the residual stream do not fit. The scale and window size
    come from the network's ``upscale`` / ``window_size`` (1 if absent).
    """
    scale = getattr(net, 'upscale', 1)
    forward = (lambda v: self_ensemble(net, v)) if ensemble else net
    if tile:
        check_tiling(tile, tile_overlap, getattr(net, 'window_size', 1))
    with torch.no_grad(), chunked_inference(max_chunk_tokens or None):
        if tile:
            return tiled_forward(forward, x, tile, tile_overlap, scale, progress, getattr(net, 'pad_to_window', None))
        return forward(x).float()
