"""Full-image inference in bounded memory: attention and MLPs run in chunks, whole-image reductions stay whole.

Without gradients the residual stream of one image is small; the memory peak of a forward pass comes
from computing every window's attention (``windows x heads x N x N`` scores) and every token's MLP
hidden layer at once. Inside ``chunked_inference(max_tokens)`` the Transformer blocks compute those
for at most ``max_tokens`` query tokens at a time and write the results into one output tensor. Every
token's result is computed by the same operations on the same inputs as in one piece, and the
whole-image reductions (i-LN's statistics, HAT's channel-attention pooling, the convolutions) still
see the whole feature map, so the output equals the unchunked forward up to float rounding, for every
norm type.

Memory bound, per image, with ``R`` the size of the residual stream (``H x W x embed_dim`` values):
a few copies of ``R`` (block input, normalised input, shifted/partitioned windows, branch output),
HAT's OCAB key/value windows (``2 x ((ws + overlap) / ws)^2 x R``: 4.5 R at overlap 0.5), the
shift mask (``ws^2`` values per token: one N x N mask per window), the reconstruction head's feature
maps (64 channels at the output size), plus the chunk: for
``max_tokens`` query tokens, their q/k/v, attention scores (``heads x N_keys`` per token) and MLP
hidden units. With gradients enabled (training) chunking is off: autograd would keep every chunk.
"""
import threading
from contextlib import contextmanager

import torch

from .norms import recording_graph

DEFAULT_CHUNK_TOKENS = 16384  # query tokens per chunk: 256 windows of 8x8 or 64 of 16x16

_state = threading.local()


@contextmanager
def chunked_inference(max_tokens=DEFAULT_CHUNK_TOKENS):
    """Within this context, forward passes without gradients attend and run MLPs ``max_tokens`` tokens at a
    time (``None``: in one piece)."""
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f'max_tokens must be a positive integer or None, got {max_tokens!r}')
    previous = getattr(_state, 'max_tokens', None)
    _state.max_tokens = max_tokens
    try:
        yield
    finally:
        _state.max_tokens = previous


def chunk_budget():
    """Query tokens per chunk for the current forward, or None (no chunking: gradients on, a graph being
    recorded for export, whose loops would be frozen to the recorded size, or not asked)."""
    if torch.is_grad_enabled() or recording_graph():
        return None
    return getattr(_state, 'max_tokens', None)


def window_chunks(num_images, num_windows, per_chunk):
    """(start, stop, mask_start, mask_stop) covering the ``num_images * num_windows`` windows in order. A chunk
    holds whole images or part of one, so its shift-mask rows are one slice of the (num_windows, N, N) mask."""
    total = num_images * num_windows
    if per_chunk >= num_windows:
        step = per_chunk // num_windows * num_windows
        for start in range(0, total, step):
            yield start, min(start + step, total), 0, num_windows
        return
    for image in range(num_images):
        for window in range(0, num_windows, per_chunk):
            stop = min(window + per_chunk, num_windows)
            yield image * num_windows + window, image * num_windows + stop, window, stop


def attend_in_chunks(attend, queries, mask, num_windows, tokens_per_window, *keys_values):
    """``attend(queries, *keys_values, mask)`` over chunks of windows; one piece without a chunk budget.

    ``queries`` and every ``keys_values`` tensor have windows on dim 0 (images x ``num_windows``, in
    window_partition order); ``mask`` is (num_windows, Nq, Nk) or None; ``attend`` returns windows on dim 0.
    """
    budget = chunk_budget()
    if budget is None or queries.shape[0] * tokens_per_window <= budget:
        return attend(queries, *keys_values, mask)
    per_chunk = max(1, budget // tokens_per_window)
    return _assemble(queries.shape[0], (
        (start, stop, attend(queries[start:stop], *(t[start:stop] for t in keys_values),
                             None if mask is None else mask[mask_start:mask_stop]))
        for start, stop, mask_start, mask_stop in window_chunks(queries.shape[0] // num_windows, num_windows,
                                                                per_chunk)))


def tokenwise_in_chunks(fn, x):
    """``fn(x)`` for a per-token ``fn`` on (B, L, C) tokens, at most the chunk budget of tokens at a time."""
    budget = chunk_budget()
    b, length = x.shape[:2]
    if budget is None or b * length <= budget:
        return fn(x)
    flat = x.reshape(b * length, *x.shape[2:])
    out = _assemble(flat.shape[0], ((start, start + budget, fn(flat[start:start + budget]))
                                    for start in range(0, flat.shape[0], budget)))
    return out.view(b, length, *out.shape[1:])


def _assemble(total, parts):
    """One tensor of ``total`` rows from ``(start, stop, rows)`` parts, allocated like the first part, so
    the parts' results need not be kept and concatenated (which would hold everything twice)."""
    out = None
    for start, stop, part in parts:
        if out is None:
            out = part.new_empty((total, *part.shape[1:]))
        out[start:stop] = part
    return out


def memory_bound_bytes(net, height, width, max_tokens=DEFAULT_CHUNK_TOKENS, batch=1):
    """The bound of the module docstring, in bytes of float32, for ``batch`` inputs of ``height x width``
    (padded to the window multiple): what a chunked forward may allocate beyond the network's weights."""
    ws = getattr(net, 'window_size', 1)
    tokens = batch * (-(-height // ws) * ws) * (-(-width // ws) * ws)
    blocks = [m for m in net.modules() if hasattr(m, 'mlp') and hasattr(m, 'num_heads')]  # blocks and OCABs
    widest = max(m.dim for m in blocks)
    residual = tokens * widest
    per_query = max(3 * m.dim + 2 * m.num_heads * getattr(m, 'overlap_win_size', m.window_size)**2 +
                    m.mlp.fc1.out_features for m in blocks)
    ocab = 7.5 * residual if any(hasattr(m, 'overlap_win_size') for m in blocks) else 0  # qkv 3 R + key/value windows 4.5 R
    scale = getattr(net, 'upscale', 1)
    head = tokens * (64 + 4 * 64 + 2 * 64 * scale * scale) if scale > 1 else 0
    mask = tokens * ws * ws
    chunk = min(max_tokens or tokens, tokens) * per_query
    return 4 * (8 * residual + ocab + mask + head + chunk)
