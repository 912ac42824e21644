"""Checkpoint loading: every released file layout (.pth and .safetensors), clear mismatch errors, the
network config our checkpoints carry (rebuild from the file alone, refuse a load into a network built
otherwise), and a save -> load round trip through the real CLIs for HAT_iLN and DRCT_iLN."""
import json
import re
from pathlib import Path
from types import SimpleNamespace

import cv2
import pytest
import torch

import basicsr_iln  # noqa: F401
from basicsr.models import build_model
from basicsr.utils import make_exp_dirs
from basicsr.utils.registry import ARCH_REGISTRY
from basicsr_iln import export, infer
from basicsr_iln.utils.checkpoint import (load_checkpoint_file, load_weights,
                                          save_safetensors)
from basicsr_iln.utils.errors import ConfigError
from basicsr_iln.utils.network_config import NETWORK_CONFIG_KEY, network_config, network_options
from basicsr_iln.utils.options import parse_options
from helpers import (eval_options_from_train, main_error_line, real_photos, run_cli, tiny_train_options,
                     write_yaml)

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
    load_weights(target, str(path), param_key='params_ema' if layout == 'basicsr_params_ema' else 'params',
                 network_config=network_config(TINY_HAT))  # as the train/test CLIs load: no config to check
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


@pytest.mark.parametrize('content', [b'', b'hello world\n' * 10, bytes(range(256)) * 16],
                         ids=['empty', 'text', 'binary'])
def test_a_file_that_is_no_checkpoint_is_one_clear_error(tmp_path, content):
    path = tmp_path / 'junk.pth'
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf'^cannot read checkpoint {re.escape(str(path))}: \S'):
        load_checkpoint_file(str(path))


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


# --- the network config our checkpoints carry ------------------------------------------------------------

@pytest.fixture(scope='module')
def saved_run(tiny_sr_data, tmp_path_factory):
    """A tiny i-LN SwinIR IRModel (network_g without stdnorm: the scheme's default) saved by IRModel.save,
    one restored photo as input, and the CLI options file it was built from."""
    root = tmp_path_factory.mktemp('saved_run')
    train_opt = tiny_train_options(tiny_sr_data, 'saved')
    opt_path = write_yaml(root / 'train.yml', train_opt)
    opt, _ = parse_options(str(root), is_train=True, argv=['-opt', str(opt_path)])
    make_exp_dirs(opt)
    model = build_model(opt)
    model.save(0, 2)
    photo = root / 'photo.png'
    cv2.imwrite(str(photo), real_photos()[0][:20, :28])
    return SimpleNamespace(model=model, train_opt=train_opt, opt_path=opt_path, root=root, photo=photo,
                           checkpoint=Path(opt['path']['models']) / 'net_g_2.pth')


def infer_output(argv, out):
    infer.main([*argv, '-o', str(out)])
    return cv2.imread(str(out / 'photo.png'), cv2.IMREAD_UNCHANGED)


def test_training_checkpoint_records_its_network(saved_run):
    """The real save keeps BasicSR's layout, adds plain data only, and the config rebuilds the network."""
    saved = torch.load(saved_run.checkpoint, map_location='cpu', weights_only=True)
    assert sorted(saved) == [NETWORK_CONFIG_KEY, 'params', 'params_ema']
    config = saved[NETWORK_CONFIG_KEY]
    assert config['type'] == 'SwinIR_iLN' and config['version'] == basicsr_iln.__version__
    given = {k: v for k, v in saved_run.train_opt['network_g'].items() if k != 'type'}
    assert {k: config['kwargs'][k] for k in given} == given
    # Resolved: the defaults no option file wrote, the norm scheme's input handling and eps included.
    assert config['kwargs']['stdnorm'] is True and config['kwargs']['eps'] == 1e-4
    assert config['kwargs']['qkv_bias'] is True and config['kwargs']['resi_connection'] == '1conv'
    assert json.loads(json.dumps(config)) == config

    rebuilt = build(network_options(config)).eval()
    load_weights(rebuilt, str(saved_run.checkpoint), param_key='params_ema', network_config=config)
    x = torch.rand(1, 3, 12, 20)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), saved_run.model.net_g_ema.eval()(x), rtol=0, atol=0)


