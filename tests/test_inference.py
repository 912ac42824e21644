"""Self-ensemble, tiled inference and the inference CLI (basicsr_iln/utils/inference.py, basicsr_iln/infer.py)."""
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from basicsr_iln import infer
from basicsr_iln.archs.swinir_arch import SwinIR_iLN
from basicsr_iln.utils.errors import ConfigError
from basicsr_iln.utils.inference import restore
from helpers import REPO, real_photos

TINY_SWINIR = dict(img_size=16, window_size=4, depths=[2], embed_dim=12, num_heads=[2], mlp_ratio=2)


class LocalNet(nn.Sequential):
    """x2 SR by convolutions only: receptive radius 2.5 input pixels (exact tiling needs overlap >= 10)."""
    upscale, window_size = 2, 8

    def __init__(self):
        torch.manual_seed(0)
        super().__init__(nn.Conv2d(3, 8, 3, 1, 1), nn.GELU(), nn.Conv2d(8, 12, 3, 1, 1), nn.PixelShuffle(2),
                         nn.Conv2d(3, 3, 3, 1, 1))


class PointwiseNet(nn.Sequential):
    """Nearest x2 upsampling and 1x1 convolutions: equivariant to flips and rotations by construction."""
    upscale = 2

    def __init__(self):
        torch.manual_seed(0)
        super().__init__(nn.Upsample(scale_factor=2, mode='nearest'), nn.Conv2d(3, 8, 1), nn.GELU(), nn.Conv2d(8, 3, 1))


def photo_tensor(h, w):
    img = real_photos()[0][:h, :w, ::-1].astype(np.float32) / 255.
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None]


def psnr(a, b):
    return float(10 * torch.log10(1 / ((a.clamp(0, 1) - b.clamp(0, 1))**2).mean()))


def test_self_ensemble_equals_plain_output_for_an_equivariant_network():
    net, x = PointwiseNet().eval(), photo_tensor(37, 52)  # non-square: rotations change the shape
    plain, ensembled = restore(net, x), restore(net, x, ensemble=True)
    assert ensembled.shape == plain.shape == (1, 3, 74, 104)
    torch.testing.assert_close(ensembled, plain, atol=1e-6, rtol=1e-5)


def test_self_ensemble_differs_for_a_network_that_is_not_equivariant():
    net, x = LocalNet().eval(), photo_tensor(37, 52)
    plain, ensembled = restore(net, x), restore(net, x, ensemble=True)
    assert ensembled.shape == plain.shape
    assert (ensembled - plain).abs().max() > 1e-2


@pytest.mark.parametrize('tile, overlap', [(32, 16), (16, 12), (24, 12)])
def test_tiling_is_exact_when_the_receptive_field_fits_in_the_overlap(tile, overlap):
    net, x = LocalNet().eval(), photo_tensor(70, 53)
    untiled, tiled = restore(net, x), restore(net, x, tile=tile, tile_overlap=overlap)
    assert tiled.shape == untiled.shape == (1, 3, 140, 106)
    torch.testing.assert_close(tiled, untiled, atol=1e-5, rtol=1e-5)


def test_tiling_without_overlap_shows_seams():
    net, x = LocalNet().eval(), photo_tensor(70, 53)
    assert (restore(net, x, tile=16, tile_overlap=0) - restore(net, x)).abs().max() > 1e-3


@pytest.mark.parametrize('norm_type', ['iln', 'ln'])
def test_tiled_swinir_is_close_to_untiled(norm_type):
    torch.manual_seed(0)
    net = SwinIR_iLN(**TINY_SWINIR, upscale=2, upsampler='pixelshuffle', norm_type=norm_type).eval()
    x = photo_tensor(45, 58)
    untiled, tiled = restore(net, x), restore(net, x, tile=24, tile_overlap=12)
    assert tiled.shape == untiled.shape == (1, 3, 90, 116)
    # Attention reaches past the overlap and i-LN's statistics are per crop: close, not equal. The
    # largest differences sit at the bottom/right border, where the untiled pass reflect-pads to 4.
    assert psnr(tiled, untiled) > 35
    assert (tiled - untiled).abs().max() > 1e-4


