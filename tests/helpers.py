"""Test helpers: tiny real-image datasets, tiny option files, and running the real CLIs in a subprocess."""
import functools
import gzip
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import basicsr_iln  # noqa: F401  (before basicsr)
import cv2
import numpy as np
import pytest
import yaml
from basicsr.utils.matlab_functions import imresize

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / 'shared' / 'datasets'
SHARED_LAYOUTS = REPO.parent / 'shared' / 'reference' / 'state_dict_layouts.json'
# A copy of ../shared/reference/state_dict_layouts.json (keys, shapes and kwargs of the released checkpoints
# of SwinIR, HAT, DRCT and the official i-LN release; no weights), so the layout tests run on any clone;
# written by `python scripts/make_reference_data.py layouts`.
LAYOUTS_COPY = REPO / 'tests' / 'data' / 'state_dict_layouts.json.gz'


@functools.lru_cache(maxsize=None)
def reference_layouts():
    """{entry: {type, kwargs, num_params, state_dict: {key: shape}}} of every released configuration."""
    return json.loads(gzip.decompress(LAYOUTS_COPY.read_bytes()))


def real_photos():
    """Real RGB uint8 (BGR) photos: Set5 when ../shared is present, else scikit-image's bundled ones."""
    set5 = SHARED_DATASETS / 'sr' / 'Set5'
    if set5.is_dir():
        return [cv2.imread(str(p)) for p in sorted(set5.glob('*.png'))]
    from skimage import data
    return [np.ascontiguousarray(getattr(data, n)()[..., ::-1]) for n in ('astronaut', 'chelsea', 'coffee', 'rocket')]


def write_sr_pairs(folder, crops, scale):
    (folder / 'HR').mkdir(parents=True)
    (folder / f'LR_x{scale}').mkdir()
    for i, hr in enumerate(crops):
        lr = np.clip(np.round(imresize(hr.astype(np.float64) / 255.0, 1 / scale) * 255.0), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / 'HR' / f'img{i:02d}.png'), hr)
        cv2.imwrite(str(folder / f'LR_x{scale}' / f'img{i:02d}.png'), lr)


