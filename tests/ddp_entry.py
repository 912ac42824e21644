"""Test-only torchrun entry: ``ddp_entry.py DUMP_DIR -opt OPT.yml --launcher pytorch ...``.

Runs the real training CLI in this process, recording what only this rank knows (the iteration it
resumed from, the sample indices its sampler yielded per epoch, its networks at the end) into
``DUMP_DIR/rank<R>.pt``, so tests can compare ranks with each other and with what rank 0 wrote.
"""
import os
import sys
from os import path as osp

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

from basicsr_iln import train  # noqa: E402
from basicsr_iln.utils import checkpoint  # noqa: E402
from basicsr.data.data_sampler import EnlargedSampler  # noqa: E402  (after basicsr_iln)

record = {'resumed_iter': None, 'shards': {}}


def recording_iter(sampler, _iter=EnlargedSampler.__iter__):
    """EnlargedSampler's epoch permutation for this rank, recorded (whatever subclass train.py uses)."""
    indices = list(_iter(sampler))
    record['shards'][sampler.epoch] = indices
    return iter(indices)


def find_resume_state(opt, _find=checkpoint.find_resume_state):
    path, state = _find(opt)
    record['resumed_iter'] = state and state['iter']
    return path, state


def build_model(opt, _build=train.build_model):
    record['model'] = _build(opt)
    return record['model']


if __name__ == '__main__':
    dump_dir, argv = sys.argv[1], sys.argv[2:]
    EnlargedSampler.__iter__ = recording_iter
    checkpoint.find_resume_state, train.build_model = find_resume_state, build_model
    train.main(argv)
    model = record.pop('model')
    record['net_g'] = model.get_bare_model(model.net_g).state_dict()
    record['net_g_ema'] = model.net_g_ema.state_dict()
    torch.save(record, osp.join(dump_dir, f"rank{os.environ['RANK']}.pt"))
