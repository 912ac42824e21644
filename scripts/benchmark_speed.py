#!/usr/bin/env python
"""Speed, memory and FLOP/s of SwinIR / HAT / DRCT with LN and i-LN, our SwinIR against BasicSR's, and
whether BasicSR's data loader keeps up with the training step.

    python scripts/benchmark_speed.py [--archs SwinIR HAT DRCT] [--devices cpu cuda] [--repeats 15]
        [--batch 2 --train-size 32 --infer-size 64] [--embed-dim 48 --depths 2 2 --heads 2 2 --window 8 | --released [--depths 6 --heads 6]]
        [--precision fp32] [--peak-tflops X] [--threads 1] [--profile SwinIR] [--out results.md]
        [--block-shapes 2x1024x48 1x2304x180] [--compile [--compiled-only]] [--with-data [--workers 0 2] [--data-from DIR]
        [--sub-size 480]] [--op-counts] [--keep-denormals] [--denormal-effect]
        [--channels-last] [--channels-last-effect]

Variants: every arch x norm (ln, iln) at the same small x2 classical-SR config, plus ``basicsr``:
``basicsr.archs.swinir_arch.SwinIR`` with the weights of our SwinIR (ln); with ``--compile`` each of
them also under ``torch.compile`` (inductor, static shapes), timed in the same interleaved rounds.
Measured per variant: a training step (zero_grad, forward, L1 loss, backward, a step of the fused Adam
that IRModel trains every network with) on ``--batch`` LR crops of ``--train-size`` pixels, and inference
(eval, no_grad) on one ``--infer-size`` image; ``--precision bf16`` runs both under bf16 autocast.

Denormal floats are flushed to zero on the CPU, as the train and test CLIs do (``flush_denormal``);
``--keep-denormals`` times torch's default instead. The first line after the command says which held.
``--denormal-effect`` times every variant both ways, toggled call by call in the same rounds.
``--channels-last`` lays every network and its LR inputs out in channels_last, as option ``channels_last``
does; ``--channels-last-effect`` builds every variant both ways and times them in the same rounds, and
compares our SwinIR in channels_last with BasicSR's in the default layout (BasicSR has no such option).

Timing is interleaved: each round times every variant once, in an order rotated from round to
round, so that load changes on a shared machine hit all variants alike; times are medians over
rounds and ratios are medians of the per-round ratios (variants timed next to each other), from 6 rounds
on with a distribution-free 95% interval of that median (``median_interval``; it takes rounds as
independent, which slow load drifts make them not quite). ``--compiled-only`` times the compiled variants
only; with ``--compile`` and both, a last row compares our SwinIR LN with BasicSR's, each by its faster path
(eager or compiled) in every round.

FLOPs of one training step and of one inference are counted once per variant, outside the timed rounds,
by ``torch.utils.flop_counter.FlopCounterMode``; each timed row shows the achieved TFLOP/s and the MFU
(achieved / peak): the peak is ``--peak-tflops``, else on CUDA a datasheet value for the GPU and precision
(H100, H200, A100; see PEAK_TFLOPS), else unknown (CPU: MFU '-'). FlopCounterMode counts matrix
multiplications, convolutions and attention (SDPA; torch's CPU kernel, which it has no formula for, counted
as its CUDA kernels are) only; norms, softmax, elementwise ops and the optimizer step count nothing, so the
MFU is a lower bound of the work the hardware does.

``--with-data`` adds the whole training iteration with data loading, for ``(arch, iln)`` of SwinIR (or of
each ``--archs`` given): HR sub-images of ``--sub-size`` px (BasicSR's extract_subimages scheme, step
half the size; 480 as for DF2K) and their x2 MATLAB-bicubic LR, cut from a few real photos
(``--data-from``: ../shared/datasets/train/Sun_Hays80 beside the clone, else the quickstart's photos
bundled with scikit-image) into a temporary folder, once as PNG files and once as LMDB
(``make_lmdb_from_imgs``), read by BasicSR's ``PairedImageDataset`` (training crops, flips, rotations) and
``build_dataloader`` with each of ``--workers`` (one loader per source and worker count serves every
variant). Per source and worker count: loader-only samples/s (batches taken, nothing else), full-iteration
samples/s (next batch, ``.to(device)``, training step; on CUDA from page-locked batches, copied without
blocking) and its ratio to compute-only samples/s (the same steps on fixed tensors), all in the same
interleaved rounds; each timed call takes several batches after emptying the loader's prefetch queue (filled
while other calls ran).
The files were just written, so they are read from the OS page cache: decoding is measured, disk reads are not.

``--block-shapes BxLxC ...`` adds the same LN vs i-LN comparison for one block half alone (norm,
a Linear branch, residual) on (B, L, C) tokens: forward + backward, and forward without autograd.
It isolates what i-LN changes from the attention and MLP it leaves alone.

``--op-counts`` counts, for every variant, the ops a training forward + backward and an inference dispatch on
the meta device (views excluded), and those among them that read or write a large tensor. The meta device
takes the branches CUDA takes without computing anything (attention is counted as CUDA's memory-efficient
kernel, one op each way), and an eager GPU launches one kernel per op, so this is the machine-independent part
of what an eager GPU step costs; ``--devices`` with no device skips the timing.

Peak memory of one inference and of one training step (after a warm-up step, with the gradients
already released, so weights and Adam states are in place and not counted): on CUDA
``torch.cuda.max_memory_allocated`` above the memory allocated before; on CPU the running sum of
torch's allocations and frees recorded by ``torch.profiler(profile_memory=True)``, its maximum above
the start (tracemalloc does not see torch's allocator, and ``ru_maxrss`` of this process is set by
imports and model building, far above a small network's activations).
"""
import argparse
import contextlib
import itertools
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'scripts'))
sys.path.insert(0, str(REPO / 'scripts' / 'data_preparation'))

