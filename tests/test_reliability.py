"""Crash safety: kill -9 and --auto_resume, atomic and pruned checkpoints, non-finite losses, archived
experiment folders, option checks of the reliability options."""
import re
import signal
import subprocess
import time

import basicsr_iln  # noqa: F401  (before basicsr)
import pytest
import torch
from basicsr.models import build_model
from basicsr.utils import make_exp_dirs

from basicsr_iln.utils import checkpoint
from basicsr_iln.utils.checkpoint import (atomic_torch_save, complete_checkpoint_iters, find_resume_state,
                                         latest_complete_state, prepare_resume, prune_checkpoints, resume_position)
from basicsr_iln.utils.errors import ConfigError, NonFiniteTrainingError
from basicsr_iln.utils.network_config import build_network_checked
from basicsr_iln.utils.options import check_options, parse_options
from helpers import cli_command, eval_options_from_train, run_cli, tiny_train_options, write_yaml

TOTAL_ITER = 60
ITERS_PER_EPOCH = 4  # 8 training crops, batch 2


def same(a, b):
    """Deep equality of nested dicts/lists of tensors and plain values (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def crash_options(data, name, **logger):
    """Fast training (a tiny SwinIR with drop-path, so the torch RNG matters), a checkpoint every 3 iters."""
    opt = tiny_train_options(data, name, total_iter=TOTAL_ITER, embed_dim=8, num_heads=[2])
    opt['datasets']['train']['gt_size'] = 16
    del opt['datasets']['val'], opt['val']
    opt['logger'].update(save_checkpoint_freq=3, **logger)
    return opt


def read_log(exp):
    [log] = exp.glob('train_*.log')
    return log.read_text()


@pytest.fixture
def start_training(tmp_path):
    """Starts the train CLI in the background (its log file has everything); kills what is left at the end."""
    started = []

    def start(opt_path):
        cmd, env = cli_command('train', opt_path, tmp_path)
        started.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_kill_9_then_auto_resume_continues_exactly(tiny_sr_data, tmp_path, start_training):
    """A run killed with SIGKILL and resumed ends with the very weights of an uninterrupted run."""
    crash_yml = write_yaml(tmp_path / 'crash.yml', crash_options(tiny_sr_data, 'crash'))
    ref_yml = write_yaml(tmp_path / 'ref.yml', crash_options(tiny_sr_data, 'ref', keep_last_checkpoints=2))
    reference = start_training(ref_yml)
    crashed = start_training(crash_yml)
    exp = tmp_path / 'experiments' / 'crash'
    deadline = time.time() + 240
    while not (exp / 'training_states' / '3.state').exists() and crashed.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    crashed.send_signal(signal.SIGKILL)
    assert crashed.wait() == -signal.SIGKILL, 'the run ended before it could be killed'

    complete = complete_checkpoint_iters(exp / 'models', exp / 'training_states')
    assert complete and complete[-1] < TOTAL_ITER
    n = complete[-1]
    logged_lr = float(re.findall(rf'iter:\s+{n}, lr:\(([^,]+),\)', read_log(exp))[0])

    # What the resumed model holds right after resuming equals what the checkpoint of iter n stores.
    opt, _ = parse_options(str(tmp_path), is_train=True, argv=['-opt', str(crash_yml), '--auto_resume'])
    state = prepare_resume(opt)
    path = opt['path']['resume_state']
    assert path == str(exp / 'training_states' / f'{n}.state')
    model = build_model(opt)
    model.resume_training(state)
    stored = torch.load(exp / 'models' / f'net_g_{n}.pth', weights_only=True)
    assert same(model.get_bare_model(model.net_g).state_dict(), stored['params'])
    assert same(model.net_g_ema.state_dict(), stored['params_ema'])
    assert same(model.optimizers[0].state_dict(), torch.load(path, weights_only=True)['optimizers'][0])
    assert model.optimizers[0].state_dict()['state']  # Adam moments, not a fresh optimizer
    assert f'{model.get_current_learning_rate()[0]:.3e}' == f'{logged_lr:.3e}'

    stale = exp / 'models' / '.tmp_killed_mid_write.pth'  # what a kill during atomic_torch_save leaves
    stale.write_bytes(b'truncated')
    result = run_cli('train', crash_yml, tmp_path, '--auto_resume')
    assert result.returncode == 0, result.stderr[-3000:]
    assert not stale.exists() and f'Removed {stale}' in result.stderr
    epoch, done = divmod(n, ITERS_PER_EPOCH)
    assert f'Resuming training from epoch {epoch}, iter {n} ({done} batches into the epoch)' in result.stderr
    assert re.search(rf'iter:\s+{TOTAL_ITER}, lr', result.stderr)
    assert not list((tmp_path / 'experiments').glob('crash_archived_*'))  # resumed in place

    assert reference.wait(timeout=300) == 0
    ref = tmp_path / 'experiments' / 'ref'
    assert same(torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True),
                torch.load(ref / 'models' / 'net_g_latest.pth', weights_only=True))
    # logger.keep_last_checkpoints: 2 kept the two newest pairs and the latest weights.
    last = TOTAL_ITER - TOTAL_ITER % 3
    assert sorted(p.name for p in (ref / 'models').iterdir()) == [f'net_g_{last - 3}.pth', f'net_g_{last}.pth',
                                                                   'net_g_latest.pth']
    assert sorted(p.name for p in (ref / 'training_states').iterdir()) == [f'{last - 3}.state', f'{last}.state']


def test_resume_position_continues_mid_epoch_or_at_the_next_one():
    assert resume_position({'epoch': 2, 'iter': 9}, 4) == (2, 1)
    assert resume_position({'epoch': 2, 'iter': 12}, 4) == (3, 0)


def test_interrupted_atomic_save_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / 'net_g_5.pth'
    atomic_torch_save({'w': torch.ones(2)}, target)
    good = target.read_bytes()

    def dies_mid_write(obj, f):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt  # a BaseException, like the signal a user sends

    monkeypatch.setattr(checkpoint.torch, 'save', dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({'w': torch.zeros(2)}, target)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({'w': torch.zeros(2)}, tmp_path / 'net_g_6.pth')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['net_g_5.pth']  # no temporary file, no net_g_6.pth
    assert target.read_bytes() == good


def test_prune_checkpoints_keeps_the_newest_complete_pairs(tmp_path):
    models, states = tmp_path / 'models', tmp_path / 'training_states'
    models.mkdir()
    states.mkdir()
    for it in (2, 4, 6):
        (models / f'net_g_{it}.pth').touch()
        (states / f'{it}.state').touch()
    (models / 'net_g_1.pth').touch()  # half of an old pair
    (models / 'net_g_8.pth').touch()  # half of a newer pair (killed between the two writes)
    (models / 'net_g_latest.pth').touch()
    assert prune_checkpoints(models, states, keep=3) == []
    prune_checkpoints(models, states, keep=2)
    assert sorted(p.name for p in models.iterdir()) == ['net_g_4.pth', 'net_g_6.pth', 'net_g_8.pth',
                                                        'net_g_latest.pth']
    assert sorted(p.name for p in states.iterdir()) == ['4.state', '6.state']
    prune_checkpoints(models, states, keep=1)
    assert complete_checkpoint_iters(models, states) == [6]
    with pytest.raises(ValueError):
        prune_checkpoints(models, states, keep=0)



def test_auto_resume_picks_the_latest_complete_readable_state(tmp_path, capsys):
    models, states = tmp_path / 'models', tmp_path / 'training_states'
    models.mkdir()
    states.mkdir()
    for it in (3, 6, 9):
        atomic_torch_save({'iter': it}, states / f'{it}.state')
    (models / 'net_g_3.pth').touch()
    (models / 'net_g_6.pth').touch()
    (models / 'net_g_12.pth').touch()  # its state was never written
    opt = {'auto_resume': True, 'rank': 0, 'path': {'models': str(models), 'training_states': str(states)}}
    assert find_resume_state(opt) == (str(states / '6.state'), {'iter': 6})  # 9 has no network file
    state = (states / '6.state').read_bytes()
    (states / '6.state').write_bytes(state[:len(state) // 2])  # cut short outside our atomic writes
    assert latest_complete_state(opt) == (str(states / '3.state'), {'iter': 3})
    assert 'Skipping unreadable training state' in capsys.readouterr().out
    (states / '3.state').unlink()
    assert find_resume_state(opt) == (None, None)

@pytest.fixture
def model(tiny_sr_data, tmp_path):
    """An IRModel built from tiny training options, with nonfinite_patience 3."""
    opt = tiny_train_options(tiny_sr_data, 'unit', embed_dim=8, num_heads=[2])
    opt['train']['nonfinite_patience'] = 3
    opt, _ = parse_options(str(tmp_path), is_train=True, argv=['-opt', str(write_yaml(tmp_path / 'u.yml', opt))])
    make_exp_dirs(opt)
    return build_model(opt)



def batch(nan=False):
    gen = torch.Generator().manual_seed(0)
    lq = torch.rand(2, 3, 8, 8, generator=gen)
    if nan:
        lq[0, 0, 0, 0] = float('nan')
    return {'lq': lq, 'gt': torch.rand(2, 3, 16, 16, generator=gen)}


def snapshot(model):
    return {'net': {k: v.clone() for k, v in model.get_bare_model(model.net_g).state_dict().items()},
            'ema': {k: v.clone() for k, v in model.net_g_ema.state_dict().items()},
            'optim': {'state': {k: {n: t.clone() for n, t in s.items()}
                                for k, s in model.optimizers[0].state_dict()['state'].items()}}}


def train_step(model, it, nan=False):
    model.feed_data(batch(nan))
    model.optimize_parameters(it)


def test_nan_loss_is_skipped_and_logged(model, warnings):
    train_step(model, 1)
    before = snapshot(model)
    train_step(model, 2, nan=True)
    assert same(snapshot(model), before)  # no weight, EMA or Adam moment changed
    model.get_current_log()
    assert 'non-finite l_pix at iter 2 (1 in a row); step skipped' in warnings.text
    train_step(model, 3)
    model.get_current_log()
    assert model.nonfinite_streak == 0
    assert not same(snapshot(model)['net'], before['net'])


def test_nan_gradient_is_named(model, warnings):
    weight = model.get_bare_model(model.net_g).conv_first.weight
    weight.register_hook(lambda grad: grad * float('nan'))
    before = snapshot(model)
    train_step(model, 1)
    model.get_current_log()
    assert 'non-finite gradients at iter 1 (1 in a row, first in conv_first.weight); step skipped' in warnings.text
    assert same(snapshot(model)['net'], before['net'])


@pytest.mark.parametrize('read', ['log', 'save'])
def test_nonfinite_patience_stops_training(model, read):
    """Steps skipped on the device are counted when their checks are read back: with the log, or before a
    checkpoint is written (and then none is)."""
    for it in (1, 2, 3):
        train_step(model, it, nan=True)
    with pytest.raises(NonFiniteTrainingError, match=r'non-finite l_pix at iter 3 \(3 in a row\).*nonfinite_patience'):
        model.get_current_log() if read == 'log' else model.save(0, 3)
    assert complete_checkpoint_iters(model.opt['path']['models'], model.opt['path']['training_states']) == []


def test_nan_weights_are_never_saved(model):
    with torch.no_grad():
        model.net_g_ema.conv_first.bias[0] = float('inf')
    with pytest.raises(NonFiniteTrainingError, match='net_g_ema has non-finite weights .*conv_first.bias.* iter 5'):
        model.save(0, 5)
    assert complete_checkpoint_iters(model.opt['path']['models'], model.opt['path']['training_states']) == []


@pytest.mark.slow
def test_cli_stops_on_consecutive_nan_losses(tiny_sr_data, tmp_path):
    """A NaN loss weight makes every loss non-finite: steps are skipped and logged, training stops after
    train.nonfinite_patience of them with one error line, and the checkpoint written meanwhile is finite."""
    opt = tiny_train_options(tiny_sr_data, 'diverge', total_iter=10)
    opt['train']['pixel_opt']['loss_weight'] = float('nan')
    opt['train']['nonfinite_patience'] = 3
    del opt['datasets']['val'], opt['val']
    result = run_cli('train', write_yaml(tmp_path / 'nan.yml', opt), tmp_path)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        'error: non-finite l_pix at iter 3 (3 in a row); step skipped; stopping after 3 consecutive')
    exp = tmp_path / 'experiments' / 'diverge'
    log = read_log(exp)
    assert 'non-finite l_pix at iter 1 (1 in a row); step skipped' in log
    assert sorted(p.name for p in (exp / 'models').iterdir()) == ['net_g_2.pth']  # no net_g_latest.pth
    saved = torch.load(exp / 'models' / 'net_g_2.pth', weights_only=True)
    assert all(torch.isfinite(v).all() for key in ('params', 'params_ema') for v in saved[key].values())


@pytest.mark.slow
def test_rerun_archives_the_experiment_folder(tiny_sr_data, tmp_path):
    opt = tiny_train_options(tiny_sr_data, 'again', total_iter=1)
    del opt['datasets']['val'], opt['val']
    old = tmp_path / 'experiments' / 'again'
    old.mkdir(parents=True)
    (old / 'results_of_last_week.txt').write_text('precious')
    result = run_cli('train', write_yaml(tmp_path / 'again.yml', opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [archived] = (tmp_path / 'experiments').glob('again_archived_*')
    assert (archived / 'results_of_last_week.txt').read_text() == 'precious'
    assert (old / 'models' / 'net_g_latest.pth').is_file()
    assert not (old / 'results_of_last_week.txt').exists()


@pytest.mark.slow
def test_rerun_archives_the_results_folder(tiny_sr_data, tmp_path):
    train_opt = tiny_train_options(tiny_sr_data, 'net')
    torch.save({'params_ema': build_network_checked(train_opt['network_g']).state_dict()}, tmp_path / 'net.pth')
    old = tmp_path / 'results' / 'eval'
    old.mkdir(parents=True)
    (old / 'metrics.jsonl').write_text('{"psnr": 99}\n')
    test_yml = write_yaml(tmp_path / 'test.yml', eval_options_from_train(train_opt, 'eval', tmp_path / 'net.pth'))
    result = run_cli('test', test_yml, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [archived] = (tmp_path / 'results').glob('eval_archived_*')
    assert (archived / 'metrics.jsonl').read_text() == '{"psnr": 99}\n'
    assert '"psnr": 99' not in (old / 'metrics.jsonl').read_text()


@pytest.mark.parametrize('key, value, message', [
    (('logger', 'keep_last_checkpoints'), 0, "'logger.keep_last_checkpoints' must be > 0"),
    (('train', 'nonfinite_patience'), 1.5, "'train.nonfinite_patience' must be an integer"),
    (('train', 'optim_g', 'lr'), float('nan'), "'train.optim_g.lr' must be a finite number"),
])
def test_reliability_options_are_checked(tiny_sr_data, key, value, message):
    opt = tiny_train_options(tiny_sr_data, 'opts')
    node = opt
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_options(opt, is_train=True, opt_path='opts.yml')