def test_infer_needs_only_the_checkpoint(saved_run, tmp_path):
    """-c alone gives what --opt with the training options gives; so does its safetensors copy."""
    alone = infer_output(['-c', str(saved_run.checkpoint), '-i', str(saved_run.photo)], tmp_path / 'alone')
    with_opt = infer_output(['--opt', str(saved_run.opt_path), '-c', str(saved_run.checkpoint), '-i',
                             str(saved_run.photo)], tmp_path / 'opt')
    converted = tmp_path / 'net.safetensors'
    export.main(['-c', str(saved_run.checkpoint), '--safetensors', str(converted)])
    from_safetensors = infer_output(['-c', str(converted), '-i', str(saved_run.photo)], tmp_path / 'st')
    assert alone.shape == (40, 56, 3)
    assert (alone == with_opt).all() and (alone == from_safetensors).all()
    agreeing = infer_output(['--arch', 'SwinIR_iLN', '--arch-opt', '{norm_type: iln, stdnorm: true, drop_path_rate: 0}',
                             '-c', str(saved_run.checkpoint), '-i', str(saved_run.photo)], tmp_path / 'agree')
    assert (agreeing == alone).all()  # drop_path_rate only changes training: never a conflict


def test_flushing_denormals_leaves_the_restored_image_as_it_is(saved_run, tmp_path):
    """Flush-to-zero changes only values below 1.2e-38: none of them reaches an 8-bit pixel."""
    argv = ['-c', str(saved_run.checkpoint), '-i', str(saved_run.photo)]
    flushed = infer_output(argv, tmp_path / 'flushed')
    kept = infer_output([*argv, '--keep-denormals'], tmp_path / 'kept')
    assert (flushed == kept).all()


def test_channels_last_inference_restores_the_same_image(saved_run, tmp_path):
    """Another layout only changes the convolutions' summation order: at most one 8-bit level, here and there."""
    argv = ['-c', str(saved_run.checkpoint), '-i', str(saved_run.photo)]
    default = infer_output(argv, tmp_path / 'default').astype(int)
    channels_last = infer_output([*argv, '--channels-last'], tmp_path / 'nhwc').astype(int)
    assert abs(channels_last - default).max() <= 1 and (channels_last == default).mean() > 0.99


def test_infer_refuses_values_that_contradict_the_checkpoint(saved_run, tmp_path, capsys):
    other = dict(saved_run.train_opt, network_g=dict(saved_run.train_opt['network_g'], embed_dim=16))
    other_path = write_yaml(tmp_path / 'other.yml', other)
    io = ['-c', str(saved_run.checkpoint), '-i', str(saved_run.photo), '-o', str(tmp_path / 'out')]
    cases = {
        'stdnorm is true in the checkpoint but false in --arch/--arch-opt':
            ['--arch', 'SwinIR_iLN', '--arch-opt', '{stdnorm: false}'],
        'type is "SwinIR_iLN" in the checkpoint but "HAT" in --arch/--arch-opt': ['--arch', 'HAT'],
        f'embed_dim is 12 in the checkpoint but 16 in network_g of {other_path}': ['--opt', str(other_path)],
        'norm_type is "iln" in the checkpoint but "ln"': ['--arch', 'SwinIR_iLN', '--arch-opt', '{norm_type: ln}'],
    }
    for message, argv in cases.items():
        assert message in main_error_line(infer.main, [*argv, *io], capsys)
    assert not (tmp_path / 'out').exists()


