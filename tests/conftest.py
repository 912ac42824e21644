"""Session fixtures built from real images (see helpers.py), and torch threads under pytest-xdist."""
import logging
import os

import pytest
import torch

from helpers import real_photos, write_sr_pairs


def pytest_configure(config):
    """Under pytest-xdist (``-n N``) each worker gets cores // N torch threads, and so do the CLIs it starts
    (``OMP_NUM_THREADS``): N workers with all cores each would fight over them."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', 0))
    if workers:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ['OMP_NUM_THREADS'] = threads
        torch.set_num_threads(int(threads))
    # Start the intra-op threads now, with torch's default (denormals kept): started later inside a CLI run in
    # this process, they would inherit its flush-to-zero for the rest of the session (test_denormals.py).
    torch.ones(1 << 20).mul_(2)


@pytest.fixture(scope='session')
def tiny_sr_data(tmp_path_factory):
    """x2 pairs cut from real photos: train/ (8 crops of 64x64 HR), val/ (2 crops of 48x40 HR)."""
    root = tmp_path_factory.mktemp('tiny_sr')
    photos = real_photos()
    train = [p[y:y + 64, x:x + 64] for p in photos[:4] for y, x in ((0, 0), (64, 64))]
    val = [p[100:148, 100:140] for p in photos[-2:]]
    write_sr_pairs(root / 'train', train, 2)
    write_sr_pairs(root / 'val', val, 2)
    return root


@pytest.fixture
def warnings(caplog):
    """Records of BasicSR's logger (it does not propagate to the root logger)."""
    logger = logging.getLogger('basicsr')
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture(scope='module')
def one_torch_thread():
    """Tiny models: one intra-op thread is as fast and does not fight other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def denormals_kept_after_each_test():
    """CLIs run in this process (infer.main, ...) flush denormals on this thread; the next test gets torch's
    default back."""
    yield
    torch.set_flush_denormal(False)
