"""helpers.run_python, which runs the CLIs for most of the suite: a forked run of a script must look, from
outside, like a fresh ``python SCRIPT ARGS`` (exit status, output, argv, working directory, environment,
warnings, logging)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, run_python

SCRIPTS = {
    'exit_code': "import os, sys\nprint(__name__, sys.argv[1:], os.getcwd(), os.environ.get('PROBE'))\n"
                 "print('to stderr', file=sys.stderr)\nsys.exit(3)\n",
    'exception': "raise ValueError('boom')\n",
    'exit_message': "import sys\nsys.exit('stopped: bad value')\n",
    'warning': "import warnings\nwarnings.warn('a user warning')\nwarnings.warn('hidden', DeprecationWarning, "
               "stacklevel=2)\nprint('done')\n",
    'script_folder_on_path': "import sibling\nprint(sibling.VALUE)\n",
}


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='forks only on Linux')
@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_forked_run_looks_like_a_fresh_interpreter(name, tmp_path):
    (tmp_path / 'sibling.py').write_text('VALUE = 42\n')
    script = tmp_path / f'{name}.py'
    script.write_text(SCRIPTS[name])
    work = tmp_path / 'work'
    work.mkdir()
    env = {'PROBE': 'seen', 'PATH': '/usr/bin:/bin'}
    forked = run_python([script, 'a', 'b'], cwd=work, env=env)
    fresh = run_python([script, 'a', 'b'], cwd=work, env=env, fresh_interpreter=True)
    assert (forked.returncode, forked.stdout) == (fresh.returncode, fresh.stdout)
    last = lambda text: text.strip().splitlines()[-1]
    assert last(forked.stderr or '-') == last(fresh.stderr or '-')
    assert ('Traceback' in forked.stderr) == ('Traceback' in fresh.stderr)
    assert ('DeprecationWarning' in forked.stderr) == ('DeprecationWarning' in fresh.stderr)


@pytest.fixture
def session_log(tmp_path):
    """BasicSR's logger set up in this process, writing session.log; as it was afterwards."""
    import logging

    from basicsr.utils import get_root_logger, logger as basicsr_logger
    logger = logging.getLogger('basicsr')
    handlers, level, initialised = list(logger.handlers), logger.level, dict(basicsr_logger.initialized_logger)
    basicsr_logger.initialized_logger.pop('basicsr', None)
    get_root_logger(log_file=str(tmp_path / 'session.log'))
    yield tmp_path / 'session.log'
    for handler in set(logger.handlers) - set(handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(level)
    basicsr_logger.initialized_logger.clear()
    basicsr_logger.initialized_logger.update(initialised)


def test_basicsr_logger_writes_the_childs_log_file(session_log, tmp_path):
    """The test session's logging handlers and BasicSR's 'already initialised' record stay out of the child:
    a CLI's log file gets its lines."""
    script = tmp_path / 'log.py'
    script.write_text("import sys\nimport basicsr_iln\nfrom basicsr.utils import get_root_logger\n"
                      "get_root_logger(log_file=sys.argv[1]).info('from the child')\n")
    result = run_python([script, tmp_path / 'child.log'], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'from the child' in (tmp_path / 'child.log').read_text()
    assert 'from the child' in result.stderr and 'from the child' not in session_log.read_text()


def test_a_run_past_its_timeout_is_killed(tmp_path):
    script = tmp_path / 'forever.py'
    script.write_text('import time\ntime.sleep(60)\n')
    with pytest.raises(subprocess.TimeoutExpired):
        run_python([script], timeout=0.5)


def test_a_fork_after_parallel_work_in_this_process_does_not_hang(tmp_path):
    """This process has run OpenMP threads; the forked script asks for two (libgomp would wait forever for
    the parent's threads if the child used more than one)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (torch.rand(512, 512) @ torch.rand(512, 512)).sum()
        script = tmp_path / 'parallel.py'
        script.write_text('import torch\nprint(int((torch.rand(512, 512) @ torch.rand(512, 512)).sum() > 0))\n')
        result = run_python([script], env=dict(os.environ, OMP_NUM_THREADS='2'), timeout=60)
    finally:
        torch.set_num_threads(threads)
    assert (result.returncode, result.stdout) == (0, '1\n'), result.stderr


AUTOGRAD_AND_FORKS = """
import os, sys, torch
sys.path.insert(0, sys.argv[1])
from helpers import fork_is_usable, in_fork, run_python

def compiled_forward_under_grad():
    torch.compile(torch.nn.Linear(4, 1), backend='aot_eager')(torch.rand(2, 4)).sum().backward()
    return 'done'

assert fork_is_usable()
assert in_fork(compiled_forward_under_grad) == 'done'
assert fork_is_usable()  # the compiled autograd ran in the child
compiled_forward_under_grad()
assert not fork_is_usable()  # torch now refuses autograd in forks of this process
backward = sys.argv[2]
result = run_python([backward])  # so run_python takes a fresh interpreter
assert (result.returncode, result.stdout) == (0, 'ok\\n'), result.stderr
print('checked')
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='forks only on Linux')
def test_compiled_autograd_poisons_forks_so_in_fork_shields_them_and_run_python_falls_back(tmp_path):
    """The cause of the fork failures seen in full runs: once a process ran torch.compile with autograd (or
    torch.export), torch refuses autograd in its forks ("Unable to handle autograd's threading in combination
    with fork-based multiprocessing"). helpers.in_fork keeps such a test's process clean, and run_python finds
    the state by a forked probe and takes a fresh interpreter."""
    (tmp_path / 'check.py').write_text(AUTOGRAD_AND_FORKS)
    (tmp_path / 'backward.py').write_text(
        "import torch\ntorch.ones(1, requires_grad=True).sum().backward()\nprint('ok')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, str(tmp_path / 'check.py'), str(Path(__file__).parent),
                             str(tmp_path / 'backward.py')], capture_output=True, text=True, timeout=600, env=env)
    assert (result.returncode, result.stdout.strip().splitlines()[-1:]) == (0, ['checked']), result.stderr[-3000:]
