"""DDP on CPU (gloo, 2 processes): ranks stay identical, only rank 0 writes, gradients are averaged over
the global batch, distributed validation and testing equal a single-process run, and every rank
resumes from the same state. The backend and device follow ``num_gpu`` (CUDA faked, no process group)."""
import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

from basicsr_iln.train import build_model  # basicsr_iln before basicsr (see compat.py)
from basicsr_iln.utils.checkpoint import find_resume_state
from basicsr_iln.utils.dist import close_dist
from basicsr_iln.utils.errors import ConfigError
from basicsr_iln.utils.options import parse_options
from helpers import (REPO, eval_options_from_train, run_cli, run_python, start_ranks, tiny_train_options,
                     write_yaml)

# The slow tests run real CLIs or several processes; one xdist worker builds the module's DDP run.
pytestmark = pytest.mark.xdist_group('distributed')

NPROC = 2
ENTRY = REPO / 'tests' / 'ddp_entry.py'
BATCH = 2  # per process in the gradient test


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def rank_env(workdir, **extra):
    return dict(os.environ, BASICSR_ILN_ROOT=str(workdir), PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', **extra)


def torchrun(script, *args, workdir):
    """``python -m torch.distributed.run --nproc_per_node=2 script args``, one thread per process."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={NPROC}', f'--master_port={free_port()}',
           str(script), *map(str, args)]
    result = subprocess.run(cmd, cwd=workdir, env=rank_env(workdir), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def run_ranks(script, *args, workdir, envs):
    """``script args`` as one forked process per environment of ``envs`` (helpers.run_python), all at once."""
    with ThreadPoolExecutor(max_workers=len(envs)) as pool:
        results = list(pool.map(lambda env: run_python([script, *args], cwd=workdir, env=env), envs))
    for result in results:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def torchrun_like(script, *args, workdir):
    """What torchrun starts (one process per rank with the rendezvous variables it sets), as forks of this
    process: ``ddp_train`` runs the real launcher once; the other runs skip its imports."""
    port = str(free_port())
    run_ranks(script, *args, workdir=workdir, envs=[
        rank_env(workdir, MASTER_ADDR='127.0.0.1', MASTER_PORT=port, RANK=str(r), LOCAL_RANK=str(r),
                 WORLD_SIZE=str(NPROC), LOCAL_WORLD_SIZE=str(NPROC)) for r in range(NPROC)])


def read_metrics(folder):
    return [json.loads(line) for line in (folder / 'metrics.jsonl').read_text().splitlines()]


def load_ranks(dump_dir):
    return [torch.load(dump_dir / f'rank{r}.pt', weights_only=True) for r in range(NPROC)]


def assert_ranks_hold_checkpoint(ranks, checkpoint):
    ckpt = torch.load(checkpoint, weights_only=True)
    for rank, held in enumerate(ranks):
        for net, key in (('net_g', 'params'), ('net_g_ema', 'params_ema')):
            assert held[net].keys() == ckpt[key].keys()
            for name, value in held[net].items():
                assert torch.equal(value, ckpt[key][name]), (rank, net, name)


@pytest.fixture(scope='module')
def ddp_data(tiny_sr_data, tmp_path_factory):
    """``tiny_sr_data`` with a third validation image, so that 2 ranks split the set unevenly."""
    root = tmp_path_factory.mktemp('ddp_data')
    for split in ('train', 'val'):
        shutil.copytree(tiny_sr_data / split, root / split)
    for sub in ('HR', 'LR_x2'):
        shutil.copy(tiny_sr_data / 'train' / sub / 'img00.png', root / 'val' / sub / 'img02.png')
    return root


@pytest.fixture(scope='module')
def ddp_train(ddp_data, tmp_path_factory):
    """4 iterations of the real training CLI under torchrun, 2 processes, batch 2 per process."""
    work = tmp_path_factory.mktemp('ddp_train')
    opt = tiny_train_options(ddp_data, 'ddp', total_iter=4)
    opt['logger']['use_tb_logger'] = True
    yml = write_yaml(work / 'train.yml', opt)
    (work / 'dumps').mkdir()
    torchrun(ENTRY, work / 'dumps', '-opt', yml, '--launcher', 'pytorch', workdir=work)
    return SimpleNamespace(work=work, opt=opt, yml=yml, exp=work / 'experiments' / 'ddp',
                           ranks=load_ranks(work / 'dumps'))


@pytest.fixture(scope='module')
def single_process_metrics(ddp_train):
    """The 1-process test CLI on the final checkpoint of ``ddp_train`` (its validation set)."""
    test_opt = eval_options_from_train(ddp_train.opt, 'single', ddp_train.exp / 'models' / 'net_g_latest.pth')
    result = run_cli('test', write_yaml(ddp_train.work / 'single.yml', test_opt), ddp_train.work)
    assert result.returncode == 0, result.stderr[-3000:]
    [record] = read_metrics(ddp_train.work / 'results' / 'single')
    return record


@pytest.mark.slow
def test_ddp_training_keeps_ranks_identical_and_writes_once(ddp_train, single_process_metrics):
    exp = ddp_train.exp
    # Ranks start from different seeds (seed + rank), yet hold the same net_g and EMA after training.
    assert_ranks_hold_checkpoint(ddp_train.ranks, exp / 'models' / 'net_g_latest.pth')
    for epoch in (0, 1):  # each epoch, disjoint halves of the 8 training images
        shards = [set(r['shards'][epoch]) for r in ddp_train.ranks]
        assert len(shards[0]) == len(shards[1]) == 4 and not shards[0] & shards[1]
    rngs = torch.load(exp / 'training_states' / '4.state', weights_only=True)['rng_per_rank']
    assert len(rngs) == NPROC and not torch.equal(rngs[0]['torch'], rngs[1]['torch'])  # per-rank augmentation

    # Rank 0 is the only writer: one experiment folder, one checkpoint set, one log, one metrics file.
    assert [p.name for p in (ddp_train.work / 'experiments').iterdir()] == ['ddp']
    assert sorted(p.name for p in exp.iterdir() if p.is_file() and not p.name.endswith('.log')) == [
        'metrics.jsonl', 'train.yml']
    assert len(list(exp.glob('train_ddp_*.log'))) == 1
    assert sorted(p.name for p in (exp / 'models').iterdir()) == ['net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth']
    assert sorted(p.name for p in (exp / 'training_states').iterdir()) == ['2.state', '4.state']
    assert len(list((ddp_train.work / 'tb_logger').rglob('events.out.tfevents.*'))) == 1
    assert sorted(p.name for p in (exp / 'visualization').rglob('*')
                  if p.is_file()) == sorted(f'img0{i}_{it}.png' for i in range(3) for it in (2, 4))
    records = read_metrics(exp)
    assert [r['iter'] for r in records] == [2, 4]
    # The split validation (2 + 1 images) equals a single-process evaluation of the checkpoint.
    for metric in ('psnr', 'ssim'):
        assert records[-1][metric] == pytest.approx(single_process_metrics[metric], abs=1e-9)


@pytest.mark.slow
def test_distributed_test_cli_equals_single_process(ddp_train, single_process_metrics):
    work = ddp_train.work
    test_opt = eval_options_from_train(ddp_train.opt, 'dist', ddp_train.exp / 'models' / 'net_g_latest.pth')
    torchrun_like(REPO / 'basicsr_iln' / 'test.py', '-opt', write_yaml(work / 'dist.yml', test_opt), '--launcher',
                  'pytorch', workdir=work)
    results = work / 'results' / 'dist'
    [record] = read_metrics(results)
    for metric in ('psnr', 'ssim'):  # averaged over the 3 images, not over the 2 ranks' means
        assert record[metric] == pytest.approx(single_process_metrics[metric], abs=1e-9)
    assert sorted(p.name for p in results.rglob('*.png')) == ['img00_dist.png', 'img01_dist.png', 'img02_dist.png']
    assert len(list(results.glob('test_dist_*.log'))) == 1


@pytest.mark.slow
def test_slurm_launcher_test_cli_equals_single_process(ddp_train, single_process_metrics, tmp_path):
    """``srun ... --launcher slurm`` with 2 tasks, imitated: SLURM's variables and an ``scontrol`` stub."""
    (tmp_path / 'bin').mkdir()
    scontrol = tmp_path / 'bin' / 'scontrol'
    scontrol.write_text('#!/bin/sh\necho 127.0.0.1\n')
    scontrol.chmod(0o755)
    test_opt = eval_options_from_train(ddp_train.opt, 'slurm', ddp_train.exp / 'models' / 'net_g_latest.pth')
    base = dict(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", MASTER_PORT=str(free_port()), SLURM_NTASKS=str(NPROC),
                SLURM_NODELIST='node[1-2]', SLURM_NTASKS_PER_NODE=str(NPROC))
    run_ranks(REPO / 'basicsr_iln' / 'test.py', '-opt', write_yaml(tmp_path / 'slurm.yml', test_opt), '--launcher',
              'slurm', workdir=tmp_path,
              envs=[rank_env(tmp_path, **base, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)) for r in range(NPROC)])
    [record] = read_metrics(tmp_path / 'results' / 'slurm')
    for metric in ('psnr', 'ssim'):
        assert record[metric] == pytest.approx(single_process_metrics[metric], abs=1e-9)


