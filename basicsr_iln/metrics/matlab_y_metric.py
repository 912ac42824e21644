"""PSNR and SSIM on the Y channel as the deraining papers compute them.

MPRNet and Restormer report deraining scores from ``Deraining/evaluate_PSNR_SSIM.m`` (swz30/MPRNet,
swz30/Restormer@df766d5): each saved uint8 RGB result and its uint8 target go through MATLAB's
``rgb2ycbcr``, whose output for a uint8 image is uint8 (mathworks.com/help/images/ref/rgb2ycbcr.html):
Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, **rounded to an integer** (MATLAB converts to integer
classes by rounding to nearest, ties away from zero). PSNR is 20 log10(255 / RMSE) over the whole image
(no border crop); SSIM is Wang et al.'s ``SSIM_index`` (11x11 Gaussian window of sigma 1.5, K = 0.01 / 0.03,
L = 255, 'valid' filtering, mean of the map, no downsampling) on the same integer Y.

BasicSR's ``calculate_psnr`` / ``calculate_ssim`` with ``test_y_channel: true`` and ``crop_border: 0``
compute the same formulas with the same window, but on an unrounded float Y; that rounding alone moves
the scores (two uniform gray images 100 and 110: 30.07 dB here, 29.45 dB there). These metrics round as
MATLAB does and then call BasicSR's functions on the integer Y, so nothing else differs. Gray images are
used as they are, as the MATLAB script does (it converts only 3-channel images).
"""
import numpy as np

from basicsr.metrics.metric_util import reorder_image
from basicsr.metrics.psnr_ssim import calculate_psnr, calculate_ssim
from basicsr.utils.registry import METRIC_REGISTRY

# MATLAB's rgb2ycbcr Y row for RGB in [0, 1] and Y in [16, 235] (ITU-R BT.601), by channel.
Y_WEIGHTS = {'R': 65.481, 'G': 128.553, 'B': 24.966}
Y_OFFSET = 16.


def matlab_y(img, input_order='HWC'):
    """Y (float64 holding integers) of a uint8 BGR image (or the gray image itself), as MATLAB's
    ``rgb2ycbcr`` returns it for uint8 RGB input. Float images are refused: the MATLAB script reads the
    saved uint8 PNGs, and IRModel passes uint8 images too."""
    if img.dtype != np.uint8:
        raise ValueError(f'the MATLAB-Y metrics need uint8 images (as saved PNGs), got {img.dtype}')
    img = reorder_image(img, input_order).astype(np.float64)
    if img.shape[2] == 1:
        return img[..., 0]
    if img.shape[2] != 3:
        raise ValueError(f'the MATLAB-Y metrics need 1- or 3-channel images, got {img.shape[2]} channels')
    blue, green, red = img[..., 0], img[..., 1], img[..., 2]
    # Weights scaled for uint8 input (/255) before the sum, as rgb2ycbcr scales its matrix; the order of the
    # float operations can only matter for a Y within a rounding error of an exact .5 tie.
    y = red * (Y_WEIGHTS['R'] / 255) + green * (Y_WEIGHTS['G'] / 255) + blue * (Y_WEIGHTS['B'] / 255) + Y_OFFSET
    return np.floor(y + 0.5)  # Y >= 16 > 0: floor(y + 0.5) rounds ties away from zero


@METRIC_REGISTRY.register()
def calculate_psnr_matlab_y(img, img2, crop_border, input_order='HWC', **kwargs):
    """PSNR (dB) on MATLAB's integer Y of two uint8 BGR images; ``kwargs``: the other metric options
    BasicSR's calculate_metric passes on (e.g. ``better``)."""
    return calculate_psnr(matlab_y(img, input_order), matlab_y(img2, input_order), crop_border)


@METRIC_REGISTRY.register()
def calculate_ssim_matlab_y(img, img2, crop_border, input_order='HWC', **kwargs):
    """SSIM on MATLAB's integer Y of two uint8 BGR images (BasicSR's SSIM, which equals Wang's SSIM_index)."""
    return calculate_ssim(matlab_y(img, input_order), matlab_y(img2, input_order), crop_border)
