"""Our checkpoints in other tools: spandrel (the loader behind chaiNNer and ComfyUI) detects our LN
checkpoints, .pth and .safetensors, with the right hyper-parameters and the same outputs; what
docs/interop.md tells a third-party loader about i-LN checkpoints holds."""
import re

import pytest
import torch

import basicsr_iln  # noqa: F401
from basicsr.utils.registry import ARCH_REGISTRY
from basicsr_iln.archs.norms import DEFAULT_ILN_EPS, HolisticLayerNorm
from basicsr_iln.archs.transformer_core import RGB_MEAN, RGB_STD
from basicsr_iln.utils.checkpoint import atomic_torch_save, save_safetensors
from basicsr_iln.utils.network_config import NETWORK_CONFIG_KEY, TRAINING_ONLY_KWARGS, network_config
from helpers import REPO

spandrel = pytest.importorskip('spandrel')

SMALL = dict(img_size=16, window_size=4, depths=[2, 2], embed_dim=12, num_heads=[2, 3], mlp_ratio=2)
# name: <spandrel architecture>_<setting>. Window 4 but for CAR: spandrel takes every window-7 SwinIR for
# the JPEG release (img_range 255).
NETWORKS = {
    'SwinIR_classicalSR_x2': dict(type='SwinIR_iLN', norm_type='ln', upscale=2, upsampler='pixelshuffle', **SMALL),
    'SwinIR_lightweightSR_x3': dict(type='SwinIR_iLN', norm_type='ln', upscale=3, upsampler='pixelshuffledirect',
                                    **SMALL),
    'SwinIR_colorDN': dict(type='SwinIR_iLN', norm_type='ln', upscale=1, upsampler='', **SMALL),
    'SwinIR_grayCAR': dict(type='SwinIR_iLN', norm_type='ln', upscale=1, upsampler='', in_chans=1,
                           **dict(SMALL, window_size=7, img_size=14), img_range=255.0),  # as released
    'HAT_SRx2': dict(type='HAT', upscale=2, upsampler='pixelshuffle', compress_ratio=3, squeeze_factor=4, **SMALL),
    'DRCT_SRx2': dict(type='DRCT', upscale=2, upsampler='pixelshuffle', gc=4, **SMALL),
}
# Hyper-parameters no state dict holds, which spandrel therefore assumes: HAT's img_size (only shift masks
# depend on it, and those are computed per input) and DRCT's depths (each RDG has five blocks whatever
# its entry; the entries only set drop-path rates).
NOT_IN_STATE_DICT = {'HAT': {'img_size'}, 'DRCT': {'depths'}}


def trained_like(net_opt):
    """The network with every parameter moved off its initialisation (norm weights 1 and biases 0
    would hide a norm that is applied wrongly), seeded."""
    kwargs = dict(net_opt)
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get(kwargs.pop('type'))(**kwargs).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    return net


def write_checkpoint(net, net_opt, path):
    """Our training layout (IRModel.save_network) or its safetensors export, by ``path``'s suffix."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    if path.suffix == '.safetensors':
        save_safetensors(state, path, network_config(net_opt))
    else:
        atomic_torch_save({'params': state, 'params_ema': state, NETWORK_CONFIG_KEY: network_config(net_opt)}, path)
    return path


def max_diff(ours, net, in_chans):
    x = torch.rand(1, in_chans, 16, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(x) - net(x)).abs().max().item()


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
@pytest.mark.parametrize('name', list(NETWORKS))
def test_spandrel_loads_our_ln_checkpoints(tmp_path, name, suffix):
    net_opt = NETWORKS[name]
    ours = trained_like(net_opt)
    descriptor = spandrel.ModelLoader().load_from_file(str(write_checkpoint(ours, net_opt, tmp_path / f'net{suffix}')))
    assert descriptor.architecture.id == name.split('_')[0]
    kwargs = network_config(net_opt)['kwargs']
    assert descriptor.scale == kwargs['upscale'] and descriptor.input_channels == kwargs['in_chans']
    detected = descriptor.model.hyperparameters
    skip = TRAINING_ONLY_KWARGS | NOT_IN_STATE_DICT.get(descriptor.architecture.id, set())
    compared = sorted(set(detected) & set(kwargs) - skip)
    assert {k: detected[k] for k in compared} == {k: kwargs[k] for k in compared}
    assert {'embed_dim', 'num_heads', 'window_size', 'mlp_ratio', 'upsampler', 'img_range'} <= set(compared)
    diff = max_diff(ours, descriptor.model.eval(), kwargs['in_chans'])
    print(f'{name}{suffix}: spandrel max abs diff {diff:.2e}')
    assert diff <= 1e-5


@pytest.mark.parametrize('name', ['SwinIR_classicalSR_x2', 'HAT_SRx2', 'DRCT_SRx2'])
def test_spandrel_never_runs_an_iln_checkpoint_as_layernorm(tmp_path, name):
    """spandrel 0.4.2 has no i-LN: it must refuse our i-LN checkpoints, or (a later version) match them."""
    net_opt = dict(NETWORKS[name], norm_type='iln')
    ours = trained_like(net_opt)
    path = write_checkpoint(ours, net_opt, tmp_path / 'iln.pth')
    try:
        descriptor = spandrel.ModelLoader().load_from_file(str(path))
    except spandrel.UnsupportedModelError:
        return
    assert max_diff(ours, descriptor.model.eval(), 3) <= 1e-5


@pytest.mark.parametrize('name', ['SwinIR_classicalSR_x2', 'HAT_SRx2', 'DRCT_SRx2'])
def test_iln_state_dicts_are_ln_ones_with_norms_renamed(name):
    """docs/interop.md: an i-LN state dict is the LN one of the same network with every norm's
    ``weight``/``bias`` named ``gamma``/``beta`` (same shapes); nothing else tells them apart."""
    ln = trained_like(NETWORKS[name]).state_dict()
    iln = trained_like(dict(NETWORKS[name], norm_type='iln')).state_dict()
    renamed = {re.sub(r'(norm\d?)\.gamma$', r'\1.weight', re.sub(r'(norm\d?)\.beta$', r'\1.bias', k)): v.shape
               for k, v in iln.items()}
    assert renamed == {k: v.shape for k, v in ln.items()}
    assert any(k.endswith('norm1.gamma') for k in iln) and not any(k.endswith('norm1.weight') for k in iln)


def test_interop_doc_states_the_official_defaults():
    """The values docs/interop.md gives a third-party loader are the ones our i-LN networks use."""
    doc = (REPO / 'docs' / 'interop.md').read_text()
    for value in (*RGB_MEAN, *RGB_STD, DEFAULT_ILN_EPS):
        assert str(value) in doc, value
    net = trained_like(dict(NETWORKS['HAT_SRx2'], type='HAT_iLN'))
    assert net.stdnorm is True and torch.allclose(net.std.flatten(), torch.tensor(RGB_STD))
    assert {m.eps for m in net.modules() if isinstance(m, HolisticLayerNorm)} == {DEFAULT_ILN_EPS}
