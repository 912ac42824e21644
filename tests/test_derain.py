"""Deraining (Table 2(b)): the synthetic-rain builder, the deraining Y metric against hand-computed values,
BasicSR's PairedImageDataset at scale 1, the pair checker (prepare_derain.py) and the download table, Table 2(b)
in evaluate_tables.py, and one tiny run through the real train and test CLIs from the generated option files,
then the inference CLI and the table script on its checkpoint."""
import csv
import json
import math
import shutil
import sys
import zipfile

import cv2
import numpy as np
import pytest
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.metrics import calculate_psnr, calculate_ssim

from basicsr_iln import infer
from basicsr_iln.metrics.matlab_y_metric import calculate_psnr_matlab_y, calculate_ssim_matlab_y, matlab_y
from basicsr_iln.utils.checks import check_datasets
from basicsr_iln.utils.errors import ConfigError
from helpers import REPO, real_photos, run_cli, write_yaml
from synthetic_rain import add_rain, tiles, write_rain_set
from test_tasks_end_to_end import load_plain

sys.path.insert(0, str(REPO / 'scripts' / 'data_preparation'))
sys.path.insert(0, str(REPO / 'scripts'))
import download_datasets  # noqa: E402
import evaluate_tables  # noqa: E402
import prepare_derain  # noqa: E402

C1 = (0.01 * 255)**2  # SSIM's constant K1 L squared, L = 255
TINY_NET = dict(embed_dim=12, depths=[2], num_heads=[2])
ITERS = 4


def rain_set(folder, size=48, per_photo=1, seed=0):
    return write_rain_set(folder, tiles(real_photos(), size, per_photo), seed)


def images(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*.png'))}


# ----------------------------------------------------------------------------- synthetic rain
def test_synthetic_rain_is_deterministic_and_only_lightens(tmp_path):
    first, second = rain_set(tmp_path / 'a'), rain_set(tmp_path / 'b')
    assert images(first) == images(second) and len(images(first)) == 2 * len(real_photos())
    for rainy_path in sorted((first / 'input').glob('*.png')):
        rainy, clean = cv2.imread(str(rainy_path)), cv2.imread(str(first / 'target' / rainy_path.name))
        assert rainy.shape == clean.shape and (rainy >= clean).all()  # streaks lighten, never darken
        streaked = (rainy != clean).any(axis=2).mean()
        assert 0.01 < streaked < 0.5 and 15 < calculate_psnr_matlab_y(rainy, clean, 0) < 45
    assert images(rain_set(tmp_path / 'c', seed=1)) != images(first)  # the seed decides the streaks


# ----------------------------------------------------------------------------- metric
def uniform(value, size=16):
    return np.full((size, size, 3), value, np.uint8)


def test_deraining_metrics_against_hand_computed_values():
    # Gray 100 and 110: Y = 16 + 219 v / 255 = 101.88 and 110.47, rounded to 102 and 110 as MATLAB's uint8
    # rgb2ycbcr does; BasicSR's test_y_channel keeps the unrounded difference 219 * 10 / 255 = 8.588.
    gray100, gray110 = uniform(100), uniform(110)
    assert matlab_y(gray100)[0, 0] == 102 and matlab_y(gray110)[0, 0] == 110
    assert calculate_psnr_matlab_y(gray100, gray110, 0) == pytest.approx(20 * math.log10(255 / 8), abs=1e-9)
    assert calculate_psnr(gray100, gray110, 0, test_y_channel=True) == pytest.approx(
        20 * math.log10(255 / (219 * 10 / 255)), abs=1e-4)  # 29.45 dB instead of 30.07 dB
    # SSIM of two flat images: only the luminance term, (2 mu1 mu2 + C1) / (mu1^2 + mu2^2 + C1).
    assert calculate_ssim_matlab_y(gray100, gray110, 0) == pytest.approx(
        (2 * 102 * 110 + C1) / (102**2 + 110**2 + C1), abs=1e-12)
    # Channel order: BGR in, as IRModel passes it. Pure red 200 has Y = 16 + 65.481 * 200 / 255 = 67.36 -> 67,
    # black has Y 16: a difference of 51 (blue 200 would give Y 36).
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 2] = 200
    assert calculate_psnr_matlab_y(red, np.zeros_like(red), 0) == pytest.approx(20 * math.log10(5), abs=1e-9)
    with pytest.raises(ValueError, match='uint8'):
        calculate_psnr_matlab_y(gray100.astype(np.float32), gray110, 0)


def rounded_y(img):
    """The integer Y of a uint8 BGR image, written independently of matlab_y."""
    return np.floor(img.astype(np.float64) @ np.array([24.966, 128.553, 65.481]) / 255 + 16 + 0.5)


