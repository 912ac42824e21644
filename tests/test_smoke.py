"""``--smoke`` (basicsr_iln/utils/smoke.py) and the quieter console: every training option file becomes a small
run of the same setting on local data, the real CLI trains it end to end under ``<name>_smoke``, a missing data
source is one error line, the option and network dumps go to the log file only, and the ETA is never negative."""
import io
import json
import logging
import re
import time
from pathlib import Path

import basicsr_iln  # noqa: F401  (before basicsr)
import cv2
import pytest
import torch
import yaml
from basicsr.utils.registry import ARCH_REGISTRY

from basicsr_iln import train
from basicsr_iln.utils.console import ProgressLogger, log_network, quiet_console
from basicsr_iln.utils.options import check_options, load_yaml_file
from basicsr_iln.utils.smoke import CACHE, ITERATIONS, NETWORK, smoke_options
from helpers import REPO, SHARED_DATASETS, main_error_line, real_photos, run_cli

TRAIN_FILES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / 'options' / 'train').rglob('train_*.yml'))
KEPT_NETWORK_KEYS = ('type', 'norm_type', 'stdnorm', 'eps', 'window_size', 'upsampler', 'upscale', 'in_chans')
SR_FILE = 'options/train/SwinIR/train_SwinIR_SRx2_iln.yml'
DN_FILE = 'options/train/DRCT/train_DRCT_grayDN_s25_iln.yml'  # fine-tunes from the s15 run
HAT_FILE = 'options/train/HAT/train_HAT_grayCAR_q20_ln.yml'  # full-size HAT: its channel ratios get capped


@pytest.fixture(scope='module')
def smoke_workdir(tmp_path_factory):
    """A working directory with local data as a user has it: ../shared beside it when this clone has one,
    else quickstart-style photo folders (datasets/quickstart/{train,val}/HR)."""
    root = tmp_path_factory.mktemp('smoke')
    work = root / 'work'
    work.mkdir()
    if SHARED_DATASETS.is_dir():
        (root / 'shared').symlink_to(SHARED_DATASETS.parent, target_is_directory=True)
    else:
        for split, photos in (('train', real_photos()), ('val', real_photos()[:2])):
            folder = work / 'datasets' / 'quickstart' / split / 'HR'
            folder.mkdir(parents=True)
            for i, photo in enumerate(photos):
                cv2.imwrite(str(folder / f'photo{i}.png'), photo)
    return work


def needs_rain_pairs(rel):
    return '_Derain_' in rel


@pytest.mark.parametrize('rel', [rel for rel in TRAIN_FILES if not needs_rain_pairs(rel)])
def test_every_training_file_becomes_a_valid_small_run(rel, smoke_workdir, monkeypatch):
    monkeypatch.chdir(smoke_workdir)
    original = load_yaml_file(str(REPO / rel))
    opt, changes = smoke_options(load_yaml_file(str(REPO / rel)), rel)
    resolved = check_options(opt, True, rel)  # every key it sets is a declared one
    assert resolved['name'] == original['name'] + '_smoke'
    assert f"name: {original['name']} -> {original['name']}_smoke" in changes
    changed_keys = [line.split(': ', 1)[0] for line in changes]
    assert len(changed_keys) == len(set(changed_keys))  # one line per changed key
    net, kept = opt['network_g'], original['network_g']
    assert all(net.get(k) == kept.get(k) for k in KEPT_NETWORK_KEYS)
    assert net['embed_dim'] == NETWORK['embed_dim'] and net['depths'] == NETWORK['depths']
    assert resolved['train']['total_iter'] == ITERATIONS == resolved['val']['val_freq']
    assert resolved['logger']['save_checkpoint_freq'] == ITERATIONS
    assert resolved['path'].get('pretrain_network_g') is None
    assert resolved['train']['optim_g'] == check_options(original, True, rel)['train']['optim_g']  # the rest is kept
    scale, gt_size = resolved['scale'], resolved['datasets']['train']['gt_size']
    assert gt_size % (scale * net['window_size']) == 0
    for dataset in resolved['datasets'].values():
        assert dataset['dataroot_gt'].startswith(CACHE) and Path(dataset['dataroot_gt']).is_dir()
        if 'dataroot_lq' in dataset:
            assert Path(dataset['dataroot_lq']).name == f'LR_x{scale}'
            for hr in Path(dataset['dataroot_gt']).iterdir():
                lr = cv2.imread(str(Path(dataset['dataroot_lq']) / hr.name))
                assert lr.shape[0] * scale == cv2.imread(str(hr)).shape[0] >= gt_size
    ARCH_REGISTRY.get(net['type'])(**{k: v for k, v in net.items() if k != 'type'})  # a valid (small) network
    if ARCH_REGISTRY.get(net['type']).family != 'HAT':  # only HAT's channel attention needs capped ratios
        assert not any(line.startswith(('network_g.compress_ratio', 'network_g.squeeze_factor')) for line in changes)


