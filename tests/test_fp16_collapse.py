"""scripts/reproduce/fp16_collapse.py: the stop rule and growth rates on synthetic records, and one tiny run
end to end through the real train/test CLIs (slow)."""
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'scripts' / 'reproduce'))

import fp16_collapse  # noqa: E402
from test_cpu_dynamics import write_crops  # noqa: E402


def record(iteration, groups):
    return {'iter': iteration, 'layers': [{'name': f'layers.{g}', 'kind': 'group', 'max_abs': v}
                                          for g, v in enumerate(groups)]}


def test_growth_per_group_and_per_iteration():
    """Groups x10 apart; the largest value x100 every 1000 iterations (second half of the records)."""
    records = [record(i, [v / 100, v / 10, v]) for i, v in ((0, 1.0), (1000, 100.0), (2000, 1e4), (3000, 1e6))]
    per_group, per_kiter = fp16_collapse.growth(records, 3000)
    assert per_group == pytest.approx(10)
    assert per_kiter == pytest.approx(100)
    assert fp16_collapse.largest(records[-1]) == (1e6, 'layers.2')
    # Measured at or before the evaluated iteration only.
    assert fp16_collapse.growth(records, 2000)[0] == pytest.approx(10)


def test_extrapolation_only_when_ln_stays_inside_fp16(tmp_path):
    args = type('Args', (), {'workdir': str(tmp_path)})
    runs = {'ln': {'name': 'run_ln'}, 'iln': {'name': 'run_iln'}}
    for name, top in (('run_ln', 655.04), ('run_iln', 1.0)):
        folder = tmp_path / 'experiments' / name
        folder.mkdir(parents=True)
        lines = [record(i, [top / 100 * (1 + i / 1000), top / 10 * (1 + i / 1000), top * (1 + i / 1000)])
                 for i in (0, 100, 200, 300)]
        (folder / 'analysis.jsonl').write_text('\n'.join(json.dumps(r) for r in lines))
    table = fp16_collapse.results_table(args, runs, 'time budget spent', 300)
    assert 'Extrapolation (not measured)' in table
    more_groups = math.log(65504 / (655.04 * 1.3)) / math.log(10)
    assert f'about {more_groups:.1f} more residual groups' in table


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path):
    write_crops(tmp_path / 'hr_train', ['astronaut', 'coffee', 'rocket'], 64)
    write_crops(tmp_path / 'TinySet', ['chelsea', 'immunohistochemistry'], 36)
    out = tmp_path / 'report'
    fp16_collapse.main(['--hr-folder', str(tmp_path / 'hr_train'), '--benchmarks', str(tmp_path / 'TinySet'),
                        '--cache', str(tmp_path / 'cache'), '--workdir', str(tmp_path), '--out', str(out),
                        '--iters', '4', '--ckpt-freq', '2', '--freq', '2', '--batch', '2', '--patch', '8',
                        '--embed-dim', '16', '--depths', '1', '1', '--heads', '2', '--window', '4',
                        '--probe-images', '2', '--probe-crop', '16', '--precisions', 'fp32,fp16'])
    results = (out / 'results.md').read_text()
    assert '--iters 4 reached' in results and 'evaluated at iteration **4**' in results
    validation = (out / 'validation.md').read_text()
    for norm in ('ln', 'iln'):
        assert (out / 'data' / f'fp16_collapse_swinir_{norm}_x2' / 'analysis.jsonl').is_file()
        assert f'fp16_collapse_swinir_{norm}_x2 | TinySet | fp16 |' in validation
    assert (out / 'fp16_collapse.png').stat().st_size > 10000