def test_deraining_metrics_differ_from_basicsr_y_only_by_rounding():
    clean = tiles(real_photos()[:1], 96, 1)[0]
    rainy = add_rain(clean, np.random.default_rng(0))
    ours, basicsr = calculate_psnr_matlab_y(rainy, clean, 0), calculate_psnr(rainy, clean, 0, test_y_channel=True)
    assert ours == pytest.approx(calculate_psnr(rounded_y(rainy), rounded_y(clean), 0), abs=1e-9)
    assert calculate_ssim_matlab_y(rainy, clean, 0) == pytest.approx(
        calculate_ssim(rounded_y(rainy), rounded_y(clean), 0), abs=1e-12)
    print(f'synthetic rain: {ours:.4f} dB (MATLAB Y) vs {basicsr:.4f} dB (BasicSR test_y_channel)')
    assert 0 < abs(ours - basicsr) < 0.2


# ----------------------------------------------------------------------------- dataset at scale 1
def test_paired_image_dataset_serves_deraining_at_scale_1(tmp_path):
    root = rain_set(tmp_path / 'Rain', size=64)

    def options(phase, **extra):  # fresh each time: the dataset pops io_backend.type from its options
        return dict(name='rain', type='PairedImageDataset', dataroot_gt=str(root / 'target'),
                    dataroot_lq=str(root / 'input'), io_backend={'type': 'disk'}, scale=1, phase=phase, **extra)

    item = PairedImageDataset(options('train', gt_size=32, use_hflip=True, use_rot=True))[0]
    assert item['lq'].shape == item['gt'].shape == (3, 32, 32)
    # the same window of both images: rain only lightens, so the input is >= the target at every pixel
    assert (item['lq'] >= item['gt'] - 1e-6).all() and (item['lq'] == item['gt']).float().mean() > 0.5
    whole = PairedImageDataset(options('val'))[0]
    assert whole['lq'].shape == whole['gt'].shape == (3, 64, 64)

    # A pair of different sizes is refused before training by the CLIs' checks (scale 1: equal sizes).
    cv2.imwrite(str(root / 'input' / 'img00.png'), cv2.imread(str(root / 'input' / 'img00.png'))[:60])
    with pytest.raises(ConfigError, match=r"LQ 'img00.png' is 64x60 but GT 'img00.png' is 64x64"):
        check_datasets({'scale': 1, 'network_g': {'in_chans': 3}, 'datasets': {'val': options('val')}})


# ----------------------------------------------------------------------------- pair checker, download table
def test_pair_checker_reports_every_bad_pair_and_links_nothing(tmp_path, capsys):
    good, bad = rain_set(tmp_path / 'Rain100L'), rain_set(tmp_path / 'Test100', size=32, per_photo=2)
    (bad / 'target' / 'img00.png').unlink()
    shutil.move(bad / 'input' / 'img01.png', bad / 'input' / 'img01.jpg')
    cv2.imwrite(str(bad / 'input' / 'img02.png'), cv2.imread(str(bad / 'input' / 'img02.png'))[:, :30])
    (bad / 'target' / 'img03.png').write_bytes(b'not a png')
    cv2.imwrite(str(bad / 'input' / 'img04.png'), np.zeros((32, 32, 3), np.uint16))
    out = tmp_path / 'DR'
    with pytest.raises(ConfigError, match=r'^5 problem\(s\) in 2 set\(s\); nothing linked$'):
        prepare_derain.main([str(good), str(bad), '--output', str(out)])
    errors = capsys.readouterr().err.strip().splitlines()
    assert not out.exists()
    assert errors[0] == f'error: {bad}: input/img00.png has no target/img00.png'
    assert errors[1] == (f'error: {bad}: input/img01.jpg and target/img01.png differ in their extension: a pair '
                         'needs one file name')
    assert errors[2] == f'error: {bad}: pair img02.png: input is 30x32 but target is 32x32 (must be equal)'
    assert errors[3].startswith(f"error: {bad}: pair img03.png: cannot read image '{bad / 'target' / 'img03.png'}'")
    assert errors[4].startswith(f"error: {bad}: pair img04.png: input: image '{bad / 'input' / 'img04.png'}' has "
                                'more than 8 bits per channel')
    assert len(errors) == 5

    prepare_derain.main([str(good), '--output', str(out)])
    assert (out / 'Rain100L').is_symlink() and (out / 'Rain100L').resolve() == good.resolve()
    assert f'{good}: {len(real_photos())} pairs, all good' in capsys.readouterr().out
    with pytest.raises(ConfigError, match='exists'):
        prepare_derain.main([str(good), '--output', str(out)])
    prepare_derain.main([str(out / 'Rain100L'), '--output', str(out), '--overwrite'])  # its own entry, re-linked
    assert (out / 'Rain100L').resolve() == good.resolve()