def test_deraining_without_local_pairs_names_the_folders(smoke_workdir, monkeypatch, capsys):
    monkeypatch.chdir(smoke_workdir)
    err = main_error_line(train.main, ['-opt', str(REPO / 'options/train/HAT/train_HAT-mini_Derain_iln.yml'),
                                       '--smoke'], capsys)
    assert 'no local image pairs for datasets.train' in err and 'datasets/DR/Rain13K/target' in err


def test_no_local_data_is_one_error_naming_what_was_looked_for(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no ../shared, no datasets/quickstart
    err = main_error_line(train.main, ['-opt', str(REPO / SR_FILE), '--smoke'], capsys)
    assert 'no local images for datasets.train' in err
    assert '../shared/datasets/train/Sun_Hays80' in err and 'datasets/quickstart/train/HR' in err
    assert 'make_quickstart_dataset.py' in err and not (tmp_path / 'datasets').exists()


# The tests reading the three --smoke runs: slow, and on one xdist worker, which makes the runs once.
def reads_smoke_runs(test):
    return pytest.mark.slow(pytest.mark.xdist_group('smoke_runs')(test))


@pytest.fixture(scope='module')
def smoke_runs(smoke_workdir):
    """{option file: (CompletedProcess, experiment folder)} of the real train CLI with --smoke."""
    runs = {}
    for rel in (SR_FILE, DN_FILE, HAT_FILE):
        started = time.time()
        result = run_cli('train', REPO / rel, smoke_workdir, '--smoke', timeout=240)
        print(f'{rel}: {time.time() - started:.1f} s')
        runs[rel] = result, smoke_workdir / 'experiments' / f'{Path(rel).stem}_smoke'
    return runs


@reads_smoke_runs
@pytest.mark.parametrize('rel', [SR_FILE, DN_FILE, HAT_FILE])
def test_smoke_trains_validates_and_checkpoints_under_its_own_name(rel, smoke_runs):
    result, exp = smoke_runs[rel]
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'--smoke: name: {Path(rel).stem} -> {Path(rel).stem}_smoke' in result.stderr
    assert re.search(r'--smoke: network_g\.embed_dim: \d+ -> 24', result.stderr)
    assert re.search(r'--smoke: datasets\.train\.dataroot_gt: \S+ -> datasets/cache/smoke/', result.stderr)
    assert (exp / 'models' / f'net_g_{ITERATIONS}.pth').is_file() and (exp / 'models' / 'net_g_latest.pth').is_file()
    assert (exp / 'training_states' / f'{ITERATIONS}.state').is_file()
    assert json.loads((exp / 'metrics.jsonl').read_text().splitlines()[-1])['iter'] == ITERATIONS
    assert not (exp.parent / Path(rel).stem).exists()  # the real run's folder is never made
    # The paper's files page-lock their batches for the GPU; a CPU run does not (torch would warn it has none).
    assert yaml.safe_load((REPO / rel).read_text())['datasets']['train']['pin_memory'] is True
    assert 'pin_memory' not in result.stderr


def _console_and_log(run):
    result, exp = run
    [log] = exp.glob('train_*.log')
    return result.stdout + result.stderr, log.read_text()


@reads_smoke_runs
def test_option_dump_goes_to_the_log_file_only_and_the_eta_ends_at_zero(smoke_runs):
    console, log = _console_and_log(smoke_runs[SR_FILE])
    assert 'network_g:[' in log and 'network_g:[' not in console  # dict2str's layout of the options
    assert 'Start training from epoch 0, iter 0.' in console and 'Validation Set5' in console  # the rest is shown
    assert 'eta: -' not in log
    assert re.search(rf'iter:\s+{ITERATIONS}, .*\[eta: 0:00:00,', console)


@reads_smoke_runs
def test_network_dump_goes_to_the_log_file_only(smoke_runs):
    console, log = _console_and_log(smoke_runs[SR_FILE])
    assert 'SwinIR_iLN(' in log and 'Network: SwinIR_iLN, with parameters:' in console
    assert 'SwinIR_iLN(' not in console


@pytest.fixture
def console_and_file(tmp_path):
    """BasicSR's logger with a console handler (a StringIO) and a log file, made quiet; removed afterwards."""
    logger = logging.getLogger('basicsr')
    console, log_file = io.StringIO(), tmp_path / 'run.log'
    handlers = [logging.StreamHandler(console), logging.FileHandler(log_file)]
    level = logger.level
    logger.setLevel(logging.INFO)
    for handler in handlers:
        logger.addHandler(handler)
    quiet_console(logger)
    yield console, log_file
    for handler in handlers:
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level)