@pytest.mark.slow
def test_auto_resume_restarts_every_rank_from_the_same_state(ddp_train, tmp_path):
    exp = tmp_path / 'experiments' / 'ddp'
    shutil.copytree(ddp_train.exp, exp)
    (exp / 'models' / 'net_g_4.pth').unlink()  # state 4 without its network: not a complete pair
    (tmp_path / 'dumps').mkdir()
    torchrun_like(ENTRY, tmp_path / 'dumps', '-opt', ddp_train.yml, '--launcher', 'pytorch', '--auto_resume',
                  '--force_yml', 'train:total_iter=6', workdir=tmp_path)
    ranks = load_ranks(tmp_path / 'dumps')
    assert [r['resumed_iter'] for r in ranks] == [2] * NPROC
    assert_ranks_hold_checkpoint(ranks, exp / 'models' / 'net_g_latest.pth')
    assert [r['iter'] for r in read_metrics(exp)] == [2, 4, 4, 6]
    assert sorted(p.name for p in (exp / 'training_states').iterdir()) == ['2.state', '4.state', '6.state']


def first_step(opt_path, root, batch, *flags):
    """Build the IRModel through the CLI's option parsing, take one training step on ``batch`` of a
    fixed set of samples, and return the model with the gradients of that step."""
    opt, _ = parse_options(str(root), is_train=True, argv=['-opt', str(opt_path), *flags])
    model = build_model(opt)
    gen = torch.Generator().manual_seed(0)
    lq, gt = torch.rand(NPROC * BATCH, 3, 16, 16, generator=gen), torch.rand(NPROC * BATCH, 3, 32, 32, generator=gen)
    model.feed_data({'lq': lq[batch], 'gt': gt[batch]})
    model.optimize_parameters(1)
    grads = {name: p.grad.clone() for name, p in model.get_bare_model(model.net_g).named_parameters()}
    return model, opt, grads


