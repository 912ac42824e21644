"""Checkpoint loading: every released file layout, clear mismatch errors, and a save -> load round
trip through the real CLIs for HAT_iLN and DRCT_iLN."""
import json

import pytest
import torch

import basicsr_iln  # noqa: F401
from basicsr.utils.registry import ARCH_REGISTRY
from basicsr_iln.utils.checkpoint import load_weights
from basicsr_iln.utils.errors import ConfigError
from helpers import eval_options_from_train, run_cli, tiny_train_options, write_yaml

TINY_HAT = dict(type='HAT_iLN', upscale=2, in_chans=3, img_size=16, window_size=4, compress_ratio=3, squeeze_factor=4,
                conv_scale=0.01, overlap_ratio=0.5, img_range=1.0, depths=[2], embed_dim=12, num_heads=[2],
                mlp_ratio=2, upsampler='pixelshuffle', resi_connection='1conv', stdnorm=True, eps=1e-4)
TINY_DRCT = dict(type='DRCT_iLN', upscale=2, in_chans=3, img_size=16, window_size=4, img_range=1.0, depths=[1],
                 embed_dim=12, num_heads=[2], gc=4, mlp_ratio=2, upsampler='pixelshuffle', resi_connection='1conv')


def build(net_opt):
    kwargs = dict(net_opt)
    return ARCH_REGISTRY.get(kwargs.pop('type'))(**kwargs)


@pytest.fixture
def hat_pair(tmp_path):
    torch.manual_seed(0)
    return build(TINY_HAT), build(TINY_HAT), tmp_path


@pytest.mark.parametrize('layout', ['basicsr_params', 'basicsr_params_ema', 'raw_state_dict', 'module_prefix',
                                    'official_params'])
def test_every_released_layout_loads(hat_pair, layout):
    source, target, tmp = hat_pair
    weights = source.state_dict()
    payload = {
        'basicsr_params': {'params': weights},
        'basicsr_params_ema': {'params': {k: torch.zeros_like(v) for k, v in weights.items()}, 'params_ema': weights},
        'raw_state_dict': weights,  # SwinIR repository releases
        'module_prefix': {'params': {f'module.{k}': v for k, v in weights.items()}},  # saved from DDP
        'official_params': {'params_ema': weights, 'iter': 500000},
    }[layout]
    path = tmp / f'{layout}.pth'
    torch.save(payload, path)
    load_weights(target, str(path), param_key='params_ema' if layout == 'basicsr_params_ema' else 'params')
    for key, value in weights.items():
        assert torch.equal(target.state_dict()[key], value), key


def test_mismatch_lists_missing_unexpected_and_misshaped_keys(hat_pair):
    _, target, tmp = hat_pair
    drct = build(TINY_DRCT)
    torch.save({'params': drct.state_dict()}, tmp / 'drct.pth')
    with pytest.raises(ConfigError) as err:
        load_weights(target, str(tmp / 'drct.pth'), arch_desc='HAT_iLN(embed_dim=12)')
    message = str(err.value)
    assert 'does not fit the network HAT_iLN(embed_dim=12)' in message
    assert 'missing keys: conv_after_body' not in message  # shared keys are not reported as missing
    assert 'missing keys: layers.0.conv.bias' in message and 'unexpected keys: layers.0.adjust1.bias' in message


def test_checkpoint_for_another_scale_is_named(tmp_path):
    x4 = build(dict(TINY_HAT, upscale=4))
    torch.save({'params': x4.state_dict()}, tmp_path / 'x4.pth')
    with pytest.raises(ConfigError, match=r'unexpected keys: upsample\.2\.bias.*another scale'):
        load_weights(build(TINY_HAT), str(tmp_path / 'x4.pth'))


def test_non_weight_files_are_refused(tmp_path):
    torch.save({'epoch': 3, 'notes': 'no tensors here'}, tmp_path / 'state.pth')
    with pytest.raises(ConfigError, match='has no weights'):
        load_weights(build(TINY_HAT), str(tmp_path / 'state.pth'))
    (tmp_path / 'truncated.pth').write_bytes(b'PK\x03\x04 not really a zip')
    with pytest.raises(ConfigError, match='cannot read checkpoint'):
        load_weights(build(TINY_HAT), str(tmp_path / 'truncated.pth'))


@pytest.mark.slow
@pytest.mark.parametrize('network', [TINY_HAT, TINY_DRCT], ids=['HAT_iLN', 'DRCT_iLN'])
def test_cli_round_trip(tiny_sr_data, tmp_path, network):
    """Train 2 iterations with the real train CLI, then evaluate the saved checkpoint with the test CLI:
    the test CLI must load it strictly and reproduce the final validation exactly."""
    opt = tiny_train_options(tiny_sr_data, f'roundtrip_{network["type"]}', total_iter=2)
    opt['network_g'] = dict(network)
    result = run_cli('train', write_yaml(tmp_path / 'train.yml', opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = tmp_path / 'experiments' / opt['name']
    final_val = json.loads((exp / 'metrics.jsonl').read_text().splitlines()[-1])

    test_opt = eval_options_from_train(opt, f'roundtrip_{network["type"]}_test', exp / 'models' / 'net_g_latest.pth')
    result = run_cli('test', write_yaml(tmp_path / 'test.yml', test_opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    tested = json.loads((tmp_path / 'results' / test_opt['name'] / 'metrics.jsonl').read_text().splitlines()[-1])
    assert tested['psnr'] == pytest.approx(final_val['psnr'], abs=1e-9)
    assert tested['ssim'] == pytest.approx(final_val['ssim'], abs=1e-9)
