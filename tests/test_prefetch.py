"""The training loop's batches (basicsr_iln/data/prefetch.py) and the model's copy of a batch to its device.

On CPU: a pass loads exactly the batches it yields, none ahead (so a checkpoint's RNG states hold no draw of an
untrained batch), and the model asks for non-blocking copies. The side-stream copy itself: tests/test_cuda.py.
"""
import random
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset

from basicsr_iln.data.prefetch import epoch_batches
from basicsr_iln.models.ir_model import IRModel


class RandomCrops(Dataset):
    """Draws its 'augmentation' from Python's global RNG, as BasicSR's paired crops do, and counts its loads."""

    def __init__(self):
        self.loads = 0

    def __len__(self):
        return 12

    def __getitem__(self, index):
        self.loads += 1
        return {'lq': torch.full((1,), float(index)), 'crop': random.random()}


def test_a_pass_loads_only_the_batches_it_yields_and_each_when_asked():
    dataset = RandomCrops()
    batches = epoch_batches(DataLoader(dataset, batch_size=2), 3)
    assert dataset.loads == 0
    first = next(batches)
    assert dataset.loads == 2 and first['lq'].flatten().tolist() == [0.0, 1.0]
    assert len(list(batches)) == 2 and dataset.loads == 6  # 3 of the loader's 6 batches: the rest never loaded


def test_the_rng_state_between_batches_is_that_of_the_untrained_batches():
    """What a checkpoint after batch 2 saves and a resumed run restores: the next batch drawn from it is the
    uninterrupted run's batch 3 (BasicSR's CUDAPrefetcher has already drawn batch 3 by then)."""
    random.seed(0)
    batches = epoch_batches(DataLoader(RandomCrops(), batch_size=2), 4)
    uninterrupted = [next(batches), next(batches)]
    saved = random.getstate()
    uninterrupted += list(batches)
    random.setstate(saved)
    resumed = list(epoch_batches(DataLoader(RandomCrops(), batch_size=2), 2))
    assert [b['crop'].tolist() for b in resumed] == [b['crop'].tolist() for b in uninterrupted[2:]]


def test_copy_is_applied_to_every_batch():
    batches = epoch_batches(DataLoader(RandomCrops(), batch_size=3), 2, copy=lambda b: {**b, 'copied': True})
    assert [b['copied'] for b in batches] == [True, True]


class CopyRequests(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.non_blocking = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.non_blocking.append(kwargs.get('non_blocking', False))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('channels_last', [False, True])
def test_the_model_copies_a_batch_to_its_device_without_blocking(channels_last):
    """A blocking copy from page-locked memory waits for the previous step to finish on the GPU: a host sync
    every step. (Meta stands in for the GPU: a copy to it is dispatched like one to CUDA.) With option
    channels_last the LR batch is laid out in the same copy."""
    model = SimpleNamespace(device=torch.device('meta'), channels_last=channels_last)
    data = {'lq': torch.rand(2, 3, 4, 4), 'gt': torch.rand(2, 3, 8, 8)}
    with CopyRequests() as requests:
        IRModel.feed_data(model, data)
    assert requests.non_blocking == [True, True]
    assert model.lq.device.type == 'meta' and model.gt.shape == (2, 3, 8, 8)
    assert model.lq.is_contiguous(memory_format=torch.channels_last) == channels_last
