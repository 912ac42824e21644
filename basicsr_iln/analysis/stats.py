"""Statistics of token features (B, L, C) and of norm layers' affine parameters.

Definitions (all computed in float64, so fp16/bf16 features and magnitudes of 1e6+ are exact enough):

* **magnitude**: mean of x^2 over every element of the probe batch (the paper's feature magnitude).
* **max_abs**: max |x| over the batch.
* **channel entropy**: for each image b, m[b, c] = mean over tokens of |x[b, :, c]|, normalised to a
  distribution p[b, c] = m[b, c] / sum_c m[b, c]; H[b] = -sum_c p log p in **nats** (natural log,
  0 log 0 = 0). Reported as the mean of H[b] over images (``entropy``), and divided by log C
  (``entropy_norm``: 1.0 = all channels equally large, 0 = one channel carries everything).
  Undefined (NaN) for an image whose features are all zero.
* **bias/magnitude correlation**: Pearson correlation, over channels, of a norm's |bias| with the
  per-channel mean |x| of that norm's input (the paper's Fig. 8: LN biases align with the channels
  that carry the huge values). None when either side is constant (e.g. zero-initialised biases).
"""
import math

import torch


def channel_magnitudes(x):
    """(B, C) mean |x| over the tokens of each image of (B, L, C) features."""
    return x.detach().double().abs().mean(dim=1)


def channel_entropy(x):
    """(mean entropy in nats, mean entropy / log C) of the per-channel magnitude distribution."""
    m = channel_magnitudes(x)
    p = m / m.sum(dim=-1, keepdim=True)
    entropy = float(-torch.xlogy(p, p).sum(dim=-1).mean())
    return entropy, entropy / math.log(x.shape[-1])


def feature_stats(x):
    """Magnitude, max |x| and channel entropy of (B, L, C) token features, as a JSON-ready dict."""
    xd = x.detach().double()
    entropy, entropy_norm = channel_entropy(x)
    return {
        'channels': x.shape[-1],
        'magnitude': float(xd.square().mean()),
        'max_abs': float(xd.abs().max()),
        'entropy': entropy,
        'entropy_norm': entropy_norm,
    }


def correlation(a, b):
    """Pearson correlation of two 1-D tensors, or None when either is constant."""
    a, b = a.double(), b.double()
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else None


def affine_stats(weight, bias, input_channel_magnitude):
    """Mean/std of a norm's weight (gamma) and bias (beta), and corr(|bias|, input channel magnitude).

    ``weight`` or ``bias`` may be None (RMSNorm has no bias); ``input_channel_magnitude`` is the (C,)
    mean |x| of the norm's input per channel.
    """
    stats = {}
    for key, param in (('weight', weight), ('bias', bias)):
        if param is not None:
            p = param.detach().double()
            stats[f'{key}_mean'] = float(p.mean())
            stats[f'{key}_std'] = float(p.std(unbiased=False))
    if bias is not None:
        stats['bias_abs_mean'] = float(bias.detach().double().abs().mean())
        stats['bias_magnitude_corr'] = correlation(bias.detach().abs(), input_channel_magnitude)
    return stats
