"""Flush-to-zero of denormals (option ``flush_denormal``, basicsr_iln/utils/denormals.py): set before the first
parallel op it reaches every intra-op thread, the check says when it did not, and the CLIs set it before theirs
(that it leaves restored images as they are: test_checkpoints.py). The thread cases run in fresh interpreters
with two OpenMP threads: the x86 flag is per thread, and a test process has its thread pool started already."""
import json
import os

import pytest
import torch

from helpers import REPO, run_cli, run_python, tiny_train_options, write_yaml

from basicsr_iln.utils.denormals import denormals_kept, set_denormal_flushing
from basicsr_iln.utils.errors import ConfigError
from basicsr_iln.utils.schema import option_at, resolve_option

PROBE = """
import json, sys
import torch
from basicsr_iln.utils.denormals import denormals_kept, set_denormal_flushing
before = denormals_kept() if sys.argv[1] == 'late' else None  # starts the intra-op threads unflushed
report = set_denormal_flushing(True)
print(json.dumps({'before': before, 'complete': report.complete, 'message': report.message,
                  'kept': denormals_kept(), 'threads': torch.get_num_threads()}))
"""


def probe_two_threads(when):
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONPATH=str(REPO))
    result = run_python(['-c', PROBE, when], env=env, timeout=120, fresh_interpreter=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_flushing_set_before_the_first_parallel_op_reaches_every_thread():
    early = probe_two_threads('early')
    assert early['threads'] == 2 and early['kept'] == 0.0 and early['complete']
    assert 'in each of the 2 intra-op threads' in early['message']


def test_flushing_set_after_the_threads_started_reaches_only_the_caller_and_says_so():
    late = probe_two_threads('late')
    assert late['before'] == 1.0  # torch's default: no thread flushes
    assert late['kept'] == 0.5 and not late['complete']  # the caller's half of the multiply flushes, the other's not
    assert '50% of a parallel multiply still kept denormal floats' in late['message']
    assert 'started before flushing was set' in late['message']


def test_kept_denormals_are_reported_as_kept():
    report = set_denormal_flushing(False)
    assert report.complete and 'kept' in report.message
    assert denormals_kept() == 1.0  # conftest started the threads unflushed and resets this one after each test


def test_a_cpu_that_cannot_flush_is_a_warning(monkeypatch):
    monkeypatch.setattr(torch, 'set_flush_denormal', lambda mode: False)
    report = set_denormal_flushing(True)
    assert not report.complete and 'cannot flush denormal floats' in report.message


def test_option_defaults_to_flushing_and_takes_only_booleans():
    assert option_at('flush_denormal').default is True
    with pytest.raises(ConfigError, match="option 'flush_denormal' must be true or false, got 'yes please'"):
        resolve_option('flush_denormal', 'yes please')


@pytest.mark.slow
def test_train_cli_flushes_in_every_thread(tiny_sr_data, tmp_path):
    """Nothing the CLI does before reading its options starts the intra-op threads; ``false`` keeps torch's
    default."""
    for flush, expected in ((True, 'in each of the 2 intra-op threads (flush_denormal: true)'),
                            (False, 'Denormal floats are kept on the CPU (flush_denormal: false)')):
        opt = dict(tiny_train_options(tiny_sr_data, f'flush_{flush}', total_iter=1), flush_denormal=flush)
        opt['val']['val_freq'] = 1
        opt_path = write_yaml(tmp_path / f'train_{flush}.yml', opt)
        with pytest.MonkeyPatch.context() as env:
            env.setenv('OMP_NUM_THREADS', '2')
            result = run_cli('train', opt_path, tmp_path, fresh_interpreter=flush)
        assert result.returncode == 0, result.stderr[-3000:]
        [log] = (tmp_path / 'experiments' / f'flush_{flush}').glob('train_*.log')
        assert expected in log.read_text()
