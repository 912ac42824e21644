"""The speed benchmark runs end to end and prints every table it promises (no timing is asserted:
these machines are shared and noisy; the numbers live in docs/benchmarks.md)."""
import re
import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.slow
def test_benchmark_prints_all_variants_ratios_and_block_halves(tmp_path):
    out = tmp_path / 'bench.md'
    # Threads and the benchmark's global torch settings stay in the child process.
    result = subprocess.run(
        [sys.executable, str(REPO / 'scripts' / 'benchmark_speed.py'), '--devices', 'cpu', '--repeats', '1',
         '--warmup', '0', '--embed-dim', '16', '--depths', '1', '--heads', '2', '--train-size', '16',
         '--infer-size', '16', '--block-shapes', '1x64x12', '--out', str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    for row in ('SwinIR ln', 'SwinIR iln', 'HAT ln', 'HAT iln', 'DRCT ln', 'DRCT iln', 'SwinIR ln (BasicSR)'):
        assert re.search(rf'^\| {re.escape(row)} \| [\d.]+ \| [\d.]+ \| \d+/\d+ \|$', text, re.M), row
    ratios = re.findall(r'^\| (?:\w+: i-LN / LN|SwinIR ln: ours / BasicSR) \| ([\d.]+) \| ([\d.]+) \|$', text, re.M)
    assert len(ratios) == 4 and all(float(v) > 0 for pair in ratios for v in pair)
    assert re.search(r'^\| \(1, 64, 12\) \|( [\d.]+ \|){6}$', text, re.M)


@pytest.mark.slow
def test_bad_block_shape_is_named():
    result = subprocess.run([sys.executable, str(REPO / 'scripts' / 'benchmark_speed.py'), '--block-shapes', '2x3'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "got '2x3'" in result.stderr
