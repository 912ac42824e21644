"""scripts/evaluate_tables.py on a tiny real run: Set5 evaluated, published values from docs/paper_results.csv,
a missing test set and a missing checkpoint reported in their cells; Table 8 from synthetic analysis.jsonl files."""
import csv
import json
import sys

import pytest

from helpers import REPO, SHARED_DATASETS, eval_options_from_train, run_cli, run_python, tiny_train_options, write_yaml

sys.path.insert(0, str(REPO / 'scripts' / 'data_preparation'))
sys.path.insert(0, str(REPO / 'scripts'))
import evaluate_tables  # noqa: E402
import prepare_sr  # noqa: E402

SET5 = SHARED_DATASETS / 'sr' / 'Set5'


def published(table, backbone, level, dataset, norm, metric):
    with open(REPO / 'docs' / 'paper_results.csv', encoding='utf-8') as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith('#')))
    [row] = [r for r in rows if (r['table'], r['backbone'], r['scale_or_level'], r['dataset'], r['norm'],
                                 r['metric']) == (table, backbone, level, dataset, norm, metric)]
    return row['value']


def sr_test_set(root, name):
    return dict(name=name, type='PairedImageDataset', dataroot_gt=str(root / name / 'HR'),
                dataroot_lq=str(root / name / 'LR_bicubic' / 'X2'), io_backend={'type': 'disk'})


@pytest.mark.slow
@pytest.mark.skipif(not SET5.is_dir(), reason='needs ../shared/datasets/sr/Set5')
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
    result = run_python([REPO / 'scripts' / 'evaluate_tables.py', f'HAT_dagger={exp}', f'HAT_dagger={ln_yml}',
                         '--test-options', opts, '--out', out], cwd=tmp_path, timeout=600)
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

    # In channels_last only the convolutions' summation order changes: the same PSNR to far below the table's digits.
    nhwc = tmp_path / 'tables_nhwc'
    result = run_python([REPO / 'scripts' / 'evaluate_tables.py', f'HAT_dagger={exp}', '--test-options', opts,
                         '--out', nhwc, '--channels-last'], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(nhwc / 'tables.csv', encoding='utf-8') as f:
        [nhwc_psnr] = [r for r in csv.DictReader(f) if (r['table'], r['norm'], r['dataset'], r['metric'], r['status'])
                       == ('SR', 'iln', 'Set5', 'psnr', 'ok')]
    assert float(nhwc_psnr['ours']) == pytest.approx(float(psnr['ours']), abs=1e-3)
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


def experiment_with_dynamics(root, name, norm_type, probes, grad_clip_norm=None):
    """An experiment folder as a training run with ``analysis`` leaves it (copied training options, a
    checkpoint, analysis.jsonl with group magnitudes ``probes`` = {iter: [per layer]}), and its test options."""
    exp = root / 'experiments' / f'train_{name}'
    (exp / 'models').mkdir(parents=True)
    (exp / 'models' / 'net_g_latest.pth').touch()  # never loaded: its test set is missing
    write_yaml(exp / f'train_{name}.yml', {'name': f'train_{name}', 'train': {'grad_clip_norm': grad_clip_norm}})
    records = [{'iter': it, 'norm_type': norm_type,
                'layers': [{'name': f'layers.{g}', 'kind': 'group', 'magnitude': m} for g, m in enumerate(values)]}
               for it, values in probes.items()]
    (exp / 'analysis.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
    test_set = dict(sr_test_set(root / 'absent', 'Set14'), dataroot_lq=str(root / 'absent' / 'LR'))
    write_yaml(root / 'test_options' / f'test_{name}.yml', {
        'name': f'test_{name}', 'model_type': 'IRModel', 'scale': 4, 'num_gpu': 0, 'datasets': {'test_1': test_set},
        'network_g': {'type': 'HAT', 'norm_type': norm_type, 'upscale': 4}, 'path': {'pretrain_network_g': None},
        'val': {'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}}}})
    return exp


def test_table8_reports_the_largest_feature_magnitude_of_each_run(tmp_path):
    (tmp_path / 'test_options').mkdir()
    runs = [experiment_with_dynamics(tmp_path, 'ln', 'ln', {1: [4.0, 9.0], 500: [2e4, 7.5e5], 1000: [3e4, 6e5]}),
            experiment_with_dynamics(tmp_path, 'clip', 'ln', {1: [4.0, 9.0], 1000: [5e5, 1e5]}, grad_clip_norm=0.01),
            experiment_with_dynamics(tmp_path, 'iln', 'iln', {1: [0.3, 1.1], 1000: [0.2, 0.9]})]
    out = tmp_path / 'tables'
    evaluate_tables.main([*(f'HAT_1={exp}' for exp in runs), '--test-options', str(tmp_path / 'test_options'),
                          '--out', str(out)])
    with open(out / 'tables.csv', encoding='utf-8') as f:
        rows = [r for r in csv.DictReader(f) if r['table'] == '8']
    cells = {r['norm']: r for r in rows}
    assert sorted(cells) == ['iln', 'ln', 'ln+grad_clip']
    assert [(r['backbone'], r['level'], r['dataset'], r['status']) for r in rows] == [('HAT_1', 'x4', '-', 'ok')] * 3
    assert {n: float(r['ours']) for n, r in cells.items()} == {'ln': 7.5e5, 'ln+grad_clip': 5e5, 'iln': 1.1}
    assert {n: r['paper'] for n, r in cells.items()} == {'ln': '5.8e6', 'ln+grad_clip': '5.6e6', 'iln': '1.2'}
    assert cells['ln']['detail'].startswith('layers.1 at iter 500 (')
    assert float(cells['iln']['delta']) == pytest.approx(1.1 - 1.2)

    text = (out / 'tables.md').read_text()
    assert '## Table 8: max feature magnitude during training' in text and 'the mean of x^2' in text
    assert '| SR | color | HAT_1 | ln | x4 | 7.5e+05 / 5.8e6 (-5.05e+06) |' in text
    # The clipped run's test sets are its own rows too, not the plain LN run's.
    assert '| HAT_1 | ln+grad_clip | x4 | *not in the test options* | *not in the test options* | *missing test set* |' \
           in text