@pytest.mark.parametrize('tile, overlap, message', [(30, 8, 'multiple of the window size 4'),
                                                    (16, 16, 'overlap must be in [0, tile)')])
def test_bad_tiling_is_refused(tile, overlap, message):
    net = SwinIR_iLN(**TINY_SWINIR, upscale=1, upsampler='').eval()
    with pytest.raises(ConfigError, match=re.escape(message)):
        restore(net, photo_tensor(32, 32), tile=tile, tile_overlap=overlap)


@pytest.fixture(scope='module')
def dn_checkpoint(tmp_path_factory):
    """A tiny colour denoising SwinIR (random weights) saved in BasicSR's layout."""
    torch.manual_seed(0)
    net = SwinIR_iLN(**TINY_SWINIR, upscale=1, upsampler='', norm_type='iln')
    path = tmp_path_factory.mktemp('ckpt') / 'dn.pth'
    torch.save({'params': net.state_dict()}, path)
    return path


def network_args(ckpt):
    return ['--arch', 'SwinIR_iLN', '--arch-opt', '{upscale: 1, upsampler: "", img_size: 16, window_size: 4, '
            'depths: [2], embed_dim: 12, num_heads: [2], mlp_ratio: 2}', '-c', str(ckpt)]


@pytest.mark.slow
def test_cli_restores_a_real_photo_tiled_like_untiled(dn_checkpoint, tmp_path):
    photo = real_photos()[1][:90, :120]
    cv2.imwrite(str(tmp_path / 'photo.png'), photo)
    cmd = [sys.executable, str(REPO / 'basicsr_iln' / 'infer.py'), *network_args(dn_checkpoint), '-i',
           str(tmp_path / 'photo.png'), '-o', str(tmp_path / 'tiled'), '--sigma', '25', '--tile', '32',
           '--tile-overlap', '16', '--device', 'cpu']
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    infer.main([*network_args(dn_checkpoint), '-i', str(tmp_path), '-o', str(tmp_path / 'whole'), '--sigma', '25'])

    tiled, whole = (cv2.imread(str(tmp_path / d / 'photo.png')) for d in ('tiled', 'whole'))
    noisy = cv2.imread(str(tmp_path / 'tiled' / 'photo_input.png'))
    assert tiled.shape == whole.shape == noisy.shape == photo.shape
    assert cv2.PSNR(tiled, whole) > 35
    assert cv2.PSNR(noisy, photo) < 25  # the demo degradation was applied (sigma 25: about 20 dB)


def run_infer_error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        infer.main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith('error: ') and '\n' not in err, err
    return err


def test_cli_errors_are_one_line(dn_checkpoint, tmp_path, capsys):
    rgb = real_photos()[0][:32, :32]
    cv2.imwrite(str(tmp_path / 'gray.png'), cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / 'rgba.png'), cv2.cvtColor(rgb, cv2.COLOR_BGR2BGRA))
    (tmp_path / 'notes.png').write_text('not an image')
    (tmp_path / 'empty').mkdir()
    net = network_args(dn_checkpoint)
    cases = {
        'input not found': [*net, '-i', str(tmp_path / 'missing.png')],
        "cannot read '": [*net, '-i', str(tmp_path / 'notes.png')],
        'has 1 channel(s) (gray) but the network takes 3': [*net, '-i', str(tmp_path / 'gray.png')],
        'has 4 channel(s) (RGBA (with alpha))': [*net, '-i', str(tmp_path / 'rgba.png')],
        'contains no images': [*net, '-i', str(tmp_path / 'empty')],
        'checkpoint not found': [*net[:-1], str(tmp_path / 'none.pth'), '-i', str(tmp_path / 'gray.png')],
        'multiple of the window size 4': [*net, '-i', str(tmp_path / 'rgba.png'), '--tile', '30'],
        'either with --opt': ['-c', str(dn_checkpoint), '-i', str(tmp_path / 'gray.png')],
    }
    for message, argv in cases.items():
        assert message in run_infer_error(capsys, argv + ['-o', str(tmp_path / 'out')])
