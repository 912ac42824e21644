"""Self-ensemble, tiled inference and the inference CLI (basicsr_iln/utils/inference.py, basicsr_iln/infer.py)."""
import re

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from basicsr_iln import infer
from basicsr_iln.archs.swinir_arch import SwinIR_iLN
from basicsr_iln.archs.transformer_core import RestorationTransformer
from basicsr_iln.utils.errors import ConfigError
from basicsr_iln.utils.inference import restore
from helpers import REPO, main_error_line, real_photos, run_python

TINY_SWINIR = dict(img_size=16, window_size=4, depths=[2], embed_dim=12, num_heads=[2], mlp_ratio=2)


class LocalNet(nn.Sequential):
    """x2 SR by convolutions only: receptive radius 2.5 input pixels (exact tiling needs overlap >= 10)."""
    upscale, window_size = 2, 8

    def __init__(self):
        torch.manual_seed(0)
        super().__init__(nn.Conv2d(3, 8, 3, 1, 1), nn.GELU(), nn.Conv2d(8, 12, 3, 1, 1), nn.PixelShuffle(2),
                         nn.Conv2d(3, 3, 3, 1, 1))


class PaddingLocalNet(LocalNet):
    """LocalNet that pads its input to the window multiple and crops back, as the Transformers do."""
    pad_to_window = RestorationTransformer.pad_to_window

    def forward(self, x):
        h, w = x.shape[-2:]
        return super().forward(self.pad_to_window(x))[..., :h * self.upscale, :w * self.upscale]


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