def test_download_table_has_the_deraining_sets_in_restormers_layout(tmp_path, capsys):
    assert download_datasets.resolve(['Derain']) == ['Rain13K_train', 'Rain13K_test']
    assert download_datasets.resolve(['Test100', 'Rain100H']) == ['Rain13K_test']
    test_source = download_datasets.SOURCES['Rain13K_test']
    assert set(test_source.pair_dirs) == {'Rain100H', 'Rain100L', 'Test100', 'Test1200', 'Test2800'}
    # The test archive as Restormer's download_data.py unpacks it (here one set of it), made locally:
    pairs = rain_set(tmp_path / 'made' / 'test' / 'Rain100L')
    archive = tmp_path / 'root' / test_source.filename
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, 'w') as zf:
        for path in sorted(pairs.rglob('*.png')):
            zf.write(path, path.relative_to(tmp_path / 'made').as_posix())
    download_datasets.extract(str(archive), str(archive.parent))
    capsys.readouterr()
    download_datasets.main(['Rain100L', '--root', str(archive.parent)])  # already unpacked: no download
    printed = capsys.readouterr().out
    assert f"Rain100L: input/ and target/ pairs in {archive.parent / 'test' / 'Rain100L'}\n" in printed
    assert 'Rain100H: input/ and target/ pairs in' in printed and 'NOT FOUND' in printed  # not in this archive
    assert prepare_derain.bad_pairs(str(archive.parent / 'test' / 'Rain100L')) == []


# ----------------------------------------------------------------------------- Table 2(b)
def derain_record(backbone, norm, dataset, psnr, ssim):
    return dict(task='DR', color='color', level=evaluate_tables.DERAIN_LEVEL, dataset=dataset, backbone=backbone,
                norm=norm, run='test.yml', checkpoint='net.pth', status='ok', metrics={'psnr': psnr, 'ssim': ssim})


def table_rows(out, table):
    with open(out / 'tables.csv', encoding='utf-8') as f:
        return {(r['backbone'], r['norm'], r['dataset'], r['metric']): r for r in csv.DictReader(f)
                if r['table'] == table}


def test_table_2b_has_the_published_values_and_deltas(tmp_path):
    assert evaluate_tables.dataset_task({'type': 'PairedImageDataset'}, 1) == ('DR', 'color', '-')
    records = [derain_record('SwinIR_1', 'iln', 'Test100', 29.5, 0.89),
               derain_record('SwinIR_1', 'ln', 'Test100', 27.0, 0.87)]
    evaluate_tables.write_tables(records, evaluate_tables.load_published(), tmp_path, 'cmd', False)
    rows = table_rows(tmp_path, '2b')
    iln = rows[('SwinIR_1', 'iln', 'Test100', 'psnr')]
    assert (iln['ours'], iln['paper'], iln['paper_table']) == ('29.500000', '29.87', '2')
    assert float(iln['delta']) == pytest.approx(29.5 - 29.87)
    assert float(rows[('SwinIR_1', 'ln', 'Test100', 'ssim')]['delta']) == pytest.approx(0.87 - 0.8766)
    # HAT_1's published row stays visible without a run, and every set of either backbone has its cell
    hat = rows[('HAT_1', 'iln', 'Rain100L', 'psnr')]
    assert (hat['status'], hat['paper']) == ('no run', '36.20')
    assert rows[('SwinIR_1', 'iln', 'Rain100H', 'psnr')]['status'] == 'not in the test options'
    assert len(rows) == 2 * 5 * 2 * 2  # backbones x sets x norms x metrics
    text = (tmp_path / 'tables.md').read_text()
    assert '## Table 2(b): deraining' in text and 'MATLAB' in text
    assert '| SwinIR_1 | Test100 | 27.00 / 27.45 (-0.45) | 0.8700 / 0.8766 (-0.0066) | 29.50 / 29.87 (-0.37) |' in text
    assert '| HAT_1 | Rain100L | *no run* / 34.35 | *no run* / 0.9471 | *no run* / 36.20 | *no run* / 0.9641 |' in text
    assert not [r for r in table_rows(tmp_path, '2').values() if r['task'] == 'DR']  # not repeated in Table 2


