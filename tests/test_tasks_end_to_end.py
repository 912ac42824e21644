"""Denoising and JPEG artifact removal through the real train and test CLIs, from the generated option
files (options/train/SwinIR/*_colorDN_s25_iln.yml, *_grayCAR_q10_ln.yml and their test files) shrunk
to CPU size: a tiny network, a few iterations, small crops of real benchmark images from
../shared/datasets (skipped when that folder is absent)."""
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from basicsr.metrics import calculate_psnr
from basicsr.utils import tensor2img

from basicsr_iln.data.degraded_dataset import GaussianNoiseDataset, JPEGCompressionDataset
from basicsr_iln.metrics.psnrb_metric import calculate_psnrb
from basicsr_iln.utils.options import load_yaml_file
from helpers import REPO, SHARED_DATASETS, run_cli, write_yaml

METRICS = {'calculate_psnr': calculate_psnr, 'calculate_psnrb': calculate_psnrb}  # SSIM of the input: not needed
DN_SOURCE = SHARED_DATASETS / 'dn' / 'CBSD68'
CAR_SOURCE = SHARED_DATASETS / 'car' / 'classic5'
pytestmark = pytest.mark.skipif(not (DN_SOURCE.is_dir() and CAR_SOURCE.is_dir()),
                                reason='../shared/datasets (dn/CBSD68, car/classic5) not present')

TINY_NET = dict(embed_dim=12, depths=[2], num_heads=[2])  # window_size, img_range, in_chans stay as generated
PATCH_WINDOWS = 4  # training patch: 4 x 4 windows (32 px for the DN window 8, 28 px for the CAR window 7)
VAL_SIZE = 48
ITERS = 4


def write_crops(folder, sources, size, corners):
    """PNG crops (size x size) of real images, channels as stored (gray stays gray)."""
    folder.mkdir(parents=True)
    for path in sources:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        for j, (y, x) in enumerate(corners):
            cv2.imwrite(str(folder / f'{path.stem}_{j}.png'), img[y:y + size, x:x + size])
    return folder


def load_plain(rel):
    """A generated option file as read by the CLIs, as plain dicts (load_yaml_file gives OrderedDicts)."""
    return json.loads(json.dumps(load_yaml_file(str(REPO / rel))))


