"""scripts/compare_resume.py (the device check's resume comparison) passes a resume that continued the run and
fails one that lost its place, on checkpoints and logs laid out as the train CLI writes them."""
import math

import torch

from basicsr_iln.utils.console import logged_curve
from helpers import REPO, run_python

SCRIPT = REPO / 'scripts' / 'compare_resume.py'
LOG_LINE = ('[test..][epoch:  0, iter:{it:>8,d}, lr:(2.000e-04,)] [eta: 0:00:01, time (data): 0.1 (0.0)] '
            'l_pix: {loss:.4e}\n')


def experiment(folder, weights, losses, resumed_from=None):
    """An experiment folder: models/net_g_<label>.pth for {label: tensor} and a train log with l_pix per iter."""
    (folder / 'models').mkdir(parents=True)
    for label, value in weights.items():
        state = {'conv.weight': value, 'conv.num_batches': torch.tensor(3)}
        torch.save({'params': state, 'params_ema': state}, folder / 'models' / f'net_g_{label}.pth')
    lines = [f'Resuming training from epoch 0, iter {resumed_from} (2 batches into the epoch).\n'] * bool(resumed_from)
    lines += [LOG_LINE.format(it=it, loss=loss) for it, loss in losses.items()]
    (folder / 'train_test_20261202_000000.log').write_text(''.join(lines))


def test_compare_resume_passes_a_continued_run_and_fails_a_lost_one(tmp_path):
    start, end = torch.zeros(4, 4), torch.ones(4, 4)
    experiment(tmp_path / 'ref', {50: start, 'latest': end}, {50: 0.2, 100: 0.1})
    experiment(tmp_path / 'close', {'latest': end + 0.01}, {100: 0.1001}, resumed_from=50)
    experiment(tmp_path / 'lost', {'latest': end * 0.5}, {100: 0.15}, resumed_from=50)
    experiment(tmp_path / 'fresh', {'latest': end}, {100: 0.1})  # no resume line: not a resumed run
    passed = run_python([SCRIPT, tmp_path / 'ref', tmp_path / 'close', '--from-iter', '50'])
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert 'params: differ' in passed.stdout and '= 1.000e-02' in passed.stdout  # 0.04 apart / 4 moved
    assert 'largest relative difference 1.000e-03' in passed.stdout and 'resume check: passed' in passed.stdout
    for other in ('lost', 'fresh'):
        failed = run_python([SCRIPT, tmp_path / 'ref', tmp_path / other, '--from-iter', '50'])
        assert failed.returncode == 1 and 'resume check: FAILED' in failed.stdout, other
    missing = run_python([SCRIPT, tmp_path / 'ref', tmp_path / 'nowhere', '--from-iter', '50'])
    assert missing.returncode == 1 and 'missing:' in missing.stderr


def test_logged_curve_reads_thousands_separators_and_non_finite_values():
    log = LOG_LINE.format(it=50, loss=0.2) + LOG_LINE.format(it=12345, loss=0.1) + LOG_LINE.format(it=12346,
                                                                                                  loss=float('nan'))
    (first, a), (second, b), (third, c) = logged_curve(log)
    assert (first, second, third) == (50, 12345, 12346) and (a, b) == (0.2, 0.1) and math.isnan(c)
    assert logged_curve(log, 'grad_norm') == []