# ----------------------------------------------------------------------------- real CLIs
def shrunk(opt, checkpoint=None):
    """A generated deraining option file at CPU size: tiny network, CPU, few iterations, same data paths."""
    opt['num_gpu'] = 0
    patch = 4 * opt['network_g']['window_size']
    opt['network_g'].update(TINY_NET, img_size=patch)
    if checkpoint is None:
        train = opt['datasets']['train']
        train.update(gt_size=patch, batch_size_per_gpu=2, num_worker_per_gpu=0, dataset_enlarge_ratio=1)
        opt['train'].update(total_iter=ITERS, global_batch_size=2)
        opt['train']['scheduler']['milestones'] = [ITERS // 2]
        opt['val']['val_freq'] = ITERS // 2
        opt['logger'].update(print_freq=1, save_checkpoint_freq=ITERS // 2, use_tb_logger=False)
    else:
        opt['path']['pretrain_network_g'] = str(checkpoint)
    return opt


def metric_records(folder):
    return [json.loads(line) for line in (folder / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.slow
def test_deraining_trains_tests_infers_and_fills_table_2b(tmp_path, monkeypatch):
    photos = real_photos()
    made = tmp_path / 'made'
    sets = [write_rain_set(made / 'Rain13K', tiles(photos[:4], 64, 2), seed=0),
            write_rain_set(made / 'Rain100L', tiles(photos[-2:], 48, 1), seed=1),
            write_rain_set(made / 'Test100', tiles(photos[-3:-1], 40, 1), seed=2)]
    prepare_derain.main([*map(str, sets), '--output', str(tmp_path / 'datasets' / 'DR')])  # the generated paths

    stem = 'SwinIR-S_Derain_iln'
    train_opt = shrunk(load_plain(f'options/train/SwinIR/train_{stem}.yml'))
    result = run_cli('train', write_yaml(tmp_path / 'train.yml', train_opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / 'experiments' / f'train_{stem}'
    val_records = metric_records(experiment)
    assert [(r['iter'], r['dataset']) for r in val_records] == [(2, 'Rain100L'), (4, 'Rain100L')]

    # The generated test file, on the two sets made here (its own checkpoint path, relative as generated).
    test_opt = shrunk(load_plain(f'options/test/SwinIR/test_{stem}.yml'),
                      checkpoint=f'experiments/train_{stem}/models/net_g_latest.pth')
    full_test_opt = json.loads(json.dumps(test_opt))
    test_opt['datasets'] = {k: d for k, d in test_opt['datasets'].items() if d['name'] in ('Rain100L', 'Test100')}
    result = run_cli('test', write_yaml(tmp_path / 'test.yml', test_opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / 'results' / f'test_{stem}'
    tested = {r['dataset']: r for r in metric_records(results)}
    assert tested['Rain100L']['psnr'] == pytest.approx(val_records[-1]['psnr'], abs=1e-6)  # same EMA weights
    # The scores are those of the saved outputs against the targets, by the deraining metric.
    for name, record in tested.items():
        saved = sorted((results / 'visualization' / name).glob('*.png'))
        targets = [cv2.imread(str(made / name / 'target' / f"{p.name.split('_', 1)[0]}.png")) for p in saved]
        scores = [calculate_psnr_matlab_y(cv2.imread(str(p)), t, 0) for p, t in zip(saved, targets)]
        assert len(saved) == 2 and np.mean(scores) == pytest.approx(record['psnr'], abs=1e-6)
        assert 10 < record['psnr'] < 60 and 0 < record['ssim'] < 1

    # basicsr-iln-infer on a folder: the network decides the task (upscale 1): the test CLI's outputs, same size.
    out = tmp_path / 'derained'
    infer.main(['--opt', str(tmp_path / 'test.yml'), '-c', str(experiment / 'models' / 'net_g_latest.pth'),
                '-i', str(made / 'Test100' / 'input'), '-o', str(out), '--device', 'cpu'])
    for rainy_path in sorted((made / 'Test100' / 'input').glob('*.png')):
        derained = cv2.imread(str(out / rainy_path.name))
        [from_test_cli] = (results / 'visualization' / 'Test100').glob(f'{rainy_path.stem}_*.png')
        assert derained.shape == cv2.imread(str(rainy_path)).shape
        assert np.abs(derained.astype(int) - cv2.imread(str(from_test_cli)).astype(int)).max() <= 1

    # Table 2(b) from the run (the generated test file: three of its five sets are missing here).
    (tmp_path / 'test_options').mkdir()
    write_yaml(tmp_path / 'test_options' / f'test_{stem}.yml', full_test_opt)
    monkeypatch.chdir(tmp_path)
    evaluate_tables.main([f'SwinIR_1={experiment}', '--test-options', 'test_options', '--out', 'tables'])
    rows = table_rows(tmp_path / 'tables', '2b')
    cell = rows[('SwinIR_1', 'iln', 'Test100', 'psnr')]
    assert float(cell['ours']) == pytest.approx(tested['Test100']['psnr'], abs=1e-6) and cell['paper'] == '29.87'
    assert float(cell['delta']) == pytest.approx(tested['Test100']['psnr'] - 29.87, abs=1e-5)
    assert rows[('SwinIR_1', 'iln', 'Rain100H', 'psnr')]['status'] == 'missing test set'
    assert rows[('SwinIR_1', 'ln', 'Test100', 'psnr')]['status'] == 'no run'