import basicsr_iln  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from basicsr.archs.swinir_arch import SwinIR as BasicSRSwinIR  # noqa: E402
from basicsr.data import build_dataloader  # noqa: E402
from basicsr.data.data_sampler import EnlargedSampler  # noqa: E402
from basicsr.data.paired_image_dataset import PairedImageDataset  # noqa: E402
from basicsr.data.transforms import mod_crop  # noqa: E402
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count  # noqa: E402

from basicsr_iln.archs.norms import build_branch_norm, residual_add  # noqa: E402
from basicsr_iln.models.ir_model import adam_kwargs  # noqa: E402
from basicsr_iln.presets import backbone_kwargs  # noqa: E402
from basicsr_iln.utils.denormals import add_keep_denormals_argument, set_denormal_flushing  # noqa: E402
from basicsr_iln.utils.errors import ConfigError, run_cli  # noqa: E402
from basicsr_iln.utils.memory_format import (add_channels_last_argument, image_memory_format,  # noqa: E402
                                             to_memory_format)
from make_quickstart_dataset import TRAIN_PHOTOS, load_photo  # noqa: E402
from prepare_sr import bicubic_downsample, crop_starts, list_images, make_lmdb, read_image, write_png  # noqa: E402

ARCH_TYPES = {'SwinIR': 'SwinIR_iLN', 'HAT': 'HAT', 'DRCT': 'DRCT'}
NORMS = ('ln', 'iln')
BASICSR = ('SwinIR', 'basicsr')
COMPILED = 'compiled'  # third element of a variant: torch.compile (inductor, static shapes)
OURS_BEST, BASICSR_BEST = ('SwinIR', 'ln', 'best'), (*BASICSR, 'best')
SCALE = 2
SMALL_DEPTHS, SMALL_HEADS = [2, 2], [2, 2]  # the small default network's stages
SHARED_PHOTOS = REPO.parent / 'shared' / 'datasets' / 'train' / 'Sun_Hays80'
DATA_PHOTOS = 4  # photos cut into sub-images for --with-data
DATA_ITERS = 8  # batches per timed data call: enough for the workers' parallelism to show
# --op-counts: an op on a tensor of this many values per LR pixel of the call passes over a feature map or attention
# scores (60-180 channels per pixel), not over per-sample or per-channel statistics
LARGE_PER_PIXEL = 16

# Dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets, by a substring of the CUDA device name and by
# --precision: H100 SXM5 and H200 SXM: bf16 tensor cores 989, fp32 on the CUDA cores 67; A100 SXM4: bf16
# 312, fp32 19.5. fp32 assumes no TF32, torch's default for matmuls (cuDNN convolutions may use TF32, so
# an fp32 MFU can be a little high). PCIe and NVL boards are left out (the H100/H200 ones run lower clocks):
# give --peak-tflops for them and for other GPUs.
PEAK_TFLOPS = {'H100': {'fp32': 67.0, 'bf16': 989.0}, 'H200': {'fp32': 67.0, 'bf16': 989.0},
               'A100': {'fp32': 19.5, 'bf16': 312.0}}


def network_kwargs(args, arch):
    """The x2 classical-SR network of ``arch``: its released size (presets.SIZES) with ``--released`` (with the
    stages of ``--depths``/``--heads`` when given), else the small config of the size options (HAT with
    compress_ratio 3, squeeze_factor 16)."""
    kwargs = dict(upscale=SCALE, in_chans=3, img_size=args.train_size)
    if args.released:
        stages = dict(depths=args.depths, num_heads=args.heads) if args.depths else {}
        return {**kwargs, **backbone_kwargs(arch, 'SR'), **stages}
    kwargs.update(window_size=args.window, img_range=1.0, depths=args.depths, embed_dim=args.embed_dim,
                  num_heads=args.heads, mlp_ratio=2, upsampler='pixelshuffle', resi_connection='1conv')
    if arch == 'HAT':
        kwargs.update(compress_ratio=3, squeeze_factor=16)
    return kwargs


def config_text(args):
    if args.released:
        stages = f', with depths {args.depths} and heads {args.heads}' if args.depths else ''
        return (f'x2 pixelshuffle, the released size of each arch ({", ".join(args.archs)}; basicsr_iln/presets.py)'
                + stages)
    return (f'x2 pixelshuffle, embed_dim {args.embed_dim}, depths {args.depths}, heads {args.heads}, window '
            f'{args.window}')


def setup_text(args):
    """The network, inputs, precision and rounds of a timed table, as one sentence."""
    return (f'Config: {config_text(args)}; training batch {args.batch} x {args.train_size}^2 LR, inference 1 x '
            f'{args.infer_size}^2 LR; {args.precision}; {args.repeats} interleaved rounds after {args.warmup} warm-up.')


def cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query, key, value)


def cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode has formulas for the CUDA attention kernels but not for the CPU one (our inference on CPU):
# count it the same way, so that CPU and CUDA rows count the same work.
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops,
                       torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
                       cpu_attention_backward_flops}


