"""PSNR-B (Yim & Bovik, "Quality assessment of deblocked images", TIP 2011) for JPEG CAR evaluation.

Matches the SwinIR/KAIR evaluation code (``calculate_psnrb`` in SwinIR's
``utils/util_calculate_psnr_ssim.py``), which is what published CAR tables report:

* values are scaled to [0, 1] before the MSE and the blocking effect factor (BEF);
* the BEF is measured on the first image only (the restored one: BasicSR calls metrics as
  ``metric(img=output, img2=gt)``, SwinIR as ``calculate_psnrb(output, img_gt)``);
* block size 8, boundaries between columns/rows 7|8, 15|16, ...; the boundary and non-boundary
  pixel-pair counts use KAIR's closed form ``H * (W // 8 - 1)``, which is exact only when the size is
  a multiple of 8 (for other sizes it differs from the number of pairs summed; kept for comparability);
* multi-channel images: PSNR-B per channel (own MSE, own BEF), then the mean of the dB values.
"""
import numpy as np

from basicsr.metrics.metric_util import reorder_image, to_y_channel
from basicsr.utils.registry import METRIC_REGISTRY

BLOCK = 8


def blocking_effect_factor(img):
    """BEF of one channel (H, W) with values in [0, 1]; 0 when boundaries are not rougher than the rest."""
    h, w = img.shape
    col_diff = (img[:, :-1] - img[:, 1:])**2  # pair (j, j + 1) in column j
    row_diff = (img[:-1, :] - img[1:, :])**2
    col_boundary = np.zeros(w - 1, dtype=bool)
    col_boundary[BLOCK - 1::BLOCK] = True
    row_boundary = np.zeros(h - 1, dtype=bool)
    row_boundary[BLOCK - 1::BLOCK] = True

    n_boundary = h * (w // BLOCK - 1) + w * (h // BLOCK - 1)
    n_inner = h * (w - 1) + w * (h - 1) - n_boundary
    boundary = (col_diff[:, col_boundary].sum() + row_diff[row_boundary, :].sum()) / n_boundary
    inner = (col_diff[:, ~col_boundary].sum() + row_diff[~row_boundary, :].sum()) / n_inner
    if boundary <= inner:
        return 0.
    return np.log2(BLOCK) / np.log2(min(h, w)) * (boundary - inner)


@METRIC_REGISTRY.register()
def calculate_psnrb(img, img2, crop_border, input_order='HWC', test_y_channel=False, **kwargs):
    """PSNR-B in dB. `img` is the restored image (its blocking is penalised), `img2` the reference.

    Args follow basicsr.metrics.calculate_psnr: images in [0, 255] (uint8 or float), HWC or CHW,
    `crop_border` pixels dropped on each side, `test_y_channel` to evaluate the Y of YCbCr.
    """
    if img.shape != img2.shape:
        raise ValueError(f'Image shapes are different: {img.shape}, {img2.shape}.')
    img = reorder_image(img, input_order=input_order)
    img2 = reorder_image(img2, input_order=input_order)
    if crop_border != 0:
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border, ...]
    if min(img.shape[:2]) < 2 * BLOCK:
        raise ValueError(f'PSNR-B needs at least {2 * BLOCK}x{2 * BLOCK} pixels after cropping, got {img.shape[:2]}')
    if test_y_channel:
        img = to_y_channel(img)
        img2 = to_y_channel(img2)
    img = img.astype(np.float64) / 255.
    img2 = img2.astype(np.float64) / 255.

    values = []
    for c in range(img.shape[2]):
        mse_b = np.mean((img[..., c] - img2[..., c])**2) + blocking_effect_factor(img[..., c])
        values.append(float('inf') if mse_b == 0 else 10. * np.log10(1. / mse_b))
    return float(np.mean(values))