def tiny_train_options(rel, name, train_root, val_root):
    """The generated training file `rel`, with its data, network size, batch and schedule shrunk, from scratch
    (fine-tuning chains are tested in test_protocol.py)."""
    opt = load_plain(rel)
    opt.update(name=name, num_gpu=0)
    opt['path'].update(pretrain_network_g=None, strict_load_g=True)
    opt['path'].pop('param_key_g', None)
    opt['train']['global_batch_size'] = 2
    patch = PATCH_WINDOWS * opt['network_g']['window_size']
    opt['network_g'].update(TINY_NET, img_size=patch)
    train, val = opt['datasets']['train'], opt['datasets']['val']
    train.update(dataroot_gt=str(train_root), gt_size=patch, batch_size_per_gpu=2, num_worker_per_gpu=0)
    val.update(name='val_crops', dataroot_gt=str(val_root))
    opt['train'].update(total_iter=ITERS)
    opt['train']['scheduler']['milestones'] = [ITERS // 2]
    opt['val'].update(val_freq=ITERS // 2)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=ITERS // 2, use_tb_logger=False)
    return opt


def tiny_test_options(rel, name, train_opt, data_root, checkpoint):
    """The generated test file `rel` on the crops of its first test set, with the trained tiny network."""
    opt = load_plain(rel)
    first = opt['datasets']['test_1']
    opt.update(name=name, num_gpu=0, datasets={'test_1': dict(first, name='test_crops', dataroot_gt=str(data_root))})
    assert {k: v for k, v in opt['network_g'].items() if k not in TINY_NET and k != 'img_size'} == {
        k: v for k, v in train_opt['network_g'].items() if k not in TINY_NET and k != 'img_size'}
    opt['network_g'] = dict(train_opt['network_g'])
    opt['path']['pretrain_network_g'] = str(checkpoint)
    return opt


def records(folder):
    return [json.loads(line) for line in (folder / 'metrics.jsonl').read_text().splitlines()]


def train_and_test(tmp_path, task, train_opt, test_rel):
    result = run_cli('train', write_yaml(tmp_path / f'train_{task}.yml', train_opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = tmp_path / 'experiments' / train_opt['name']
    val_records = records(exp)
    assert [r['iter'] for r in val_records] == [ITERS // 2, ITERS] and {r['dataset'] for r in val_records} == {
        'val_crops'}

    test_opt = tiny_test_options(test_rel, f'test_{task}', train_opt, train_opt['datasets']['val']['dataroot_gt'],
                                 exp / 'models' / 'net_g_latest.pth')
    result = run_cli('test', write_yaml(tmp_path / f'test_{task}.yml', test_opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [test_record] = records(tmp_path / 'results' / test_opt['name'])
    assert test_record['dataset'] == 'test_crops'
    # The test CLI sees the same seeded degradations and the same EMA weights as the last validation.
    for metric in test_opt['val']['metrics']:
        assert test_record[metric] == pytest.approx(val_records[-1][metric], abs=1e-6), metric
    check_saved_outputs(tmp_path / 'results' / test_opt['name'], test_opt, test_record)
    return val_records, test_record, test_opt


def input_metrics(dataset_cls, dataset_opt, metrics):
    """Mean metrics of the degraded input itself against the clean image (the identity 'restoration'),
    computed the way IRModel computes them for a network output, plus the unclipped float PSNR."""
    dataset = dataset_cls(dict(dataset_opt, phase='val'))
    values = {name: [] for name, m in metrics.items() if m['type'] in METRICS}
    float_psnr = []
    for item in dataset:
        float_psnr.append(-10 * math.log10(float(((item['lq'] - item['gt'])**2).mean())))
        lq, gt = tensor2img(item['lq'].clone()), tensor2img(item['gt'].clone())  # tensor2img clamps in place
        for name in values:
            values[name].append(METRICS[metrics[name]['type']](lq, gt, crop_border=metrics[name]['crop_border'],
                                                               test_y_channel=metrics[name]['test_y_channel']))
    return {k: float(np.mean(v)) for k, v in values.items()}, float(np.mean(float_psnr))


def check_saved_outputs(results, test_opt, record):
    """The reported PSNR is that of the saved restored images against the clean crops, not against the
    degraded input: recompute both from the files."""
    dataset_opt = test_opt['datasets']['test_1']
    gray = dataset_opt.get('in_ch') == 1
    dataset = {'GaussianNoiseDataset': GaussianNoiseDataset, 'JPEGCompressionDataset': JPEGCompressionDataset}[
        dataset_opt['type']](dict(dataset_opt, phase='val'))
    vs_clean, vs_input = [], []
    for item in dataset:
        name = Path(item['gt_path']).stem
        [saved] = (results / 'visualization' / dataset_opt['name']).glob(f'{name}_*.png')
        out = cv2.imread(str(saved), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
        gt, lq = tensor2img(item['gt'].clone()), tensor2img(item['lq'].clone())
        vs_clean.append(calculate_psnr(out, gt, crop_border=0))
        vs_input.append(calculate_psnr(out, lq, crop_border=0))
    assert np.mean(vs_clean) == pytest.approx(record['psnr'], abs=1e-6)
    assert abs(np.mean(vs_input) - record['psnr']) > 1e-3


@pytest.mark.slow
def test_color_denoising_sigma25(tmp_path):
    sources = sorted(DN_SOURCE.glob('*.png'))
    train_root = write_crops(tmp_path / 'dn_train', sources[:3], 64, [(0, 0), (100, 100)])
    val_root = write_crops(tmp_path / 'dn_val', sources[-1:], VAL_SIZE, [(0, 0), (150, 150)])
    opt = tiny_train_options('options/train/SwinIR/train_SwinIR_colorDN_s25_iln.yml', 'dn_s25_iln', train_root,
                             val_root)
    assert opt['datasets']['val']['type'] == 'GaussianNoiseDataset' and opt['datasets']['val']['sigma'] == 25
    val_records, test_record, test_opt = train_and_test(tmp_path, 'dn', opt,
                                                       'options/test/SwinIR/test_SwinIR_colorDN_s25_iln.yml')
    assert set(test_record) >= {'psnr', 'ssim'} and 'psnrb' not in test_record

    identity, float_psnr = input_metrics(GaussianNoiseDataset, test_opt['datasets']['test_1'],
                                         test_opt['val']['metrics'])
    # Unclipped noise of sigma 25: PSNR of the noisy input is 20*log10(255/25) = 20.17 dB. The uint8
    # image a metric sees is clipped to [0, 255], which can only raise it (here by about 1 dB: dark and
    # bright regions clip), but never to the level of a denoiser.
    assert float_psnr == pytest.approx(20 * math.log10(255 / 25), abs=0.3)
    assert float_psnr - 0.05 < identity['psnr'] < float_psnr + 2.5
    print(f"noisy input {identity['psnr']:.2f} dB, tiny net after {ITERS} iterations {test_record['psnr']:.2f} dB")
    # A 4-iteration tiny network does not beat the noisy input yet (about 18 vs 21 dB); what is checked
    # is that its score compares its saved output with the clean crops (check_saved_outputs), is finite
    # and not that of a broken output (a constant image scores below 10 dB).
    assert 10 < test_record['psnr'] < 40 and 0 < test_record['ssim'] < 1


@pytest.mark.slow
def test_gray_jpeg_q10_reports_psnrb(tmp_path):
    sources = sorted(CAR_SOURCE.glob('*.png'))
    train_root = write_crops(tmp_path / 'car_train', sources[:4], 64, [(0, 0), (200, 200)])
    val_root = write_crops(tmp_path / 'car_val', sources[4:5], VAL_SIZE, [(13, 5), (300, 301)])
    opt = tiny_train_options('options/train/SwinIR/train_SwinIR_grayCAR_q10_ln.yml', 'car_q10_ln', train_root,
                             val_root)
    assert opt['network_g']['in_chans'] == 1 and opt['network_g']['window_size'] == 7
    val_records, test_record, test_opt = train_and_test(tmp_path, 'car', opt,
                                                       'options/test/SwinIR/test_SwinIR_grayCAR_q10_ln.yml')
    for record in (*val_records, test_record):
        assert set(record) >= {'psnr', 'ssim', 'psnrb'}
        assert record['psnrb'] <= record['psnr'] + 1e-9  # the blocking term is never negative
        assert 5 < record['psnr'] < 60 and 0 < record['ssim'] < 1

    identity, _ = input_metrics(JPEGCompressionDataset, test_opt['datasets']['test_1'], test_opt['val']['metrics'])
    print(f'JPEG q10 input: PSNR {identity["psnr"]:.2f} dB, PSNR-B {identity["psnrb"]:.2f} dB; tiny net: PSNR '
          f'{test_record["psnr"]:.2f} dB, PSNR-B {test_record["psnrb"]:.2f} dB')
    # Quality 10 leaves visible 8x8 blocks: PSNR-B of the JPEG input is clearly below its PSNR.
    assert identity['psnrb'] < identity['psnr'] - 0.2
    assert 20 < identity['psnr'] < 40