def test_test_cli_refuses_a_network_built_with_other_input_handling(saved_run, tmp_path):
    """IRModel (test and train CLIs, resume) compares the checkpoint's config with network_g."""
    test_opt = eval_options_from_train(saved_run.train_opt, 'mismatch', saved_run.checkpoint)
    test_opt['network_g'] = dict(test_opt['network_g'], stdnorm=False)
    opt, _ = parse_options(str(tmp_path), is_train=False, argv=['-opt', str(write_yaml(tmp_path / 't.yml', test_opt))])
    with pytest.raises(ConfigError, match=r'saved from another network: stdnorm is true in the checkpoint but '
                                          r'false in network_g .*strict_load_g: false'):
        build_model(opt)


def test_fine_tuning_across_scales_warns_about_the_differences(saved_run, warnings):
    x4_opt = dict(saved_run.train_opt['network_g'], upscale=4)
    x4 = build(x4_opt)
    load_weights(x4, str(saved_run.checkpoint), strict=False, network_config=network_config(x4_opt))
    assert 'built otherwise (strict_load_g false): upscale is 2 in the checkpoint but 4' in warnings.text


def test_hat_iln_defaults_to_the_official_input_handling(tmp_path, warnings):
    """``type: HAT_iLN`` without stdnorm is the official HAT-iLN (stdnorm true); a config-less (released)
    checkpoint loaded into a network with the other input handling is logged: it cannot be detected."""
    torch.manual_seed(0)
    implicit = {k: v for k, v in TINY_HAT.items() if k != 'stdnorm'}
    official, default = build(TINY_HAT).eval(), build(implicit).eval()
    assert default.stdnorm is True and network_config(implicit)['kwargs']['stdnorm'] is True
    torch.save({'params_ema': official.state_dict(), 'iter': 500000}, tmp_path / 'official.pth')  # no config
    load_weights(default, str(tmp_path / 'official.pth'), param_key='params_ema',
                 network_config=network_config(implicit))
    assert 'stdnorm' not in warnings.text
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(default(x), official(x), rtol=0, atol=0)

    other = dict(implicit, stdnorm=False)
    load_weights(build(other), str(tmp_path / 'official.pth'), param_key='params_ema',
                 network_config=network_config(other))
    assert 'records no network config, and network_g sets stdnorm false, not the default of norm_type iln' \
        in warnings.text


def test_safetensors_loads_like_pth(saved_run, tmp_path):
    state = torch.load(saved_run.checkpoint, weights_only=True)
    config = state[NETWORK_CONFIG_KEY]
    save_safetensors(state['params_ema'], tmp_path / 'net.safetensors', config)
    loaded = load_checkpoint_file(tmp_path / 'net.safetensors')
    assert loaded[NETWORK_CONFIG_KEY] == config
    from_pth, from_st = build(network_options(config)), build(network_options(config))
    load_weights(from_pth, str(saved_run.checkpoint), param_key='params_ema', network_config=config)
    load_weights(from_st, str(tmp_path / 'net.safetensors'), param_key='params_ema', network_config=config)
    for key, value in from_pth.state_dict().items():
        assert torch.equal(from_st.state_dict()[key], value), key

    # A released state dict converted without a config loads with the network given, as its .pth does.
    save_safetensors(state['params_ema'], tmp_path / 'released.safetensors')
    assert NETWORK_CONFIG_KEY not in load_checkpoint_file(tmp_path / 'released.safetensors')
    load_weights(build(network_options(config)), str(tmp_path / 'released.safetensors'))
    with pytest.raises(ConfigError, match='records no network config'):
        infer.network_from_args(infer.build_arg_parser().parse_args(
            ['-c', str(tmp_path / 'released.safetensors'), '-i', str(saved_run.photo)]))

    (tmp_path / 'broken.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": not json}')
    with pytest.raises(ConfigError, match='cannot read checkpoint .*broken.safetensors'):
        load_checkpoint_file(tmp_path / 'broken.safetensors')