def counted_flops(run):
    """FLOPs of ``run()``: matmuls, convolutions and attention only (see the module docstring)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        run()
    return counter.get_total_flops()


def build(args, variant, device):
    """The network of ``variant`` = (arch, norm or 'basicsr'), seeded so LN/i-LN start alike."""
    arch, norm = variant
    torch.manual_seed(0)
    kwargs = network_kwargs(args, arch)
    if norm == 'basicsr':
        ours = ARCH_REGISTRY.get('SwinIR_iLN')(**kwargs, norm_type='ln')
        net = BasicSRSwinIR(**kwargs)
        net.load_state_dict(ours.state_dict(), strict=True)  # same config and weights as ours (ln)
    else:
        net = ARCH_REGISTRY.get(ARCH_TYPES[arch])(**kwargs, norm_type=norm)
    return net.to(device)


class Bench:
    """One variant's network, optimizer and inputs; ``train_step``/``infer`` return seconds. ``channels_last``:
    network and LR inputs in that memory format, as option ``channels_last`` lays them out (None: as
    ``--channels-last``)."""

    def __init__(self, args, variant, device, channels_last=None):
        self.device = device
        self.bf16 = args.precision == 'bf16'
        self.channels_last = args.channels_last if channels_last is None else channels_last
        self.net = to_memory_format(build(args, variant[:2], device), self.channels_last)
        if compiled(variant):  # static shapes, as option `compile` defaults to (dynamic tracing hangs)
            self.net = torch.compile(self.net, dynamic=False)
        params = list(self.net.parameters())  # the Adam IRModel trains with, for every variant alike
        self.optimizer = torch.optim.Adam(params, lr=1e-4, **adam_kwargs(params, {}))
        gen = torch.Generator().manual_seed(1)
        layout, size = image_memory_format(self.channels_last), args.train_size
        self.lq = torch.rand(args.batch, 3, size, size, generator=gen).to(device, memory_format=layout)
        self.gt = torch.rand(args.batch, 3, SCALE * size, SCALE * size, generator=gen).to(device)
        self.image = torch.rand(1, 3, args.infer_size, args.infer_size, generator=gen).to(device, memory_format=layout)

    def sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_on(self, lq, gt, zero_grad=True):
        """One training step on ``lq``/``gt``, untimed (the network must be in train mode)."""
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = F.l1_loss(self.net(lq), gt)
        loss.backward()
        self.optimizer.step()

    def train_step(self, zero_grad=True):
        self.net.train()
        self.sync()
        start = time.perf_counter()
        self.train_on(self.lq, self.gt, zero_grad)
        self.sync()
        return time.perf_counter() - start

    def infer(self):
        self.net.eval()
        self.sync()
        start = time.perf_counter()
        with torch.no_grad(), self._autocast():
            self.net(self.image)
        self.sync()
        return time.perf_counter() - start

    def flops(self):
        """(training step, inference) FLOPs, counted on one call of each (it also warms the network up)."""
        return counted_flops(self.train_step), counted_flops(self.infer)


class BlockHalfBench:
    """``x + scale * Linear(norm(x))`` of one norm type on (B, L, C) tokens; same interface as Bench."""

    def __init__(self, shape, norm_type):
        torch.manual_seed(0)
        self.norm = build_branch_norm(norm_type, shape[-1])
        self.branch = torch.nn.Linear(shape[-1], shape[-1])
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(*shape, generator=gen)
        self.grad = torch.randn(*shape, generator=gen)

    def _forward(self, x):
        y, scale = self.norm(x)
        return residual_add(x, self.branch(y), scale)

    def train_step(self):
        x = self.x.clone().requires_grad_()
        start = time.perf_counter()
        self._forward(x).backward(self.grad)
        return time.perf_counter() - start

    def infer(self):
        start = time.perf_counter()
        with torch.no_grad():
            self._forward(self.x)
        return time.perf_counter() - start


def block_half_benchmark(args):
    """LN vs i-LN for one block half per shape in ``args.block_shapes`` (CPU)."""
    lines = ['| tokens (B, L, C) | ln fwd+bwd (ms) | iln fwd+bwd (ms) | ratio | ln fwd (ms) | iln fwd (ms) | ratio |',
             '|---|---|---|---|---|---|---|']
    for shape in args.block_shapes:
        benches = {norm: BlockHalfBench(shape, norm) for norm in NORMS}
        train = interleaved_times({n: b.train_step for n, b in benches.items()}, 10 * args.repeats, args.warmup)
        infer = interleaved_times({n: b.infer for n, b in benches.items()}, 10 * args.repeats, args.warmup)
        cells = []
        for times in (train, infer):
            cells += [f'{statistics.median(times[n]) * 1e3:.3f}' for n in NORMS]
            cells.append(f'{paired_ratio(times, "iln", "ln"):.3f}')
        lines.append(f'| {tuple(shape)} | ' + ' | '.join(cells) + ' |')
    return lines


def token_shape(text):
    try:
        shape = tuple(int(n) for n in text.lower().split('x'))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected BxLxC with positive integers (e.g. 2x1024x48), got '{text}'")
    return shape


def cpu_peak_bytes(run):
    """Maximum of the running sum of torch's CPU allocations/frees during ``run()``, above the start."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]'),
                    key=lambda e: e.start_ns())
    level = peak = 0
    for event in events:
        level += event.nbytes()
        peak = max(peak, level)
    return peak


def cuda_peak_bytes(run):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    return torch.cuda.max_memory_allocated() - base


def peak_memory(args, variant, device):
    """(inference, training step) peak bytes; see the module docstring."""
    bench = Bench(args, variant, device)
    bench.train_step()
    bench.optimizer.zero_grad(set_to_none=True)
    measure = cuda_peak_bytes if device.type == 'cuda' else cpu_peak_bytes
    return measure(bench.infer), measure(lambda: bench.train_step(zero_grad=False))


def interleaved_times(runs, repeats, warmup):
    """{key: [seconds per round]} of ``runs`` = {key: call returning seconds}; each round calls every run
    once, rotating the order."""
    keys = list(runs)
    for _ in range(warmup):
        for k in keys:
            runs[k]()
    times = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[k].append(runs[k]())
    return times


def per_round_ratios(times, num, den):
    return [a / b for a, b in zip(times[num], times[den])]


def paired_ratio(times, num, den):
    return statistics.median(per_round_ratios(times, num, den))


def median_interval(values, level=0.95):
    """Distribution-free interval of the median of ``values``: the order statistics k and n + 1 - k, k the
    largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2, so it covers the median with probability >=
    ``level`` whatever the distribution; None when n is too small for any (under 6 values at 95%)."""
    n, k, tail = len(values), 0, 0.0
    while tail + math.comb(n, k) / 2**n <= (1 - level) / 2:
        tail += math.comb(n, k) / 2**n
        k += 1
    ordered = sorted(values)
    return (ordered[k - 1], ordered[n - k]) if k else None