def tiny_train_options(data_root, name, norm_type='iln', total_iter=4, **network):
    """A complete training option dict for a tiny SwinIR_iLN on ``tiny_sr_data``."""
    net = dict(type='SwinIR_iLN', norm_type=norm_type, upscale=2, in_chans=3, img_size=16, window_size=4,
               img_range=1.0, depths=[2], embed_dim=12, num_heads=[2], mlp_ratio=2, upsampler='pixelshuffle')
    net.update(network)
    pair = lambda split: dict(dataroot_gt=str(data_root / split / 'HR'), dataroot_lq=str(data_root / split / 'LR_x2'),
                              io_backend=dict(type='disk'))
    return {
        'name': name, 'model_type': 'IRModel', 'scale': 2, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': dict(name='tiny_train', type='PairedImageDataset', gt_size=32, use_hflip=True, use_rot=True,
                          num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=1, **pair('train')),
            'val': dict(name='tiny_val', type='PairedImageDataset', **pair('val')),
        },
        'network_g': net,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.9, 'optim_g': {'type': 'Adam', 'lr': 2e-4, 'betas': [0.9, 0.99]},
            'scheduler': {'type': 'MultiStepLR', 'milestones': [2], 'gamma': 0.5}, 'total_iter': total_iter,
            'warmup_iter': -1, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}
        },
        'val': {'val_freq': 2, 'save_img': True, 'metrics': {
            'psnr': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': True},
            'ssim': {'type': 'calculate_ssim', 'crop_border': 2, 'test_y_channel': True}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }


def eval_options_from_train(train_opt, name, checkpoint):
    """Test options evaluating ``checkpoint`` on the validation set of ``train_opt``."""
    val = dict(train_opt['datasets']['val'], name='tiny_test')
    return {'name': name, 'model_type': 'IRModel', 'scale': train_opt['scale'], 'num_gpu': 0,
            'datasets': {'test_1': val}, 'network_g': train_opt['network_g'],
            'path': {'pretrain_network_g': str(checkpoint), 'param_key_g': 'params_ema', 'strict_load_g': True},
            'val': {'save_img': True, 'suffix': None, 'metrics': train_opt['val']['metrics']}}


def write_yaml(path, opt):
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


def cli_command(script, opt_path, workdir, *extra, root=None):
    """(argv, env) of ``python basicsr_iln/<script>.py -opt opt_path``; outputs go under ``root`` or ``workdir``."""
    env = dict(os.environ, BASICSR_ILN_ROOT=str(root or workdir), PYTHONPATH=str(REPO))
    # One OpenMP thread: tiny networks gain nothing from more, and spinning threads on a shared,
    # busy CPU made an iteration ~40x slower.
    env.setdefault('OMP_NUM_THREADS', '1')
    return [sys.executable, str(REPO / 'basicsr_iln' / f'{script}.py'), '-opt', str(opt_path), *extra], env


def run_cli(script, opt_path, workdir, *extra, timeout=300, root=None, fresh_interpreter=False):
    """Run the CLI of ``cli_command`` in ``workdir`` to the end; returns the CompletedProcess. It runs in a
    fork of this process (:func:`run_python`) unless ``fresh_interpreter``."""
    cmd, env = cli_command(script, opt_path, workdir, *extra, root=root)
    return run_python(cmd[1:], cwd=workdir, env=env, timeout=timeout, fresh_interpreter=fresh_interpreter)


def run_python(argv, cwd=None, env=None, timeout=300, fresh_interpreter=False):
    """``subprocess.run([sys.executable, *argv], capture_output=True, text=True)`` without a new interpreter:
    a fork of this process runs the script ``argv[0]`` as ``__main__`` with that argv, working directory and
    environment, and exits with its exit status. Why: the suite runs the real CLIs about a hundred times, and
    a fresh interpreter spends about ten seconds importing torch and BasicSR each time. The child resets what
    the test session changed in the interpreter (logging handlers, warning filters, atexit hooks) to what a
    fresh ``python`` has, and runs with one torch thread (``_run_script_in_child`` says why).
    ``fresh_interpreter`` runs a real subprocess instead, as does every run where forking a process that uses
    threads is not safe (not Linux)."""
    env = dict(os.environ if env is None else env)
    if fresh_interpreter or not fork_is_usable():
        return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            try:
                _run_script_in_child(argv, cwd, env, out.fileno(), err.fileno())  # exits
            except BaseException:
                traceback.print_exc()  # the child's own set-up failed
            finally:
                os._exit(1)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired([sys.executable, *argv], timeout)
            time.sleep(0.02)
        outputs = []
        for f in (out, err):
            f.seek(0)
            outputs.append(f.read().decode('utf-8', errors='replace'))
    return subprocess.CompletedProcess([sys.executable, *argv], os.waitstatus_to_exitcode(status), *outputs)


def start_ranks(fn, args, nprocs):
    """``torch.multiprocessing.spawn(fn, args, nprocs)``, but forked where that is safe (Linux): the ranks
    inherit this process's imports instead of spending ten seconds each on their own. ``fn`` must first set
    one torch thread (``_run_script_in_child`` says why)."""
    import torch.multiprocessing as mp
    mp.start_processes(fn, args=args, nprocs=nprocs, start_method='fork' if fork_is_usable() else 'spawn')


def fork_is_usable():
    """Whether a fork of this process can run the CLIs: on Linux only, and only while a fork can still run
    autograd. Once this process has started autograd's worker threads (some test's backward can), torch
    refuses a backward in its forks ("Unable to handle autograd's threading in combination with fork-based
    multiprocessing"); a forked probe finds out, and the runs take fresh interpreters from then on."""
    if not sys.platform.startswith('linux'):
        return False
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import torch
            torch.set_num_threads(1)
            torch.ones(1, requires_grad=True).sum().backward()
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def in_fork(fn):
    """``fn()`` in a forked child with one torch thread, its return value sent back pickled; an exception there
    fails here with the child's traceback. For tests that run torch.compile with autograd (even a forward under
    grad mode: AOTAutograd traces the backward then) or torch.export in this process: both start autograd's
    worker threads, after which torch refuses autograd in every later fork of this process, so that each later
    ``run_python`` here would need a fresh interpreter (about 9 s)."""
    if not fork_is_usable():
        return fn()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(read_fd)
            import torch
            torch.set_num_threads(1)  # libgomp after a fork: see _run_script_in_child
            try:
                payload = (True, fn())
            except BaseException:
                payload = (False, traceback.format_exc())
            with os.fdopen(write_fd, 'wb') as pipe:
                pickle.dump(payload, pipe)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, 'rb') as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    if not data:
        raise AssertionError('the forked child died before sending a result')
    ok, value = pickle.loads(data)
    if not ok:
        raise AssertionError(f'in the forked child:\n{value}')
    return value


def _run_script_in_child(argv, cwd, env, out_fd, err_fd):
    import atexit
    import logging
    import runpy
    import warnings

    import torch
    from basicsr.utils import logger as basicsr_logger

    devnull = os.open(os.devnull, os.O_RDONLY)
    for fd, target in ((devnull, 0), (out_fd, 1), (err_fd, 2)):
        os.dup2(fd, target)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, 'w', buffering=1, closefd=False)
    sys.stderr = open(2, 'w', buffering=1, closefd=False)
    os.chdir(cwd or os.getcwd())
    os.environ.clear()
    os.environ.update(env)
    # One thread whatever OMP_NUM_THREADS says: after a fork, libgomp still counts the parent's OpenMP threads
    # as its pool, and the first parallel region with more than one thread waits for them forever.
    torch.set_num_threads(1)
    for name in [None, *logging.root.manager.loggerDict]:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    logging.getLogger('basicsr').setLevel(logging.NOTSET)
    basicsr_logger.initialized_logger.clear()
    warnings.resetwarnings()  # a fresh interpreter's filters, printed to stderr
    for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.simplefilter('ignore', category)
    warnings.filterwarnings('default', category=DeprecationWarning, module='__main__')
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
        warnings.formatwarning(message, category, filename, lineno, line))
    atexit._clear()  # the session's exit hooks are not the script's
    atexit.register(logging.shutdown)
    sys.argv = [str(a) for a in argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    try:
        runpy.run_path(sys.argv[0], run_name='__main__')
        code = 0
    except SystemExit as exit_:  # as the interpreter treats it
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, int) and exit_.code is not None:
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main_error_line(main, argv, capsys):
    """The ``error:`` line of an in-process CLI ``main(argv)`` that must stop on a user error: exit code 2,
    exactly one line, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith('error: ') and '\n' not in err, err
    return err
