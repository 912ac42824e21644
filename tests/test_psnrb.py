"""PSNR-B: hand-computed blocking effect factor, agreement with PSNR without blocking, monotonicity."""
import math

import basicsr_iln  # noqa: F401  (before basicsr)
import numpy as np
import pytest
import skimage.data
from basicsr.metrics import calculate_metric, calculate_psnr
from basicsr.utils.registry import METRIC_REGISTRY

from basicsr_iln.metrics.psnrb_metric import blocking_effect_factor, calculate_psnrb


def test_hand_computed_16x16():
    # Four flat 8x8 blocks (100 120 / 140 160) plus a +10 stripe on columns 3 and 11.
    img = np.kron(np.array([[100., 120.], [140., 160.]]), np.ones((8, 8)))
    img[:, [3, 11]] += 10
    ref = img + 5  # MSE = 25 (0-255 units)
    # Boundary pairs: column pair 7|8 differs by 20 on 16 rows, row pair 7|8 by 40 on 16 columns.
    # KAIR counts 16*(16//8-1) + 16*(16//8-1) = 32 boundary pairs -> D_B = (16*400 + 16*1600) / 32 = 1000.
    # Inner pairs: 2|3, 3|4, 10|11, 11|12 differ by 10 on 16 rows -> 6400 over 16*15*2 - 32 = 448 pairs.
    d_b, d_n = 1000., 6400. / 448.
    bef = math.log2(8) / math.log2(16) * (d_b - d_n)  # = 0.75 * 985.714... = 739.2857
    expected = 10 * math.log10(255.**2 / (25. + bef))
    assert expected == pytest.approx(19.2982, abs=1e-4)
    assert calculate_psnrb(img, ref, crop_border=0) == pytest.approx(expected, abs=1e-9)
    # BEF is measured on the first (restored) image only: a flat first image has none -> plain PSNR.
    flat = np.full_like(img, 130.)
    assert calculate_psnrb(flat, img, crop_border=0) == pytest.approx(calculate_psnr(flat, img, 0), abs=1e-9)


def test_hand_computed_width_not_multiple_of_8_uses_kair_normalisation():
    img = np.full((16, 20), 120.)
    img[:, :8] = 100.  # one step of 20 at column pair 7|8; column pair 15|16 is flat
    # KAIR divides by 16*(20//8-1) + 20*(16//8-1) = 36 pairs (not by the 2*16 + 20 pairs it sums).
    bef = 0.75 * (16 * 20.**2) / 36
    expected = 10 * math.log10(255.**2 / bef)
    assert calculate_psnrb(img, img.copy(), crop_border=0) == pytest.approx(expected, abs=1e-9)


def _block_free_pair():
    """Colour image whose 8x8 boundaries are smooth (period-8 ramps with equal ends) and a noisy reference."""
    ramp = np.array([0, 6, 12, 18, 12, 6, 3, 0], float)
    y, x = np.mgrid[0:48, 0:56]
    img = np.stack([60 + ramp[x % 8] * (c + 1) + ramp[y % 8] for c in range(3)], axis=2)
    ref = img + np.random.default_rng(0).integers(-3, 4, img.shape)
    return img, ref


def test_equals_psnr_when_there_is_no_blocking():
    img, ref = _block_free_pair()
    y_psnr = calculate_psnr(img, ref, crop_border=0, test_y_channel=True)
    assert calculate_psnrb(img, ref, crop_border=0, test_y_channel=True) == pytest.approx(y_psnr, abs=1e-9)
    # colour: KAIR averages per-channel dB, which is not PSNR of the pooled MSE
    per_channel = np.mean([calculate_psnr(img[..., c], ref[..., c], crop_border=0) for c in range(3)])
    assert calculate_psnrb(img, ref, crop_border=0) == pytest.approx(per_channel, abs=1e-9)
    assert per_channel != pytest.approx(calculate_psnr(img, ref, crop_border=0), abs=1e-5)


def test_decreases_as_block_offsets_grow():
    gt = skimage.data.camera()[128:384, 128:384].astype(np.float64)
    rng = np.random.default_rng(1)
    base = gt + rng.normal(0, 3, gt.shape)
    signs = np.kron(rng.choice([-1., 1.], size=(32, 32)), np.ones((8, 8)))
    psnrb, bef = [], []
    for amplitude in (0, 2, 4, 8, 16):
        restored = np.clip(base + amplitude * signs, 0, 255)
        psnrb.append(calculate_psnrb(restored, gt, crop_border=0))
        assert psnrb[-1] < calculate_psnr(restored, gt, crop_border=0)
        bef.append(blocking_effect_factor(restored / 255.))
    assert all(a > b for a, b in zip(psnrb, psnrb[1:])), psnrb
    assert all(a < b for a, b in zip(bef, bef[1:])), bef


def test_conventions_and_registry():
    img, ref = _block_free_pair()
    img[8:16, 8:16] += 30  # some blocking so BEF > 0
    hwc = calculate_psnrb(img, ref, crop_border=0)
    assert calculate_psnrb(img.transpose(2, 0, 1), ref.transpose(2, 0, 1), 0, input_order='CHW') == hwc
    per_channel = [calculate_psnrb(img[..., c], ref[..., c], 0) for c in range(3)]
    assert hwc == pytest.approx(np.mean(per_channel))  # mean of per-channel dB, as KAIR
    assert calculate_psnrb(img.astype(np.uint8), img.astype(np.uint8), 0) == float('inf')
    cropped = calculate_psnrb(img, ref, crop_border=4)
    assert cropped == pytest.approx(calculate_psnrb(img[4:-4, 4:-4], ref[4:-4, 4:-4], 0))
    assert METRIC_REGISTRY.get('calculate_psnrb') is calculate_psnrb
    assert calculate_metric({'img': img, 'img2': ref}, {'type': 'calculate_psnrb', 'crop_border': 0}) == hwc
    with pytest.raises(ValueError, match='shapes'):
        calculate_psnrb(img, ref[:-1], 0)
    with pytest.raises(ValueError, match='16x16'):
        calculate_psnrb(img[:12], ref[:12], 0)