def with_best_paths(times):
    """``times`` plus, per round, the faster of eager and compiled of each SwinIR LN (ours: OURS_BEST, BasicSR's:
    BASICSR_BEST): the best path a user of either code could pick, which issue 17's ours / BasicSR targets
    compare."""
    best = dict(times)
    for key, v in ((OURS_BEST, ('SwinIR', 'ln')), (BASICSR_BEST, BASICSR)):
        best[key] = per_round_best(times, [p for p in (v, (*v, COMPILED)) if p in times])
    return best


def per_round_best(times, keys):
    """Per round, the shortest time among ``keys``."""
    return [min(round_) for round_ in zip(*(times[k] for k in keys))]


def ratio_cell(times, num, den):
    """'median [95% interval]' of the per-round ratios num / den; the median alone under 6 rounds."""
    ratios = per_round_ratios(times, num, den)
    interval = median_interval(ratios)
    median = f'{statistics.median(ratios):.3f}'
    return f'{median} [{interval[0]:.3f}, {interval[1]:.3f}]' if interval else median


def compiled(variant):
    return variant[-1] == COMPILED


def name(variant):
    base = 'SwinIR ln (BasicSR)' if variant[:2] == BASICSR else f'{variant[0]} {variant[1]}'
    return f'{base}, compiled' if compiled(variant) else base


def known_peak_tflops(device_name, precision):
    """Datasheet peak of a CUDA device (PEAK_TFLOPS), None for boards and GPUs not in the table."""
    if 'pcie' in device_name.lower() or 'nvl' in device_name.lower():
        return None
    return next((peaks[precision] for gpu, peaks in PEAK_TFLOPS.items() if gpu in device_name), None)


def peak_tflops(args, device):
    """(peak TFLOP/s or None, where it comes from) for the MFU column."""
    if args.peak_tflops:
        return args.peak_tflops, '--peak-tflops'
    if device.type == 'cuda':
        peak = known_peak_tflops(torch.cuda.get_device_name(device), args.precision)
        if peak:
            return peak, f'datasheet, {args.precision} dense'
    return None, 'unknown'


def throughput_cells(flops, seconds, peak):
    """(achieved TFLOP/s, MFU) as table cells; MFU '-' without a peak."""
    achieved = flops / seconds / 1e12
    return f'{achieved:.4f}', f'{100 * achieved / peak:.1f}%' if peak else '-'


def hardware(device):
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)}, torch {torch.__version__}'
    cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                if line.startswith('model name')), platform.processor())
    return (f'{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, '
            f'load average {os.getloadavg()[0]:.1f} at start')


def eager_variants(archs):
    """Every arch x norm, and BasicSR's SwinIR when SwinIR is among ``archs``."""
    return [(arch, norm) for arch in archs for norm in NORMS] + ([BASICSR] if 'SwinIR' in archs else [])


def profile(args, arch, device):
    """torch.profiler tables of three training steps and three inferences of ``arch`` with LN and with i-LN
    (SwinIR: and BasicSR's), eager."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    for variant in eager_variants([arch]):
        bench = Bench(args, variant, device)
        for name, run in (('training steps', bench.train_step), ('inferences', bench.infer)):
            for _ in range(args.warmup):
                run()
            with torch_profile(activities=activities) as prof:
                for _ in range(3):
                    run()
            print(f"\n### profile: {arch} {variant[1]}, 3 {name}\n")
            print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=15))


def allow_compiles_of_every_variant(count):
    """Raise dynamo's per-function recompile limit (8) above what the variants need. All networks share the
    code of RestorationTransformer.forward and the block forwards, and each network, in training and in
    eval mode, is one more compiled entry of that code: past the limit dynamo silently runs the frame eager,
    so the "compiled" rows of the later variants measured eager code."""
    needed = 4 * count  # train and eval mode, and a margin for the guards' own recompiles
    for name in ('recompile_limit', 'cache_size_limit'):  # the name since torch 2.6 / before
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), needed))
            return


class OpCount(TorchDispatchMode):
    """Ops dispatched, views excluded (each is a kernel launch on a GPU), and how many of them read or write a
    tensor of at least LARGE_PER_PIXEL values per LR pixel of the call (``pixels``)."""

    def __init__(self, pixels):
        super().__init__()
        self.ops = self.large = 0
        self.threshold = LARGE_PER_PIXEL * pixels

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func is not torch.ops.aten.detach.default:
            self.ops += 1
            tensors = [*(out if isinstance(out, (tuple, list)) else [out]), *args]
            self.large += any(torch.is_tensor(t) and t.numel() >= self.threshold for t in tensors)
        return out


def _sdpa_arguments(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    return query, key, value, attn_mask, dropout_p, is_causal, scale


class CudaAttentionOnMeta(TorchFunctionMode):
    """SDPA on the meta device as CUDA runs it with an additive mask, through the memory-efficient kernel: one
    op forward and one backward (on meta, SDPA itself would take its math path, about ten ops)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not F.scaled_dot_product_attention:
            return func(*args, **(kwargs or {}))
        q, k, v, mask, dropout_p, is_causal, scale = _sdpa_arguments(*args, **(kwargs or {}))
        bias = None if mask is None else mask.expand(*q.shape[:3], k.shape[2])
        inputs = (q, k, v) if mask is None else (q, k, v, mask)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, needs_grad, dropout_p, is_causal,
                                                                      scale=scale)[0]


