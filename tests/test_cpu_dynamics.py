"""End to end: scripts/reproduce/cpu_dynamics.py on a few real photo crops, tiny networks, 2 iterations.

Runs the real train and test CLIs in subprocesses, as the script does (about half a minute).
"""
import json
import sys
from pathlib import Path

import cv2
import pytest
import skimage.data

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'scripts' / 'reproduce'))

import cpu_dynamics  # noqa: E402

# Every test reads the report: the script's real CLI runs, built once, on one xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('cpu_dynamics')]


def write_crops(folder, photos, size):
    folder.mkdir(parents=True)
    for name in photos:
        img = getattr(skimage.data, name)()[:size, :size, ::-1]  # RGB -> BGR for OpenCV
        cv2.imwrite(str(folder / f'{name}.png'), img)


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp('cpu_dynamics')
    write_crops(root / 'hr_train', ['astronaut', 'coffee', 'rocket'], 64)
    write_crops(root / 'TinySet', ['chelsea', 'immunohistochemistry'], 36)  # 36: not a multiple of the window
    out = root / 'report'
    cpu_dynamics.main(['--hr-folder', str(root / 'hr_train'), '--benchmarks', str(root / 'TinySet'),
                       '--cache', str(root / 'cache'), '--workdir', str(root), '--out', str(out),
                       '--archs', 'hat', '--norms', 'ln', 'iln', '--iters', '2', '--freq', '1',
                       '--batch', '2', '--patch', '8', '--embed-dim', '32', '--depths', '1', '--heads', '2',
                       '--window', '4', '--probe-images', '2', '--probe-crop', '16', '--precisions', 'fp32,fp16'])
    return out


RUNS = [f'cpu_dynamics_hat_{norm}_x2' for norm in ('ln', 'iln')]  # SwinIR: test_fp16_collapse.py


def test_writes_figures_and_tables(report):
    for name in ('dynamics.png', 'summary.md', 'validation.md', 'run.md'):
        assert (report / name).stat().st_size > 0, name
    summary = (report / 'summary.md').read_text()
    assert all(run in summary for run in RUNS)


def test_keeps_raw_probe_records(report):
    for run in RUNS:
        records = [json.loads(line) for line in (report / 'data' / run / 'analysis.jsonl').read_text().splitlines()]
        assert [record['iter'] for record in records] == [1, 2]


def test_validation_table_has_every_run_and_precision(report):
    rows = [line.split(' | ') for line in (report / 'validation.md').read_text().splitlines()[2:]]
    assert ('| bicubic', 'TinySet') in {(row[0], row[1]) for row in rows}
    measured = {(row[0].lstrip('| '), row[2]) for row in rows if row[0] != '| bicubic'}
    assert measured == {(run, precision) for run in RUNS for precision in ('fp32', 'fp16')}
    for row in rows:
        float(row[3])  # PSNR is a number, never a placeholder
