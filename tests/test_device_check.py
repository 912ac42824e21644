"""scripts/device_check.sh without a GPU: its refusal to run, and its rehearsal (REHEARSAL=1), which runs every step
of both parts on the CPU at toy sizes, so that the script's own steps, option keys and flags are checked before a
GPU's few minutes are spent on them."""
import os
import re
import subprocess
import sys
import tarfile

import pytest
import torch

from helpers import REPO

SCRIPT = REPO / 'scripts' / 'device_check.sh'
STEPS = {
    'core': ['quickstart_data', 'cuda_tests', 'hat_mini_iln_bf16', 'hat_mini_iln_fp16', 'resume_copy',
             'hat_mini_iln_bf16_resumed', 'compare_resume', 'benchmark_speed', 'benchmark_speed_compiled'],
    'extra': ['quickstart_data', 'quickstart_fp32', 'quickstart_bf16', 'quickstart_fp16', 'hat_mini_iln_fp32',
              'benchmark_speed_data', 'benchmark_speed_channels_last', 'benchmark_large_image'],
}
TABLES = {'core': ['benchmark_speed.md', 'benchmark_speed_compiled.md'],
          'extra': ['benchmark_speed_data.md', 'benchmark_speed_channels_last.md', 'benchmark_large_image.md']}


def device_check(part, tmp_path, timeout, **env):
    out = tmp_path / f'out_{part}'
    env = {**os.environ, 'OUT': str(out), 'TMPDIR': str(tmp_path), 'PYTHON': sys.executable, **env}
    done = subprocess.run(['bash', str(SCRIPT), *([part] if part else [])], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return done, out


def outcomes(summary):
    """{step: outcome} from summary.md lines such as '- benchmark_speed: passed, 12 s (limit 75 s)'."""
    return dict(re.findall(r'^- (\w+): (passed|FAILED rc -?\d+|TIMED OUT \(rc \d+\)|skipped)', summary, re.M))


def test_device_check_needs_a_part(tmp_path):
    done, _ = device_check(None, tmp_path, timeout=30)
    assert done.returncode == 2 and 'usage: bash scripts/device_check.sh core|extra' in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA: the check would run')
def test_without_cuda_every_step_is_skipped_after_the_preflight(tmp_path):
    done, out = device_check('core', tmp_path, timeout=120)
    summary = (out / 'summary.md').read_text()
    steps = outcomes(summary)
    assert steps['preflight'].startswith('FAILED') and 'no CUDA device' in summary
    assert all(steps[name] == 'skipped' for name in STEPS['core']), summary
    assert done.returncode == 1 + len(STEPS['core'])  # the exit code counts the failed steps
    assert not any(out.glob('benchmark_*.md'))


@pytest.mark.slow
@pytest.mark.xdist_group('device_check_rehearsal')  # both parts write datasets/quickstart: one after the other
@pytest.mark.parametrize('part', ['core', 'extra'])
def test_rehearsal_runs_every_step_of_the_part(part, tmp_path):
    done, out = device_check(part, tmp_path, timeout=1500, REHEARSAL='1')
    summary = (out / 'summary.md').read_text()
    assert done.returncode == 0, summary
    assert 'REHEARSAL on the CPU' in summary
    steps = outcomes(summary)
    assert [name for name in steps if name not in ('preflight', 'wheels')] == STEPS[part]
    assert set(steps.values()) == {'passed'}, summary
    assert f'failed steps: 0 (part {part},' in summary
    for table in TABLES[part]:
        assert '|---|' in (out / table).read_text(), table
    with tarfile.open(out / f'logs_{part}.tar.gz') as archive:
        names = archive.getnames()
    assert all(f'logs/{name}.log' in names for name in STEPS[part])
    assert not any(name.endswith(('.pth', '.state')) for name in names)  # checkpoints stay out of the archive
    if part == 'core':  # the resumed run continued the uninterrupted one: bit-identical on CPU without workers
        assert 'params: bit-identical' in summary and 'resume check: passed' in summary, summary
