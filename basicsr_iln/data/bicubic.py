"""MATLAB-compatible bicubic downsampling: how the standard SR benchmark LR images are made. Shared by
the data preparation scripts and ``--smoke``, which makes the LR partners of its small crops."""
import numpy as np
from basicsr.utils.matlab_functions import imresize


def bicubic_downsample(img, scale):
    """MATLAB ``imresize(img, 1/scale, 'bicubic')`` of a uint8 image, rounded back to uint8 as
    MATLAB does (half away from zero) — how the standard benchmark LR images were made."""
    h, w = img.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f'image size {h}x{w} is not a multiple of scale {scale}; mod-crop it first')
    # imresize is linear, so feed 0-255 values: exact ties (common at x2) then stay exact .5.
    lr = imresize(img.astype(np.float32), 1 / scale)
    if lr.shape[:2] != (h // scale, w // scale):
        raise RuntimeError(f'imresize gave {lr.shape[:2]} for {h}x{w} at x{scale}')
    return np.floor(np.clip(lr, 0, 255) + 0.5).astype(np.uint8)
