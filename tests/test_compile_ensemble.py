"""Option ``compile`` (torch.compile of the trained network) and ``val.self_ensemble`` through the real CLIs.

Inductor needs minutes to compile even the tiny network on a busy 2-core CPU, so the CLI run uses
``compile: {backend: eager}``: the same option path (torch.compile wrapping, unwrapping for
checkpoints/EMA/evaluation), without code generation.
"""
import json

import pytest
import torch

from basicsr.models import build_model

from basicsr_iln.archs.swinir_arch import SwinIR_iLN
from basicsr_iln.archs.transformer_core import shifted_window_mask
from basicsr_iln.models.ir_model import compile_network
from basicsr_iln.utils.errors import ConfigError
from basicsr_iln.utils.options import parse_options
from helpers import eval_options_from_train, run_cli, tiny_train_options, write_yaml


def read_metrics(folder):
    return [json.loads(line) for line in (folder / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.slow
def test_compiled_training_then_self_ensemble_testing(tiny_sr_data, tmp_path):
    opt = tiny_train_options(tiny_sr_data, 'compiled', norm_type='iln', total_iter=2)
    opt['compile'] = {'backend': 'eager'}
    result = run_cli('train', write_yaml(tmp_path / 'train.yml', opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'compiled'
    log = next(exp.glob('train_compiled_*.log')).read_text()
    assert 'Network: OptimizedModule' in log  # net_g was wrapped by torch.compile

    ckpt = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)
    plain_keys = set(SwinIR_iLN(**{k: v for k, v in opt['network_g'].items() if k != 'type'}).state_dict())
    assert set(ckpt['params']) == set(ckpt['params_ema']) == plain_keys  # no '_orig_mod.' prefixes
    validated = read_metrics(exp)[-1]['psnr']

    test_opt = eval_options_from_train(opt, 'ensemble', exp / 'models' / 'net_g_latest.pth')
    test_opt['val']['self_ensemble'] = True
    result = run_cli('test', write_yaml(tmp_path / 'test.yml', test_opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [record] = read_metrics(tmp_path / 'results' / 'ensemble')
    # Same EMA weights as the last validation, which ran without the ensemble.
    assert 5 < record['psnr'] < 60 and abs(record['psnr'] - validated) > 1e-4


@pytest.mark.parametrize('value', [{'bakend': 'eager'}, 'yes', 3])
def test_bad_compile_option_is_refused(value):
    with pytest.raises(ConfigError, match="option 'compile"):
        compile_network(torch.nn.Identity(), value)


def test_compile_off_keeps_the_network():
    net = torch.nn.Identity()
    assert compile_network(net, False) is net and compile_network(net, None) is net


@pytest.mark.parametrize('compiled', [True, False])
def test_compiled_training_keeps_the_shift_mask_of_its_patches(compiled, tiny_sr_data, tmp_path):
    """A compiled network takes the training patch's shift mask as an input instead of computing it in the
    graph (docs/benchmarks.md): 24-px GT crops at x2 are 12-px inputs, padded to 16 by the 8-px windows."""
    opt = tiny_train_options(tiny_sr_data, 'kept', img_size=32, window_size=8)
    opt['datasets']['train']['gt_size'] = 24
    if compiled:
        opt['compile'] = {'backend': 'eager'}
    parsed, _ = parse_options(str(tmp_path), is_train=True, argv=['-opt', str(write_yaml(tmp_path / 'o.yml', opt))])
    model = build_model(parsed)
    net = model.get_bare_model(model.net_g)
    expected = (16, 16) if compiled else (32, 32)  # else: img_size's, from construction
    assert net.kept_mask_size == expected
    assert torch.equal(net.kept_shift_mask, shifted_window_mask(expected, 8, 4))