def op_counts(args):
    """``--op-counts``: ops of a training forward + backward and of an inference of each variant, on the meta
    device, which takes the branches CUDA takes (padded heads, i-LN's off-CPU function) without computing;
    attention counted as CUDA's fused kernel (CudaAttentionOnMeta)."""
    meta = torch.device('meta')
    counts = {}
    for variant in eager_variants(args.archs):
        net = build(args, variant, meta)
        lq = torch.empty(args.batch, 3, args.train_size, args.train_size, device=meta)
        gt = torch.empty(args.batch, 3, SCALE * args.train_size, SCALE * args.train_size, device=meta)
        with CudaAttentionOnMeta(), OpCount(args.batch * args.train_size**2) as train:
            F.l1_loss(net.train()(lq), gt).backward()
        with torch.no_grad(), CudaAttentionOnMeta(), OpCount(args.infer_size**2) as infer:
            net.eval()(torch.empty(1, 3, args.infer_size, args.infer_size, device=meta))
        counts[variant] = train, infer
    lines = ['### Ops per call (meta device: the branches CUDA takes, nothing computed)', '',
             f'Training forward + backward on {args.batch} x {args.train_size}^2 LR (no optimizer step), inference on '
             f'1 x {args.infer_size}^2; network: {config_text(args)}. Ops dispatched, views excluded; "large": '
             f'reading or writing a tensor of at least {LARGE_PER_PIXEL} values per LR pixel (feature maps, '
             'attention scores; not per-sample or per-channel statistics).', '',
             '| variant | training ops | of them large | inference ops | of them large |', '|---|---|---|---|---|']
    for variant, (train, infer) in counts.items():
        lines.append(f'| {name(variant)} | {train.ops} | {train.large} | {infer.ops} | {infer.large} |')
    lines += ['', '| i-LN / LN | training ops | large | inference ops | large |', '|---|---|---|---|---|']
    for arch in args.archs:
        (train, infer), (train_ln, infer_ln) = counts[(arch, 'iln')], counts[(arch, 'ln')]
        cells = [a / b for a, b in ((train.ops, train_ln.ops), (train.large, train_ln.large),
                                    (infer.ops, infer_ln.ops), (infer.large, infer_ln.large))]
        lines.append(f'| {arch} | ' + ' | '.join(f'{c:.3f}' for c in cells) + ' |')
    return lines


def benchmark(args, device):
    eager = eager_variants(args.archs)
    compiled_variants = [(*v, COMPILED) for v in eager] if args.compile else []
    variants = compiled_variants if args.compiled_only else eager + compiled_variants
    if args.compile:
        allow_compiles_of_every_variant(len(eager))
    benches = {v: Bench(args, v, device) for v in variants}
    # Compiled networks do the same work; FlopCounterMode counts it on the eager ones.
    flops = {v: (benches[v] if v in benches else Bench(args, v, device)).flops() for v in eager}
    train = interleaved_times({v: b.train_step for v, b in benches.items()}, args.repeats, args.warmup)
    infer = interleaved_times({v: b.infer for v, b in benches.items()}, args.repeats, args.warmup)
    del benches
    peak, peak_source = peak_tflops(args, device)
    memory = {v: peak_memory(args, v, device) for v in eager} if args.memory else {}

    mem_kind = 'max_memory_allocated' if device.type == 'cuda' else 'torch.profiler allocations'
    lines = [f'### {device.type.upper()}: {hardware(device)}', '',
             f'{setup_text(args)} FLOPs: FlopCounterMode (matmul, conv, attention only); peak for MFU: '
             f'{f"{peak:g} TFLOP/s" if peak else "-"} ({peak_source}).', '',
             f'| variant | train step (ms, median) | inference (ms, median) | peak memory train / inference (MiB, '
             f'{mem_kind}) | GFLOP train / inference | TFLOP/s train / inference | MFU train / inference |',
             '|---|---|---|---|---|---|---|']
    for v in variants:
        mem = '/'.join(f'{m / 2**20:.0f}' for m in memory[v][::-1]) if v in memory else 'not measured'
        train_flops, infer_flops = flops[v[:2]]
        train_s, infer_s = statistics.median(train[v]), statistics.median(infer[v])
        (train_rate, train_mfu), (infer_rate, infer_mfu) = (throughput_cells(train_flops, train_s, peak),
                                                            throughput_cells(infer_flops, infer_s, peak))
        lines.append(f'| {name(v)} | {train_s * 1e3:.1f} | {infer_s * 1e3:.1f} | {mem} | '
                     f'{train_flops / 1e9:.3f}/{infer_flops / 1e9:.3f} | {train_rate}/{infer_rate} | '
                     f'{train_mfu}/{infer_mfu} |')
    lines += ['', '| ratio: median of the per-round ratios [95% interval of that median; from 6 rounds] | '
              'train step | inference |', '|---|---|---|']

    def ratio_row(label, num, den):
        lines.append(f'| {label} | {ratio_cell(train, num, den)} | {ratio_cell(infer, num, den)} |')

    for suffix in ([] if args.compiled_only else [()]) + ([(COMPILED,)] if args.compile else []):
        label = ' compiled' if suffix else ''
        for arch in args.archs:
            ratio_row(f'{arch}{label}: i-LN / LN', (arch, 'iln', *suffix), (arch, 'ln', *suffix))
        if BASICSR in eager:
            ratio_row(f'SwinIR ln{label}: ours / BasicSR', ('SwinIR', 'ln', *suffix), (*BASICSR, *suffix))
    if args.compile and not args.compiled_only:
        for v in eager:
            ratio_row(f'{name(v)}: compiled / eager', (*v, COMPILED), v)
        if BASICSR in eager:
            train, infer = with_best_paths(train), with_best_paths(infer)
            ratio_row('SwinIR ln, best path of each (eager or compiled, per round): ours / BasicSR', OURS_BEST,
                      BASICSR_BEST)
    return lines


def denormal_benchmark(args):
    """Each variant with denormals kept / flushed, toggled before every call in the same interleaved rounds
    (CPU, one thread: the flag is the calling thread's). Ends with the setting of ``--keep-denormals``."""
    variants = effect_variants(args)
    benches = {v: Bench(args, v, torch.device('cpu')) for v in variants}

    def toggled(run, flush):
        def timed():
            torch.set_flush_denormal(flush)
            return run()
        return timed

    modes = {'kept': False, 'flushed': True}
    times = {kind: interleaved_times({(v, mode): toggled(getattr(b, kind), flush) for v, b in benches.items()
                                      for mode, flush in modes.items()}, args.repeats, args.warmup)
             for kind in ('train_step', 'infer')}
    torch.set_flush_denormal(not args.keep_denormals)
    return [setup_text(args), ''] + effect_table(variants, times, list(modes))


