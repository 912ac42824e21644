#!/usr/bin/env python
"""How far a resumed training run ends from the uninterrupted run it was cut from (scripts/device_check.sh).

    python scripts/compare_resume.py EXPERIMENTS/uninterrupted EXPERIMENTS/resumed --from-iter 50 [--max-ratio 0.25]

Both folders are experiment folders of the train CLI; the resumed run started from the uninterrupted run's
``models/net_g_<from>.pth`` and ``training_states/<from>.state`` and trained to the same total_iter. Printed:

* for ``params`` and ``params_ema`` of both ``models/net_g_latest.pth``: whether they are bit-identical, the
  largest |difference|, and the ratio ||resumed - uninterrupted|| / ||uninterrupted at the end - at <from>||,
  the distance between the two runs over the distance the steps after <from> moved the weights;
* the ``l_pix`` both training logs print at the same iterations, and the largest relative difference.

Exit code 1 when a file or the resume line of the resumed log is missing, a weight is not finite, or a ratio is
above ``--max-ratio``. A resume that lost the optimizer state, the RNG states or the position in the epoch ends
about as far from the uninterrupted run as the steps after <from> moved the weights (ratio of order 1). On CPU
with ``num_worker_per_gpu: 0`` the two runs are bit-identical (tests/test_reliability.py); on CUDA,
``cudnn.benchmark`` may choose other kernels in the two processes and some kernels are not deterministic, so a
small ratio, not 0, is expected there.
"""
import argparse
import glob
import math
import sys
from os import path as osp

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from basicsr_iln.utils.console import logged_curve  # noqa: E402



def load_weights(folder, label):
    path = osp.join(folder, 'models', f'net_g_{label}.pth')
    if not osp.isfile(path):
        sys.exit(f'missing: {path}')
    return torch.load(path, map_location='cpu', weights_only=True)


def read_log(folder):
    logs = sorted(glob.glob(osp.join(folder, 'train_*.log')))
    if not logs:
        sys.exit(f'missing: {folder}/train_*.log')
    with open(logs[-1], encoding='utf-8') as f:
        return f.read()


def distance(a, b):
    """(bit-identical, max |a - b|, ||a - b||) over the floating-point tensors of two state dicts."""
    same, largest, square = True, 0.0, 0.0
    for key, value in a.items():
        if not value.is_floating_point():
            continue
        diff = (value.double() - b[key].double()).abs()
        same = same and torch.equal(value, b[key])
        largest = max(largest, float(diff.max()))
        square += float(diff.square().sum())
    return same, largest, math.sqrt(square)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('uninterrupted')
    parser.add_argument('resumed')
    parser.add_argument('--from-iter', type=int, required=True, help='the iteration the resumed run started from')
    parser.add_argument('--max-ratio', type=float, default=0.25,
                        help='fail above this distance between the runs / distance moved after --from-iter')
    args = parser.parse_args(argv)

    ok = True
    end, resumed, start = (load_weights(args.uninterrupted, 'latest'), load_weights(args.resumed, 'latest'),
                           load_weights(args.uninterrupted, args.from_iter))
    for key in ('params', 'params_ema'):
        if key not in end:
            continue
        if not all(torch.isfinite(v).all() for v in (*end[key].values(), *resumed[key].values()) if
                   v.is_floating_point()):
            print(f'{key}: non-finite weights')
            ok = False
            continue
        same, largest, apart = distance(resumed[key], end[key])
        moved = distance(end[key], start[key])[2]
        ratio = apart / moved if moved else math.inf
        print(f'{key}: {"bit-identical" if same else "differ"}; max |resumed - uninterrupted| {largest:.3e}; '
              f'||resumed - uninterrupted|| / ||moved after iter {args.from_iter}|| = {apart:.3e} / {moved:.3e} '
              f'= {ratio:.3e}')
        ok = ok and ratio <= args.max_ratio

    log_u, log_r = read_log(args.uninterrupted), read_log(args.resumed)
    if f'iter {args.from_iter} (' not in log_r or 'Resuming training' not in log_r:
        print(f'the resumed log has no "Resuming training ... iter {args.from_iter}" line')
        ok = False
    loss_u, loss_r = (dict(logged_curve(log)) for log in (log_u, log_r))
    common = sorted(set(loss_u) & set(loss_r))
    for it in common:
        print(f'iter {it}: l_pix uninterrupted {loss_u[it]:.4e}, resumed {loss_r[it]:.4e}')
    if common:
        worst = max(abs(loss_r[i] - loss_u[i]) / max(abs(loss_u[i]), 1e-12) for i in common)
        print(f'logged l_pix: {len(common)} common iterations, largest relative difference {worst:.3e}')
    else:
        print('logged l_pix: no iteration logged by both runs')
    print('resume check:', 'passed' if ok else 'FAILED')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
