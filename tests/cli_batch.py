"""Test-only: many runs of the real train/test CLIs in one process, so torch and BasicSR (about ten
seconds of imports on a 2-core machine) are imported once instead of once per run.

    python tests/cli_batch.py JOBS.json      # [{script, argv, cwd, root}] -> JOBS.json.out

Each job runs the CLI's ``main`` as ``python basicsr_iln/<script>.py ARGV`` would, in its own working
directory and ``BASICSR_ILN_ROOT``; its exit code, stdout and stderr are recorded.
"""
import contextlib
import io
import json
import os
import sys
import traceback
from os import path as osp

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from basicsr_iln import test as test_cli  # noqa: E402
from basicsr_iln import train as train_cli  # noqa: E402

MAINS = {'train': train_cli.main, 'test': test_cli.main}


def run(job):
    os.chdir(job['cwd'])
    os.environ['BASICSR_ILN_ROOT'] = job['root']
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            MAINS[job['script']](job['argv'])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:  # what the interpreter would print for an uncaught exception
            traceback.print_exc()
            code = 1
    return {'returncode': code, 'stdout': out.getvalue(), 'stderr': err.getvalue()}


if __name__ == '__main__':
    with open(sys.argv[1], encoding='utf-8') as f:
        jobs = json.load(f)
    with open(sys.argv[1] + '.out', 'w', encoding='utf-8') as f:
        json.dump([run(job) for job in jobs], f)
