"""SwinIR_iLN: with norm_type 'ln' it is the released SwinIR (keys, shapes, outputs); every setting
and every norm runs; inputs that are not window multiples are padded and cropped back."""

import pytest
import torch
import torch.nn.functional as F

import basicsr_iln  # noqa: F401
from basicsr.archs.swinir_arch import SwinIR
from basicsr.utils.registry import ARCH_REGISTRY
from timm.layers import Mlp

from basicsr_iln.archs.norms import NORM_TYPES
from basicsr_iln.archs.swinir_arch import SwinIR_iLN
from basicsr_iln.archs.transformer_core import TransformerBlock
from helpers import reference_layouts

SWINIR_ENTRIES = [
    'SwinIR_classicalSR_x2', 'SwinIR_classicalSR_x4', 'SwinIR_lightweightSR_x4', 'SwinIR_colorDN', 'SwinIR_grayDN',
    'SwinIR_grayCAR', 'SwinIR_colorCAR'
]

TINY = dict(img_size=16, window_size=4, depths=[2, 2], num_heads=[2, 2], embed_dim=16, mlp_ratio=2)
SETTINGS = {
    'classical_x2': dict(upscale=2, upsampler='pixelshuffle'),
    'classical_x3': dict(upscale=3, upsampler='pixelshuffle'),
    'lightweight_x4': dict(upscale=4, upsampler='pixelshuffledirect'),
    'real_x4': dict(upscale=4, upsampler='nearest+conv'),
    'gray_dn': dict(upscale=1, upsampler='', in_chans=1),
    'color_car_win7': dict(upscale=1, upsampler='', img_range=255.0, window_size=7, img_size=14),
    'ape_3conv_nopatchnorm': dict(upscale=2, upsampler='pixelshuffle', ape=True, patch_norm=False,
                                  resi_connection='3conv'),
}


@pytest.fixture(scope='module')
def layouts():
    return reference_layouts()


@pytest.mark.parametrize('entry', SWINIR_ENTRIES)
def test_layout_matches_released_checkpoint(layouts, entry):
    ref = layouts[entry]
    with torch.device('meta'):
        net = ARCH_REGISTRY.get('SwinIR_iLN')(norm_type='ln', **ref['kwargs'])
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert ours == ref['state_dict']
    assert sum(p.numel() for p in net.parameters()) == ref['num_params']


def test_iln_layout_differs_from_ln_only_in_norm_parameter_names(layouts):
    ref = layouts['SwinIR_classicalSR_x2']
    with torch.device('meta'):
        iln = SwinIR_iLN(norm_type='iln', **ref['kwargs']).state_dict()
    renamed = {k.replace('.gamma', '.weight').replace('.beta', '.bias'): list(v.shape) for k, v in iln.items()}
    assert renamed == ref['state_dict']
    assert all(k.split('.')[-2].startswith('norm') for k in iln if k.endswith(('.gamma', '.beta')))


def paired_nets(**kwargs):
    torch.manual_seed(0)
    ref = SwinIR(**kwargs).eval()
    for p in ref.parameters():  # make biases and norms non-trivial
        p.data.add_(0.05 * torch.randn_like(p))
    ours = SwinIR_iLN(norm_type='ln', **kwargs).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize('setting', SETTINGS)
def test_same_output_as_basicsr_swinir(setting):
    kwargs = dict(TINY, **SETTINGS[setting])
    ref, ours = paired_nets(**kwargs)
    ws, c = kwargs['window_size'], kwargs.get('in_chans', 3)
    sizes = [(kwargs['img_size'], kwargs['img_size']), (3 * ws, 2 * ws)]  # training size and another
    for h, w in sizes[:1] if kwargs.get('ape') else sizes:  # an absolute position embedding fixes the size
        x = torch.rand(2, c, h, w)
        with torch.no_grad():
            diff = (ref(x) - ours(x)).abs().max().item()
        assert diff <= 1e-5, (setting, h, w, diff)


def test_non_window_multiple_input_is_reflect_padded_and_cropped():
    ref, ours = paired_nets(**dict(TINY, upscale=2, upsampler='pixelshuffle'))
    x = torch.rand(1, 3, 13, 10)
    padded = F.pad(x, (0, 2, 0, 3), mode='reflect')  # to 16 x 12, multiples of window 4
    with torch.no_grad():
        expected = ref(padded)[..., :26, :20]
        out = ours(x)
    assert out.shape == (1, 3, 26, 20)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize('norm_type', NORM_TYPES)
def test_every_norm_type_trains(norm_type):
    torch.manual_seed(0)
    net = SwinIR_iLN(norm_type=norm_type, stdnorm=norm_type == 'iln', **TINY, upscale=2, upsampler='pixelshuffle')
    x, y = torch.rand(2, 3, 12, 10), torch.rand(2, 3, 24, 20)
    loss = F.l1_loss(net(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_stdnorm_maps_input_and_output_back():
    """With every layer zeroed, the network is the identity map through normalise/denormalise."""
    net = SwinIR_iLN(**TINY, upscale=1, upsampler='', stdnorm=True, img_range=255.0)
    for p in net.parameters():
        p.data.zero_()
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(net(x), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(net.std.flatten(), torch.tensor([0.2842, 0.2701, 0.2920]))


@pytest.mark.parametrize('kwargs, message', [
    (dict(norm_type='layernorm'), "Unknown norm_type 'layernorm'"),
    (dict(upsampler='bicubic'), "Unknown upsampler 'bicubic'"),
    (dict(upscale=2, upsampler=''), "needs upscale 1"),
    (dict(in_chans=4), 'in_chans must be 1'),
    (dict(depths=[2, 2], num_heads=[2]), 'one entry per stage'),
    (dict(resi_connection='2conv'), "Unknown resi_connection '2conv'"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SwinIR_iLN(**dict(TINY, upscale=1, upsampler='', **kwargs) if 'upsampler' not in kwargs and
                   'upscale' not in kwargs else dict(TINY, **kwargs))


def test_block_attention_and_mlp_are_factories():
    """A variant swaps a block's layer by passing its factory; the default layout is unchanged."""
    seen = []

    class RecordingMlp(Mlp):

        def forward(self, x):
            seen.append(tuple(x.shape))
            return super().forward(x)

    block = TransformerBlock(16, (8, 8), 2, window_size=4, mlp_layer=RecordingMlp)
    assert set(block.state_dict()) == set(TransformerBlock(16, (8, 8), 2, window_size=4).state_dict())
    block(torch.randn(1, 64, 16), (8, 8))
    assert seen == [(1, 64, 16)]