def spawned_rank(rank, port, opt_path, root, folder_views, out_dir):
    """One DDP rank (gloo): first-step gradient on its slice of the batch, then the auto-resume choice
    when this rank's view of the checkpoint folders is ``folder_views[rank]``."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(NPROC))
    torch.set_num_threads(1)
    model, opt, grads = first_step(opt_path, root, slice(rank * BATCH, (rank + 1) * BATCH), '--launcher', 'pytorch')
    opt['auto_resume'] = True
    opt['path'].update(training_states=str(folder_views[rank]), models=str(folder_views[rank]))
    path, state = find_resume_state(opt)
    torch.save({'grads': grads, 'resume': (path, state and state['iter'])}, out_dir / f'rank{rank}.pt')
    close_dist()


@pytest.fixture(scope='module')
def spawned(tiny_sr_data, tmp_path_factory):
    """2 ranks started with torch.multiprocessing; rank 0 sees a complete checkpoint at iter 3,
    rank 1 an empty folder (as a stale network file-system view would)."""
    work = tmp_path_factory.mktemp('spawned')
    # No stochastic depth: its random draws differ between the ranks and the reference run.
    opt_path = write_yaml(work / 'train.yml', tiny_train_options(tiny_sr_data, 'spawned', drop_path_rate=0.0))
    complete, stale = work / 'complete', work / 'stale'
    complete.mkdir(), stale.mkdir()
    torch.save({'iter': 3}, complete / '3.state')
    (complete / 'net_g_3.pth').touch()
    start_ranks(spawned_rank, (free_port(), opt_path, work, [complete, stale], work), NPROC)
    return SimpleNamespace(work=work, opt_path=opt_path, complete=complete, ranks=load_ranks(work))


@pytest.mark.slow
def test_ddp_gradient_equals_single_process_double_batch(spawned):
    _, _, full = first_step(spawned.opt_path, spawned.work, slice(0, NPROC * BATCH))
    _, _, half = first_step(spawned.opt_path, spawned.work, slice(0, BATCH))
    assert any(not torch.allclose(half[n], full[n], rtol=1e-3, atol=1e-6) for n in full)  # the check can fail
    for rank in spawned.ranks:
        assert rank['grads'].keys() == full.keys()
        for name, grad in rank['grads'].items():
            torch.testing.assert_close(grad, full[name], rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.slow
def test_auto_resume_choice_is_rank0s(spawned):
    expected = (str(spawned.complete / '3.state'), 3)
    assert [tuple(r['resume']) for r in spawned.ranks] == [expected] * NPROC


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with 2 GPUs, faked: CUDA is available, and ``torch.cuda.set_device`` and
    ``init_process_group`` are recorded instead of run (no process group is made). LOCAL_RANK is 3."""
    calls = SimpleNamespace(devices=[], groups=[])
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'set_device', calls.devices.append)
    monkeypatch.setattr(torch.distributed, 'init_process_group', lambda **kwargs: calls.groups.append(kwargs))
    monkeypatch.setenv('LOCAL_RANK', '3')
    return calls