def channels_last_benchmark(args, device):
    """Each variant built twice, in channels_last and in the default memory format, timed in the same
    interleaved rounds."""
    variants = effect_variants(args, networks_per_variant=2)
    modes = {'channels_last': True, 'default': False}
    benches = {(v, mode): Bench(args, v, device, channels_last=cl) for v in variants for mode, cl in modes.items()}
    times = {kind: interleaved_times({key: getattr(b, kind) for key, b in benches.items()}, args.repeats, args.warmup)
             for kind in ('train_step', 'infer')}
    lines = [setup_text(args), ''] + effect_table(variants, times, list(modes))
    if BASICSR in variants:  # BasicSR has no such option: ours with it against BasicSR as it runs
        lines += ['', '| ratio [95% interval] | train step | inference |', '|---|---|---|']
        for suffix in [()] + ([(COMPILED, )] if args.compile else []):
            ours, theirs = (('SwinIR', 'ln', *suffix), 'channels_last'), ((*BASICSR, *suffix), 'default')
            lines.append(f'| SwinIR ln{" compiled" if suffix else ""}: ours in channels_last / BasicSR in the default '
                         f'layout | {ratio_cell(times["train_step"], ours, theirs)} | '
                         f'{ratio_cell(times["infer"], ours, theirs)} |')
        if args.compile:
            train, infer = (with_layout_best_paths(times[kind], list(modes)) for kind in ('train_step', 'infer'))
            lines.append(f'| SwinIR ln, best path of each (ours: eager or compiled, either layout; BasicSR: eager or '
                         f'compiled): ours / BasicSR | {ratio_cell(train, OURS_BEST, BASICSR_BEST)} | '
                         f'{ratio_cell(infer, OURS_BEST, BASICSR_BEST)} |')
    return lines


def with_layout_best_paths(times, modes):
    """``times`` of one kind, keyed (variant, layout mode), plus per round the fastest of our SwinIR LN over
    eager / compiled in either layout (OURS_BEST) and of BasicSR's over eager / compiled in the default layout
    (BASICSR_BEST): what a user of either code can pick, and BasicSR has no layout option."""
    paths = [(), (COMPILED, )]
    best = dict(times)
    best[OURS_BEST] = per_round_best(times, [(('SwinIR', 'ln', *p), mode) for p in paths for mode in modes])
    best[BASICSR_BEST] = per_round_best(times, [((*BASICSR, *p), 'default') for p in paths])
    return best


def effect_variants(args, networks_per_variant=1):
    """The variants of a two-setting table: every eager one, and with ``--compile`` its compiled form too."""
    eager = eager_variants(args.archs)
    if not args.compile:
        return eager
    allow_compiles_of_every_variant(networks_per_variant * len(eager))
    return eager + [(*v, COMPILED) for v in eager]


def effect_table(variants, times, modes):
    """Markdown rows of each variant under the two settings ``modes`` = [a, b]: medians a / b (ms) and the
    median of the per-round ratios a / b, for training steps and inference; ``times[kind][(variant, mode)]``."""
    a, b = modes
    lines = [f'| variant | train {a} / {b} (ms) | train: {a} / {b} | inference {a} / {b} (ms) | '
             f'inference: {a} / {b} |', '|---|---|---|---|---|']
    for v in variants:
        cells = []
        for kind in ('train_step', 'infer'):
            first, second = (statistics.median(times[kind][(v, mode)]) * 1e3 for mode in modes)
            cells += [f'{first:.1f} / {second:.1f}', ratio_cell(times[kind], (v, a), (v, b))]
        lines.append(f'| {name(v)} | ' + ' | '.join(cells) + ' |')
    return lines


def source_photos(folder, size):
    """The first DATA_PHOTOS photos (uint8, as stored) of ``folder``, or of the quickstart's without one, of
    at least ``size`` px each way (smaller ones hold no sub-image)."""
    photos = (load_photo(n) for n in TRAIN_PHOTOS) if folder is None else \
        (read_image(str(folder / n)) for n in list_images(str(folder)))
    chosen = list(itertools.islice((p for p in photos if min(p.shape[:2]) >= size), DATA_PHOTOS))
    if not chosen:
        raise ConfigError(f'no photo of {folder or "the quickstart"} is at least --sub-size {size} px each way')
    return chosen