def test_log_network_keeps_the_dump_off_the_console(console_and_file):
    console, log_file = console_and_file
    net = torch.nn.Sequential(torch.nn.Linear(2, 3))
    log_network(net, net)
    log_network(torch.nn.DataParallel(net), net)
    shown, written = console.getvalue(), log_file.read_text()
    assert 'Network: Sequential, with parameters: 9' in shown and 'Network: DataParallel - Sequential' in shown
    assert 'Linear(in_features=2' in written and 'Linear(in_features=2' not in shown


def test_eta_is_zero_at_the_last_iteration_never_negative(console_and_file):
    console, _ = console_and_file
    opt = {'name': 'eta', 'logger': {'print_freq': 1, 'use_tb_logger': False}, 'train': {'total_iter': 3}}
    progress = ProgressLogger(opt, start_iter=0)
    for it in (1, 2, 3):
        progress.start_time = time.time() - 2.0 * it  # 2 s per iteration
        progress({'epoch': 0, 'iter': it, 'lrs': [1e-4], 'time': 2.0, 'data_time': 0.0})
    etas = re.findall(r'eta: ([^,]+),', console.getvalue())
    assert etas[-1] == '0:00:00' and not any(eta.startswith('-') for eta in etas), etas


def test_deraining_uses_crops_of_the_files_own_pairs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo = real_photos()[0]
    for split in ('Rain13K', 'Rain100L'):
        for sub, img in (('target', photo), ('input', 255 - photo)):
            folder = tmp_path / 'datasets' / 'DR' / split / sub
            folder.mkdir(parents=True)
            for i in range(2):
                cv2.imwrite(str(folder / f'rain-{i}.jpg'), img)
    rel = 'options/train/SwinIR/train_SwinIR-S_Derain_iln.yml'
    opt, changes = smoke_options(load_yaml_file(str(REPO / rel)), rel)
    resolved = check_options(opt, True, rel)
    for dataset in resolved['datasets'].values():
        target, rainy = Path(dataset['dataroot_gt']), Path(dataset['dataroot_lq'])
        assert (target.name, rainy.name) == ('target', 'input') and target.parent == rainy.parent
        assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in rainy.iterdir()) == \
            ['rain-0.png', 'rain-1.png']
    assert any(line.startswith('datasets.val.dataroot_lq: datasets/DR/Rain100L/input -> datasets/cache/smoke/Rain100L_')
               for line in changes)
