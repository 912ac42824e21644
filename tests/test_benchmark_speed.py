"""The speed benchmark runs end to end and prints every table it promises (no timing is asserted:
these machines are shared and noisy; the numbers live in docs/benchmarks.md), and counts FLOPs as by hand."""
import math
import re
import sys
from types import SimpleNamespace

import cv2
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import REPO, real_photos, run_python

sys.path.insert(0, str(REPO / 'scripts'))
from benchmark_speed import (ARCH_TYPES, BASICSR, BASICSR_BEST, COMPILED, OURS_BEST, CudaAttentionOnMeta,  # noqa: E402
                             OpCount, counted_flops, known_peak_tflops, median_interval, network_kwargs, peak_tflops,
                             ratio_cell, throughput_cells, with_best_paths, with_layout_best_paths)

from basicsr_iln.presets import size_of

BENCHMARK = [REPO / 'scripts' / 'benchmark_speed.py']
TINY = ['--devices', 'cpu', '--repeats', '1', '--warmup', '0', '--embed-dim', '16', '--depths', '1', '--heads', '2',
        '--train-size', '16', '--infer-size', '16']


def test_counted_flops_of_linear_conv_and_attention_equal_the_hand_count():
    linear, conv = torch.nn.Linear(8, 4), torch.nn.Conv2d(3, 2, 3, padding=1)
    x, image = torch.rand(3, 8), torch.rand(1, 3, 5, 5)
    assert counted_flops(lambda: linear(x)) == 2 * 3 * 8 * 4  # a multiply-add is 2 FLOPs; the bias is not counted
    assert counted_flops(lambda: conv(image)) == 2 * (2 * 5 * 5) * (3 * 3 * 3)  # per output value: C_in x k x k
    # Backward computes the weight gradient only (x needs none): one more product of the same size.
    assert counted_flops(lambda: linear(x).sum().backward()) == 2 * (2 * 3 * 8 * 4)
    # CPU attention (its fused kernel has no formula in torch): Q K^T and P V, each 2 B H L S E;
    # backward 5 more products (recomputed Q K^T, dV, dP, dQ, dK).
    b, h, length, e = 2, 2, 16, 8
    q, k, v = (torch.rand(b, h, length, e, requires_grad=True) for _ in range(3))
    with torch.no_grad():
        assert counted_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 2 * (2 * b * h * length**2 * e)
    assert counted_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == \
        7 * (2 * b * h * length**2 * e)


def test_mfu_is_achieved_over_peak_and_the_peak_comes_from_the_flag_or_the_datasheet_table():
    assert throughput_cells(2e12, 0.5, 8.0) == ('4.0000', '50.0%')
    assert throughput_cells(2e12, 0.5, None) == ('4.0000', '-')
    assert known_peak_tflops('NVIDIA H200', 'bf16') == 989.0
    assert known_peak_tflops('NVIDIA H100 80GB HBM3', 'fp32') == 67.0
    assert known_peak_tflops('NVIDIA A100-SXM4-80GB', 'bf16') == 312.0
    assert known_peak_tflops('NVIDIA H100 PCIe', 'bf16') is None  # lower clocks than the SXM board
    assert known_peak_tflops('NVIDIA GeForce RTX 4090', 'fp32') is None
    cpu = torch.device('cpu')
    assert peak_tflops(SimpleNamespace(peak_tflops=None, precision='fp32'), cpu) == (None, 'unknown')
    assert peak_tflops(SimpleNamespace(peak_tflops=1.5, precision='fp32'), cpu) == (1.5, '--peak-tflops')


def test_best_paths_take_the_faster_of_eager_and_compiled_in_each_round():
    ours, theirs = ('SwinIR', 'ln'), BASICSR
    times = {ours: [3.0, 1.0], (*ours, COMPILED): [2.0, 4.0], theirs: [5.0, 2.0], (*theirs, COMPILED): [4.0, 3.0],
             ('SwinIR', 'iln'): [0.1, 0.1]}
    best = with_best_paths(times)
    assert best[OURS_BEST] == [2.0, 1.0] and best[BASICSR_BEST] == [4.0, 2.0]  # i-LN is not "our SwinIR LN"
    assert ratio_cell(best, OURS_BEST, BASICSR_BEST) == '0.500'
    eager_only = {v: times[v] for v in (ours, theirs)}
    assert with_best_paths(eager_only)[OURS_BEST] == [3.0, 1.0]  # only the variants timed count