@pytest.mark.parametrize('size', [(70, 53), (45, 61), (33, 41)])
def test_tiling_is_exact_at_sizes_the_network_pads(size):
    """The edge crops see the network's own padding of the whole image, not a bare edge (Set14 comic at x2
    differed by up to 71/255 in its last 8 columns when the crops were taken from the unpadded image)."""
    net, x = PaddingLocalNet().eval(), photo_tensor(*size)
    untiled, tiled = restore(net, x), restore(net, x, tile=16, tile_overlap=12)
    assert tiled.shape == untiled.shape == (1, 3, 2 * size[0], 2 * size[1])
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
    # Attention reaches past the overlap and i-LN's statistics are per crop: close, not equal; the
    # padded bottom/right border is no worse than the interior.
    assert psnr(tiled, untiled) > 35
    difference = (tiled - untiled).abs()
    assert difference.max() > 1e-4
    assert difference[..., -16:, :].max() <= 2 * difference[..., :-16, :-16].max()
    assert difference[..., :, -16:].max() <= 2 * difference[..., :-16, :-16].max()


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
    cmd = [REPO / 'basicsr_iln' / 'infer.py', *network_args(dn_checkpoint), '-i',
           str(tmp_path / 'photo.png'), '-o', str(tmp_path / 'tiled'), '--sigma', '25', '--tile', '32',
           '--tile-overlap', '16', '--device', 'cpu']
    result = run_python(cmd, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    infer.main([*network_args(dn_checkpoint), '-i', str(tmp_path), '-o', str(tmp_path / 'whole'), '--sigma', '25'])

    tiled, whole = (cv2.imread(str(tmp_path / d / 'photo.png')) for d in ('tiled', 'whole'))
    noisy = cv2.imread(str(tmp_path / 'tiled' / 'photo_input.png'))
    assert tiled.shape == whole.shape == noisy.shape == photo.shape
    assert cv2.PSNR(tiled, whole) > 35
    assert cv2.PSNR(noisy, photo) < 25  # the demo degradation was applied (sigma 25: about 20 dB)


def test_cli_restores_what_it_can_of_a_folder_and_names_the_rest(dn_checkpoint, tmp_path, capsys):
    """A gray file (Set14's bridge) is fed as 3 equal channels; an unreadable file and an RGBA file fail
    alone; other files are listed; the exit is non-zero because some files failed."""
    folder, rgb = tmp_path / 'in', real_photos()[0][:32, :40]
    folder.mkdir()
    cv2.imwrite(str(folder / 'colour.png'), rgb)
    cv2.imwrite(str(folder / 'gray.png'), cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(folder / 'rgba.png'), cv2.cvtColor(rgb, cv2.COLOR_BGR2BGRA))
    (folder / 'notes.png').write_text('not an image')
    (folder / 'readme.txt').write_text('about these photos')
    with pytest.raises(SystemExit) as exc:
        infer.main([*network_args(dn_checkpoint), '-i', str(folder), '-o', str(tmp_path / 'out')])
    out, err = capsys.readouterr()
    assert exc.value.code == 2
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['colour.png', 'gray.png']
    assert cv2.imread(str(tmp_path / 'out' / 'gray.png'), cv2.IMREAD_UNCHANGED).shape == (32, 40, 3)
    assert 'skipped 1 file(s) that are not images' in out and 'readme.txt' in out
    assert '2 image(s) restored' in out
    error = err.strip().splitlines()[-1]
    assert error.startswith('error: 2 of 4 image(s) failed: cannot read') and 'notes.png' in error, error
    assert "rgba.png' has 4 channel(s)" in error and 'failed: ' in out


def test_cli_precision_is_a_cast_copy_as_in_the_test_cli(tmp_path, capsys):
    """fp16 gives the fp32 image up to rounding; an LN network whose features exceed 65504 overflows in
    fp16 (as the paper's fp16 test shows), and the CLI says so for the file."""
    cv2.imwrite(str(tmp_path / 'photo.png'), real_photos()[0][:32, :40])
    torch.manual_seed(0)
    net = SwinIR_iLN(**TINY_SWINIR, upscale=1, upsampler='', norm_type='ln')
    arch = ['--arch', 'SwinIR_iLN', '--arch-opt', '{upscale: 1, upsampler: "", img_size: 16, window_size: 4, '
            'depths: [2], embed_dim: 12, num_heads: [2], mlp_ratio: 2, norm_type: ln}']
    torch.save({'params': net.state_dict()}, tmp_path / 'ln.pth')
    outputs = {}
    for precision in ('fp32', 'fp16'):
        infer.main([*arch, '-c', str(tmp_path / 'ln.pth'), '-i', str(tmp_path / 'photo.png'), '-o',
                    str(tmp_path / precision), '--precision', precision])
        outputs[precision] = cv2.imread(str(tmp_path / precision / 'photo.png')).astype(int)
    assert np.abs(outputs['fp16'] - outputs['fp32']).max() <= 2
    assert 'non-finite' not in capsys.readouterr().out
    with torch.no_grad():
        net.conv_first.weight.mul_(1e6)  # features far beyond the fp16 range
    torch.save({'params': net.state_dict()}, tmp_path / 'huge.pth')
    infer.main([*arch, '-c', str(tmp_path / 'huge.pth'), '-i', str(tmp_path / 'photo.png'), '-o',
                str(tmp_path / 'huge'), '--precision', 'fp16'])
    assert 'non-finite output values in fp16: the network overflows this precision' in capsys.readouterr().out


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
        'has 4 channel(s) (RGBA (with alpha))': [*net, '-i', str(tmp_path / 'rgba.png')],
        'contains no images': [*net, '-i', str(tmp_path / 'empty')],
        'checkpoint not found': [*net[:-1], str(tmp_path / 'none.pth'), '-i', str(tmp_path / 'gray.png')],
        'multiple of the window size 4': [*net, '-i', str(tmp_path / 'rgba.png'), '--tile', '30'],
        'either with --opt': ['-c', str(dn_checkpoint), '-i', str(tmp_path / 'gray.png')],
    }
    for message, argv in cases.items():
        assert message in main_error_line(infer.main, argv + ['-o', str(tmp_path / 'out')], capsys)
