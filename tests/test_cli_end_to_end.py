"""The real train and test CLIs on tiny real images: checkpoints, metrics and restored images appear. Both run
in fresh interpreters, as a user starts them; the rest of the suite runs the CLIs in forks (helpers.run_python)."""
import json

import pytest
import torch

from helpers import eval_options_from_train, run_cli, tiny_train_options, write_yaml


def read_metrics(folder):
    return [json.loads(line) for line in (folder / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.slow
def test_train_then_test_cli(tiny_sr_data, tmp_path):
    opt = tiny_train_options(tiny_sr_data, 'e2e_iln', norm_type='iln', total_iter=4)
    result = run_cli('train', write_yaml(tmp_path / 'train.yml', opt), tmp_path, fresh_interpreter=True)
    assert result.returncode == 0, result.stderr[-3000:]

    exp = tmp_path / 'experiments' / 'e2e_iln'
    for name in ('net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth'):
        assert (exp / 'models' / name).is_file(), name
    assert (exp / 'training_states' / '4.state').is_file()
    ckpt = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)
    assert set(ckpt) == {'params', 'params_ema', 'network_config'}  # BasicSR's layout + what rebuilds the network
    assert ckpt['network_config']['kwargs']['norm_type'] == 'iln' and ckpt['network_config']['kwargs']['stdnorm']
    assert any(k.endswith('norm1.gamma') for k in ckpt['params'])  # i-LN layers were trained and saved

    records = read_metrics(exp)
    assert [r['iter'] for r in records] == [2, 4]  # every val_freq (the end of training is one of them)
    for r in records:
        assert r['dataset'] == 'tiny_val' and 10 < r['psnr'] < 60 and 0 < r['ssim'] <= 1
    assert sorted(p.name for p in (exp / 'visualization').rglob('*.png')) == [
        'img00_2.png', 'img00_4.png', 'img01_2.png', 'img01_4.png']

    test_opt = eval_options_from_train(opt, 'e2e_iln_test', exp / 'models' / 'net_g_latest.pth')
    result = run_cli('test', write_yaml(tmp_path / 'test.yml', test_opt), tmp_path, fresh_interpreter=True)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / 'results' / 'e2e_iln_test'
    [test_record] = read_metrics(results)
    # The test CLI evaluates the EMA weights, as validation during training did at the last iteration.
    assert abs(test_record['psnr'] - records[-1]['psnr']) < 1e-6
    assert len(list((results / 'visualization' / 'tiny_test').glob('*.png'))) == 2
