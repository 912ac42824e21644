"""scripts/evaluate_tables.py on a tiny real run: Set5 evaluated, published values from docs/paper_results.csv,
a missing test set and a missing checkpoint reported in their cells."""
import csv
import json
import subprocess
import sys

import pytest

from helpers import REPO, SHARED_DATASETS, eval_options_from_train, run_cli, tiny_train_options, write_yaml

sys.path.insert(0, str(REPO / 'scripts' / 'data_preparation'))
import prepare_sr  # noqa: E402

SET5 = SHARED_DATASETS / 'sr' / 'Set5'
pytestmark = pytest.mark.skipif(not SET5.is_dir(), reason='needs ../shared/datasets/sr/Set5')


def published(table, backbone, level, dataset, norm, metric):
    with open(REPO / 'docs' / 'paper_results.csv', encoding='utf-8') as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith('#')))
    [row] = [r for r in rows if (r['table'], r['backbone'], r['scale_or_level'], r['dataset'], r['norm'],
                                 r['metric']) == (table, backbone, level, dataset, norm, metric)]
    return row['value']


def sr_test_set(root, name):
    return dict(name=name, type='PairedImageDataset', dataroot_gt=str(root / name / 'HR'),
                dataroot_lq=str(root / name / 'LR_bicubic' / 'X2'), io_backend={'type': 'disk'})


def test_tables_from_a_tiny_real_run(tiny_sr_data, tmp_path):
    sr_root = tmp_path / 'datasets' / 'SR'
    prepare_sr.bicubic([str(SET5)], str(sr_root / 'Set5'), scales=[2], per_scale=True)

    train_opt = tiny_train_options(tiny_sr_data, 'train_tinyHAT_SRx2_iln', norm_type='iln', total_iter=2,
                                   type='HAT_iLN', compress_ratio=3, squeeze_factor=4)
    result = run_cli('train', write_yaml(tmp_path / 'train.yml', train_opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'train_tinyHAT_SRx2_iln'

    # The run's test options list Set5 (prepared) and Set14 (not prepared); the LN run was never trained.
    opts = tmp_path / 'test_options'
    opts.mkdir()
    test_opt = eval_options_from_train(train_opt, 'test_tinyHAT_SRx2_iln', tmp_path / 'unused.pth')
    test_opt['datasets'] = {'test_1': sr_test_set(sr_root, 'Set5'), 'test_2': sr_test_set(sr_root, 'Set14')}
    write_yaml(opts / 'test_tinyHAT_SRx2_iln.yml', test_opt)
    ln_opt = dict(test_opt, name='test_tinyHAT_SRx2_ln', network_g=dict(test_opt['network_g'], type='HAT', norm_type='ln'),
                  path=dict(test_opt['path'], pretrain_network_g=str(tmp_path / 'never_trained.pth')))
    ln_yml = write_yaml(tmp_path / 'test_ln.yml', ln_opt)

    out = tmp_path / 'tables'
    result = subprocess.run([sys.executable, str(REPO / 'scripts' / 'evaluate_tables.py'), f'HAT_dagger={exp}',
                             f'HAT_dagger={ln_yml}', '--test-options', str(opts), '--out', str(out)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / 'tables.csv', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))

    def cell(norm, dataset, metric, table='SR'):
        [row] = [r for r in rows if (r['table'], r['backbone'], r['norm'], r['level'], r['dataset'], r['metric']) ==
                 (table, 'HAT_dagger', norm, 'x2', dataset, metric)]
        return row

    psnr = cell('iln', 'Set5', 'psnr')
    assert psnr['status'] == 'ok' and 5 < float(psnr['ours']) < 60
    assert psnr['paper'] == published('6', 'HAT_dagger', 'x2', 'Set5', 'iln', 'psnr') == '38.65'
    assert float(psnr['delta']) == pytest.approx(float(psnr['ours']) - 38.65, abs=1e-5)
    assert cell('iln', 'Set5', 'ssim')['paper'] == published('6', 'HAT_dagger', 'x2', 'Set5', 'iln', 'ssim')
    assert cell('iln', 'Set14', 'psnr')['status'] == 'missing test set'
    assert cell('iln', 'Set14', 'psnr')['paper'] == ''  # the paper has no such value: left empty
    assert cell('iln', 'Urban100', 'psnr')['status'] == 'not in the test options'
    ln = cell('ln', 'Set5', 'psnr')
    assert ln['status'] == 'missing checkpoint' and ln['ours'] == '' and ln['paper'] == '38.63'
    assert cell('iln', 'Set5', 'psnr', table='2')['ours'] == psnr['ours']

    text = (out / 'tables.md').read_text()
    assert f"| HAT_dagger | iln | x2 | {float(psnr['ours']):.2f} / 38.65 (" in text
    assert '| HAT_1 | in | *no run* / 28.98 |' in text  # Table 1: published rows without a run stay visible
    for section in ('Table 1', 'Table 2', '## SR', '## DN', '## CAR'):
        assert section in text

    # The table's number is the test CLI's number for the same checkpoint and test set.
    cli_opt = dict(test_opt, name='cli_check', datasets={'test_1': sr_test_set(sr_root, 'Set5')},
                   path=dict(test_opt['path'], pretrain_network_g=str(exp / 'models' / 'net_g_latest.pth')))
    result = run_cli('test', write_yaml(tmp_path / 'cli.yml', cli_opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [record] = [json.loads(line) for line in (tmp_path / 'results' / 'cli_check' / 'metrics.jsonl').open()]
    assert record['psnr'] == pytest.approx(float(psnr['ours']), abs=1e-6)