def test_median_interval_is_the_binomial_order_statistics_and_covers_the_median_as_promised():
    # n = 15: P(Binomial(15, 1/2) <= 3) = 576 / 32768 = 1.76% <= 2.5% < P(<= 4) = 5.92%: ranks 4 and 12.
    assert median_interval(list(range(1, 16))) == (4, 12)
    assert median_interval([3, 1, 2, 6, 5, 4]) == (1, 6)  # n = 6: P(<= 0) = 1.6%, the extremes
    assert median_interval([1, 2, 3, 4, 5]) is None  # n = 5: even the extremes cover only 93.75%
    # Coverage of a skewed distribution's true median, 4000 samples of 20 (the promise is >= 95%).
    samples = -torch.log(torch.rand(4000, 20, generator=torch.Generator().manual_seed(0)))  # Exponential(1)
    covered = sum(low <= math.log(2) <= high for low, high in map(median_interval, samples.tolist()))
    assert 0.95 <= covered / 4000 <= 0.975  # exact coverage at n = 20: 95.86%
    times = {'a': [2.0, 2.2, 1.8, 2.0, 2.1, 1.9], 'b': [1.0] * 6}
    assert ratio_cell(times, 'a', 'b') == '2.000 [1.800, 2.200]'
    assert ratio_cell({k: v[:5] for k, v in times.items()}, 'a', 'b') == '2.000'


def test_compiled_only_needs_compile():
    result = run_python(BENCHMARK + ['--compiled-only', '--devices', 'cpu'])
    assert result.returncode == 2 and '--compiled-only needs --compile' in result.stderr


@pytest.mark.parametrize('arch', list(ARCH_TYPES))
def test_released_networks_are_the_released_sizes_and_the_small_one_is_not(arch):
    args = SimpleNamespace(released=True, train_size=48, window=8, depths=None, embed_dim=48, heads=None)
    assert size_of(arch, network_kwargs(args, arch)) == arch  # presets.SIZES: SwinIR(-M), HAT, DRCT
    small = network_kwargs(SimpleNamespace(**{**vars(args), 'released': False, 'depths': [2, 2], 'heads': [2, 2]}),
                           arch)
    assert size_of(arch, small) is None and small['depths'] == [2, 2] and small['embed_dim'] == 48
    # Released width with the stages given: one residual group of the released one compiles in minutes.
    one_group = network_kwargs(SimpleNamespace(**{**vars(args), 'depths': [6], 'heads': [6]}), arch)
    released = network_kwargs(args, arch)
    assert one_group == {**released, 'depths': [6], 'num_heads': [6]} and released['depths'] != [6]


def test_released_takes_depths_and_heads_together():
    result = run_python(BENCHMARK + ['--released', '--depths', '6', '--devices', 'cpu'])
    assert result.returncode == 2 and '--released takes --depths and --heads together' in result.stderr