def parse_launched(tmp_path, launcher='pytorch', **options):
    """parse_options of the tiny training options updated with ``options``, under ``--launcher``."""
    opt = dict(tiny_train_options(tmp_path, 'backend'), **options)
    return parse_options(str(tmp_path), is_train=True,
                         argv=['-opt', str(write_yaml(tmp_path / 'train.yml', opt)), '--launcher', launcher])[0]


@pytest.mark.parametrize('num_gpu, dist_params, backend, devices', [
    (0, None, 'gloo', []),  # a CPU run on a machine with GPUs: gloo (nccl cannot reduce CPU tensors), no GPU
    ('auto', None, 'nccl', [1]),  # every GPU: nccl, the GPU of local rank 3 of 2
    (1, None, 'nccl', [1]),
    (1, {'backend': 'gloo'}, 'gloo', [1]),  # gloo asked for on GPUs: still the local rank's GPU
])
def test_backend_and_device_follow_num_gpu(fake_cuda, tmp_path, num_gpu, dist_params, backend, devices):
    opt = parse_launched(tmp_path, num_gpu=num_gpu, dist_params=dist_params)
    assert opt['num_gpu'] == (2 if num_gpu == 'auto' else num_gpu) and opt['dist'] is True
    assert [group['backend'] for group in fake_cuda.groups] == [backend]
    assert fake_cuda.devices == devices


def test_nccl_for_a_cpu_run_is_refused(fake_cuda, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_launched(tmp_path, num_gpu=0, dist_params={'backend': 'nccl'})
    assert str(err.value).startswith("option 'dist_params.backend' is 'nccl' but the run trains on CPU (option "
                                     "'num_gpu' is 0): nccl needs CUDA devices; set 'dist_params.backend: gloo'")
    assert "set 'num_gpu' to auto or a GPU count" in str(err.value)
    assert fake_cuda.groups == [] and fake_cuda.devices == []  # refused before anything starts


def test_nccl_without_cuda_is_refused(fake_cuda, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    for launcher in ('pytorch', 'slurm'):  # before the SLURM environment is read
        with pytest.raises(ConfigError, match=r"option 'dist_params\.backend' is 'nccl' but the run trains on CPU "
                                              r"\(CUDA is not available\): nccl needs CUDA devices"):
            parse_launched(tmp_path, launcher, num_gpu='auto', dist_params={'backend': 'nccl'})
    assert fake_cuda.groups == [] and fake_cuda.devices == []


def test_no_launcher_makes_no_process_group(fake_cuda, tmp_path):
    opt = parse_launched(tmp_path, 'none', num_gpu=0, dist_params={'backend': 'nccl'})
    assert opt['dist'] is False and (opt['rank'], opt['world_size']) == (0, 1)
    assert fake_cuda.groups == [] and fake_cuda.devices == []