def write_sub_images(photos, hr_folder, lr_folder, size):
    """HR sub-images of ``size`` px every ``size / 2`` px (BasicSR's extract_subimages scheme) and the same
    regions of the photo's x2 bicubic LR, as PNGs of the same names; returns how many."""
    hr_folder.mkdir()
    lr_folder.mkdir()
    count = 0
    for photo in photos:
        hr = mod_crop(photo, SCALE)  # still >= size: size is even
        lr = bicubic_downsample(hr, SCALE)
        for top in crop_starts(hr.shape[0], size, size // 2, 0):
            for left in crop_starts(hr.shape[1], size, size // 2, 0):
                count += 1
                write_png(hr[top:top + size, left:left + size], str(hr_folder / f's{count:05d}.png'))
                lr_top, lr_left, lr_size = top // SCALE, left // SCALE, size // SCALE
                write_png(lr[lr_top:lr_top + lr_size, lr_left:lr_left + lr_size], str(lr_folder / f's{count:05d}.png'))
    return count


def write_data_sources(args, root):
    """({source: (GT path, LQ path, io backend)}, what they hold): the sub-images as PNG folders and as LMDBs."""
    photos = source_photos(args.data_from, args.sub_size)
    count = write_sub_images(photos, root / 'HR', root / 'LR', args.sub_size)
    with contextlib.redirect_stdout(sys.stderr):  # make_lmdb_from_imgs prints its progress; stdout is the tables'
        for folder in ('HR', 'LR'):
            make_lmdb(str(root / folder), str(root / f'{folder}.lmdb'))
    origin = args.data_from or 'the quickstart photos (scikit-image)'
    return ({'png': (root / 'HR', root / 'LR', 'disk'), 'lmdb': (root / 'HR.lmdb', root / 'LR.lmdb', 'lmdb')},
            f'{count} HR sub-images of {args.sub_size} px (x2 LR {args.sub_size // SCALE} px) from {len(photos)} '
            f'photos of {origin}')


class LoaderFeed:
    """BasicSR's training loader (PairedImageDataset, build_dataloader) over one source with ``workers``
    workers. Its sampler's epoch (BasicSR's enlarge ratio) covers ``calls`` timed calls, so no worker
    restarts inside the rounds, as in a training run between epochs. For a GPU the batches are page-locked
    and copied without blocking, as the training option files and IRModel.feed_data do."""

    def __init__(self, args, source, workers, calls, device):
        gt, lq, backend = source
        opt = dict(phase='train', scale=SCALE, gt_size=SCALE * args.train_size, use_hflip=True, use_rot=True,
                   dataroot_gt=str(gt), dataroot_lq=str(lq), io_backend={'type': backend},
                   batch_size_per_gpu=args.batch, num_worker_per_gpu=workers, pin_memory=device.type == 'cuda')
        dataset = PairedImageDataset(opt)
        self.prefetched = 2 * workers  # DataLoader's prefetch_factor (2) batches per worker
        batches = calls * (self.prefetched + 1 + DATA_ITERS)
        sampler = EnlargedSampler(dataset, 1, 0, ratio=math.ceil(batches * args.batch / len(dataset)))
        self.batches = iter(build_dataloader(dataset, opt, num_gpu=1, sampler=sampler, seed=0))

    def _skip_prefetched(self):
        """Empty the prefetch queue, filled while other calls ran: the timed batches are made while timed."""
        for _ in range(self.prefetched):
            next(self.batches)

    def load(self):
        """Seconds to take DATA_ITERS batches."""
        self._skip_prefetched()
        start = time.perf_counter()
        for _ in range(DATA_ITERS):
            next(self.batches)
        return time.perf_counter() - start

    def _next_on(self, bench):
        batch = next(self.batches)
        return (batch['lq'].to(bench.device, non_blocking=True, memory_format=image_memory_format(bench.channels_last)),
                batch['gt'].to(bench.device, non_blocking=True))

    def train(self, bench):
        """Seconds of DATA_ITERS whole iterations of ``bench``: next batch, to(device), training step."""
        self._skip_prefetched()
        bench.net.train()
        bench.train_on(*self._next_on(bench))  # untimed: waits for the first batch after the skip
        bench.sync()
        start = time.perf_counter()
        for _ in range(DATA_ITERS):
            bench.train_on(*self._next_on(bench))
        bench.sync()
        return time.perf_counter() - start


def compute_steps(bench):
    """Seconds of DATA_ITERS training steps on fixed tensors: the compute-only reference of the data rows."""
    return sum(bench.train_step() for _ in range(DATA_ITERS))


def data_benchmark(args, device):
    """Loader-only, full-iteration and compute-only samples/s per (arch, iln), source and worker count."""
    variants = [(arch, 'iln') for arch in args.data_archs]
    with tempfile.TemporaryDirectory(prefix='benchmark_speed_data_') as tmp:
        sources, described = write_data_sources(args, Path(tmp))
        benches = {v: Bench(args, v, device) for v in variants}
        flops = {v: benches[v].flops()[0] for v in variants}
        calls = (args.warmup + args.repeats) * (1 + len(variants))
        feeds = {(s, w): LoaderFeed(args, source, w, calls, device) for s, source in sources.items()
                 for w in args.workers}
        runs = {('compute', v): partial(compute_steps, b) for v, b in benches.items()}
        runs.update({('load', f): feed.load for f, feed in feeds.items()})
        runs.update({('full', v, f): partial(feed.train, benches[v]) for v in variants for f, feed in feeds.items()})
        times = interleaved_times(runs, args.repeats, args.warmup)
        del feeds, runs  # stops the workers before the folder goes

    peak, _ = peak_tflops(args, device)

    def rate(key):
        return DATA_ITERS * args.batch / statistics.median(times[key])

    lines = [f'### Data loading + training step, {device.type.upper()}: {hardware(device)}', '',
             f'Data: {described}, PNG files and LMDB, in the page cache; PairedImageDataset, '
             f'GT crop {SCALE * args.train_size}, flips and rotations, batch {args.batch}; {args.repeats} '
             f'interleaved rounds of {DATA_ITERS} iterations per call after {args.warmup} warm-up; '
             f'network as above, {args.precision}.', '',
             '| variant | source | workers | loader only (samples/s) | full iteration (samples/s) | '
             'compute only (samples/s) | full / compute-only | full iteration TFLOP/s | MFU |',
             '|---|---|---|---|---|---|---|---|---|']
    for v in variants:
        for source, workers in itertools.product(sources, args.workers):
            full = ('full', v, (source, workers))
            achieved, mfu = throughput_cells(DATA_ITERS * flops[v], statistics.median(times[full]), peak)
            lines.append(f'| {name(v)} | {source} | {workers} | {rate(("load", (source, workers))):.1f} | '
                         f'{rate(full):.1f} | {rate(("compute", v)):.1f} | '
                         f'{paired_ratio(times, ("compute", v), full):.3f} | {achieved} | {mfu} |')
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--archs', nargs='+', choices=list(ARCH_TYPES),
                        help='default: all; the --with-data rows: SwinIR unless given')
    parser.add_argument('--devices', nargs='*', default=['cpu', 'cuda'], choices=['cpu', 'cuda'],
                        help='cuda is skipped when not available; none given: nothing timed (--op-counts only)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--train-size', type=int, default=32, help='LR training crop (a window multiple)')
    parser.add_argument('--infer-size', type=int, default=64, help='LR inference image size')
    parser.add_argument('--embed-dim', type=int, default=48)
    parser.add_argument('--depths', type=int, nargs='+', help=f'blocks per stage (default {SMALL_DEPTHS})')
    parser.add_argument('--heads', type=int, nargs='+', help=f'heads per stage (default {SMALL_HEADS})')
    parser.add_argument('--window', type=int, default=8)
    parser.add_argument('--released', action='store_true', help="each arch at its released size instead of "
                        '--embed-dim/--window (--train-size: a multiple of its window); with --depths and --heads, '
                        'at its released width with those stages (one residual group compiles far faster than all)')
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=1, help='CPU threads (1: least disturbed by other load)')
    parser.add_argument('--precision', choices=['fp32', 'bf16'], default='fp32',
                        help='bf16: training steps and inference under bf16 autocast')
    parser.add_argument('--peak-tflops', type=float, help='peak TFLOP/s for the MFU column (default: datasheet '
                        'value of a known CUDA GPU at --precision, none on CPU)')
    parser.add_argument('--compile', action='store_true', help='also time every variant under torch.compile '
                        '(inductor, dynamic=False; compile time is spent in the warm-up rounds)')
    parser.add_argument('--compiled-only', action='store_true', help='with --compile: time the compiled variants '
                        'only (half the rounds\' time, for the compiled ratios at released sizes)')
    add_keep_denormals_argument(parser)
    parser.add_argument('--no-memory', dest='memory', action='store_false', help='skip the peak-memory runs')
    parser.add_argument('--profile', choices=list(ARCH_TYPES), help='also print torch.profiler tables for this arch')
    parser.add_argument('--out', type=Path, help='also write the Markdown tables to this file')
    parser.add_argument('--op-counts', action='store_true', help='also count the ops (kernel launches on a GPU) of '
                        'a training step and an inference of every variant, on the meta device (no GPU needed)')
    parser.add_argument('--block-shapes', type=token_shape, nargs='+', default=[], metavar='BxLxC',
                        help='also compare one LN / i-LN block half (norm, Linear branch, residual) on these '
                        'token shapes, on CPU, with 10x --repeats rounds')
    parser.add_argument('--denormal-effect', action='store_true', help='also time every variant (and its compiled '
                        'form with --compile) with denormals kept and flushed, on CPU, needs --threads 1')
    add_channels_last_argument(parser)
    parser.add_argument('--channels-last-effect', action='store_true', help='also time every variant (and its '
                        'compiled form with --compile) in channels_last and in the default memory format, on '
                        'each device')
    parser.add_argument('--with-data', action='store_true', help='also time whole training iterations with '
                        "BasicSR's data loader (PNG and LMDB sub-images of real photos)")
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2], help='--with-data: loader worker counts')
    parser.add_argument('--data-from', type=Path, default=SHARED_PHOTOS if SHARED_PHOTOS.is_dir() else None,
                        help='--with-data: folder of photos (default: ../shared/datasets/train/Sun_Hays80 beside '
                        'the clone, else the quickstart photos bundled with scikit-image)')
    parser.add_argument('--sub-size', type=int, default=480, help='--with-data: HR sub-image size (a multiple of '
                        '4, at least 2x --train-size; 480 as BasicSR cuts DF2K)')
    args = parser.parse_args(argv)
    if (args.depths is None) != (args.heads is None) and args.released:
        parser.error('--released takes --depths and --heads together (the released stages, else the ones given)')
    if args.denormal_effect and args.threads != 1:
        parser.error('--denormal-effect needs --threads 1: it toggles flush-to-zero, which is the calling '
                     "thread's setting, between calls")
    if args.compiled_only and not args.compile:
        parser.error('--compiled-only needs --compile')
    if args.with_data and (args.sub_size % (2 * SCALE) or args.sub_size < SCALE * args.train_size):
        parser.error(f'--sub-size must be a multiple of {2 * SCALE} and at least {SCALE} x --train-size, '
                     f'got {args.sub_size}')
    if not args.released:  # the small network's stages; --released without them keeps the released ones
        args.depths, args.heads = args.depths or SMALL_DEPTHS, args.heads or SMALL_HEADS
    args.data_archs = args.archs or ['SwinIR']
    args.archs = args.archs or list(ARCH_TYPES)
    torch.set_num_threads(args.threads)
    denormals = set_denormal_flushing(not args.keep_denormals)  # before any parallel op: threads inherit it

    command = 'python scripts/benchmark_speed.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    lines = [f'Command: `{command.strip()}`', '', denormals.message, '']
    for device_name in args.devices:
        if device_name == 'cuda' and not torch.cuda.is_available():
            lines += ['CUDA: not available on this machine, not measured.', '']
            continue
        device = torch.device(device_name)
        if args.profile:
            profile(args, args.profile, device)
        lines += benchmark(args, device) + ['']
        if args.channels_last_effect:
            lines += [f'### channels_last / default memory format, {device.type.upper()}: {hardware(device)}', ''] + \
                channels_last_benchmark(args, device) + ['']
        if args.with_data:
            lines += data_benchmark(args, device) + ['']
    if args.op_counts:
        lines += op_counts(args) + ['']
    if args.denormal_effect:
        lines += [f'### Denormals kept / flushed on CPU: {hardware(torch.device("cpu"))}', ''] + \
            denormal_benchmark(args) + ['']
    if args.block_shapes:
        lines += [f'### Block half on CPU: {hardware(torch.device("cpu"))}', ''] + block_half_benchmark(args) + ['']
    print('\n'.join(lines))
    if args.out:
        args.out.write_text('\n'.join(lines), encoding='utf-8')


if __name__ == '__main__':
    run_cli(main)