@pytest.mark.slow
def test_benchmark_prints_all_variants_ratios_and_block_halves(tmp_path):
    out = tmp_path / 'bench.md'
    # Threads and the benchmark's global torch settings stay in the child process.
    result = run_python(BENCHMARK + TINY + ['--block-shapes', '1x64x12', '--profile', 'SwinIR', '--out', out],
                        timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    profiles = re.findall(r'^### profile: SwinIR (\w+), 3 (training steps|inferences)$', result.stdout, re.M)
    assert profiles == [(norm, run) for norm in ('ln', 'iln', 'basicsr') for run in ('training steps', 'inferences')]
    text = out.read_text()
    for row in ('SwinIR ln', 'SwinIR iln', 'HAT ln', 'HAT iln', 'DRCT ln', 'DRCT iln', 'SwinIR ln (BasicSR)'):
        # times, memory, GFLOP train/inference, TFLOP/s train/inference, MFU '-' (no peak on CPU)
        assert re.search(rf'^\| {re.escape(row)} \| [\d.]+ \| [\d.]+ \| \d+/\d+ \|( [\d.]+/[\d.]+ \|){{2}} -/- \|$',
                         text, re.M), row
    ratios = re.findall(r'^\| (?:\w+: i-LN / LN|SwinIR ln: ours / BasicSR) \| ([\d.]+) \| ([\d.]+) \|$', text, re.M)
    assert len(ratios) == 4 and all(float(v) > 0 for pair in ratios for v in pair)
    assert re.search(r'^\| \(1, 64, 12\) \|( [\d.]+ \|){6}$', text, re.M)


def two_setting_tables(tmp_path, *flags):
    """The --out text of a SwinIR benchmark run with ``flags``, after checking that every variant has a row of a
    two-setting table: a / b (ms) and the ratio, for training and for inference."""
    out = tmp_path / 'tables.md'
    result = run_python(BENCHMARK + [*flags, '--archs', 'SwinIR', '--out', out], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    for row in ('SwinIR ln', 'SwinIR iln', 'SwinIR ln (BasicSR)'):
        assert re.search(rf'^\| {re.escape(row)} \|( [\d.]+ / [\d.]+ \| [\d.]+ \|){{2}}$', text, re.M), row
    return text


@pytest.mark.slow
def test_denormal_effect_times_every_variant_both_ways_and_says_which_setting_the_rest_ran_with(tmp_path):
    text = two_setting_tables(tmp_path, *TINY[2:], '--devices', '--denormal-effect', '--keep-denormals')
    assert 'Denormal floats are kept on the CPU' in text


def test_layout_best_paths_let_ours_pick_the_layout_and_keep_basicsr_in_its_own():
    ours, theirs = ('SwinIR', 'ln'), BASICSR
    times = {(ours, 'channels_last'): [3.0, 1.0], (ours, 'default'): [2.0, 4.0],
             ((*ours, COMPILED), 'channels_last'): [5.0, 5.0], ((*ours, COMPILED), 'default'): [4.0, 0.5],
             (theirs, 'channels_last'): [0.1, 0.1], (theirs, 'default'): [6.0, 2.0],
             ((*theirs, COMPILED), 'channels_last'): [0.1, 0.1], ((*theirs, COMPILED), 'default'): [4.0, 3.0]}
    best = with_layout_best_paths(times, ['channels_last', 'default'])
    assert best[OURS_BEST] == [2.0, 0.5] and best[BASICSR_BEST] == [4.0, 2.0]  # BasicSR's own layout only


@pytest.mark.slow
def test_channels_last_effect_times_every_variant_in_both_layouts_and_ours_against_basicsr(tmp_path):
    text = two_setting_tables(tmp_path, *TINY, '--no-memory', '--channels-last-effect')
    assert 'train channels_last / default (ms)' in text
    assert re.search(r'^\| SwinIR ln: ours in channels_last / BasicSR in the default layout \| [\d.]+ \| [\d.]+ \|$',
                     text, re.M)


def test_denormal_effect_needs_one_thread():
    result = run_python(BENCHMARK + ['--denormal-effect', '--threads', '2', '--devices'])
    assert result.returncode == 2 and '--denormal-effect needs --threads 1' in result.stderr


def test_attention_on_meta_counts_as_cudas_fused_kernel():
    """On meta SDPA would decompose into its math path; counted as CUDA runs it, it is one op forward and one
    backward (plus the sum that reduces the broadcast bias's gradient)."""
    q, k, v = (torch.empty(4, 6, 64, 32, device='meta', requires_grad=True) for _ in range(3))
    bias = torch.empty(1, 6, 64, 64, device='meta', requires_grad=True)
    with CudaAttentionOnMeta(), OpCount(pixels=1) as forward:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.2)
    grad, names = torch.empty_like(out), []

    class Names(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Names():
        out.backward(grad)
    assert out.shape == q.shape and bias.grad.shape == bias.shape and forward.ops == 1
    # The leaves' gradients are copied into their layout and the broadcast bias's gradient summed: not attention.
    assert [n for n in names if 'attention' in n or n in ('bmm', '_softmax', '_softmax_backward_data')] == \
        ['_scaled_dot_product_efficient_attention_backward'], names


def test_op_counts_alone_count_every_variant_on_the_meta_device(tmp_path):
    """``--devices`` with none given times nothing; the counts are of ops, so i-LN (more ops per norm than
    LayerNorm's one kernel) counts more than LN, and large ops are some of all ops."""
    result = run_python(BENCHMARK + TINY[2:] + ['--devices', '--op-counts', '--out', tmp_path / 'ops.md'], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    text = (tmp_path / 'ops.md').read_text()
    assert '### CPU' not in text and '### Ops per call' in text
    rows = {m[0]: [int(v) for v in m[1:]]
            for m in re.findall(r'^\| ((?:SwinIR|HAT|DRCT) i?ln(?: \(BasicSR\))?) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$',
                                text, re.M)}
    assert len(rows) == 7
    for train, train_large, infer, infer_large in rows.values():
        assert 0 < train_large <= train and 0 < infer_large <= infer and infer < train
    for arch in ('SwinIR', 'HAT', 'DRCT'):
        assert rows[f'{arch} iln'][0] > rows[f'{arch} ln'][0]
        assert re.search(rf'^\| {arch} \|( [\d.]+ \|){{4}}$', text, re.M)


@pytest.mark.slow
def test_with_data_reports_loader_full_iteration_and_compute_rates_per_source_and_worker_count(tmp_path):
    photos = tmp_path / 'photos'
    photos.mkdir()
    for i, photo in enumerate(real_photos()[:2]):
        cv2.imwrite(str(photos / f'photo{i}.png'), photo[:64, :64])
    out = tmp_path / 'bench.md'
    result = run_python(BENCHMARK + TINY + ['--archs', 'SwinIR', '--no-memory', '--with-data', '--workers', '0', '1',
                                            '--data-from', photos, '--sub-size', '32', '--peak-tflops', '1',
                                            '--out', out], timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    assert '18 HR sub-images of 32 px (x2 LR 16 px) from 2 photos' in text  # 3 x 3 per 64-px photo, step 16
    for source in ('png', 'lmdb'):
        for workers in (0, 1):
            row = re.search(rf'^\| SwinIR iln \| {source} \| {workers} \|((?: [^|]+ \|){{6}})$', text, re.M)
            assert row, (source, workers)
            *rates, mfu = [cell.strip() for cell in row.group(1).split('|')[:-1]]
            assert all(math.isfinite(float(v)) and float(v) > 0 for v in rates), row.group(0)
            assert mfu.endswith('%') and float(mfu[:-1]) > 0, row.group(0)


@pytest.mark.slow
def test_bad_block_shape_is_named():
    result = run_python(BENCHMARK + ['--block-shapes', '2x3'], timeout=120)
    assert result.returncode != 0 and "got '2x3'" in result.stderr
