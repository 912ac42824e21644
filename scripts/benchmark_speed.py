#!/usr/bin/env python
"""Speed and memory of SwinIR / HAT / DRCT with LN and i-LN, and of our SwinIR against BasicSR's.

    python scripts/benchmark_speed.py [--archs SwinIR HAT DRCT] [--devices cpu cuda] [--repeats 15]
        [--batch 2 --train-size 32 --infer-size 64] [--embed-dim 48 --depths 2 2 --heads 2 2 --window 8]
        [--threads 1] [--profile SwinIR] [--out results.md] [--block-shapes 2x1024x48 1x2304x180] [--compile]

Variants: every arch x norm (ln, iln) at the same small x2 classical-SR config, plus ``basicsr``:
``basicsr.archs.swinir_arch.SwinIR`` with the weights of our SwinIR (ln); with ``--compile`` each of
them also under ``torch.compile`` (inductor, static shapes), timed in the same interleaved rounds. Measured per variant:
a training step (zero_grad, forward, L1 loss, backward, Adam step) on ``--batch`` LR crops of
``--train-size`` pixels, and inference (eval, no_grad) on one ``--infer-size`` image.

Timing is interleaved: each round times every variant once, in an order rotated from round to
round, so that load changes on a shared machine hit all variants alike; times are medians over
rounds and ratios are medians of the per-round ratios (variants timed next to each other).

``--block-shapes BxLxC ...`` adds the same LN vs i-LN comparison for one block half alone (norm,
a Linear branch, residual) on (B, L, C) tokens: forward + backward, and forward without autograd.
It isolates what i-LN changes from the attention and MLP it leaves alone.

Peak memory of one inference and of one training step (after a warm-up step, with the gradients
already released, so weights and Adam states are in place and not counted): on CUDA
``torch.cuda.max_memory_allocated`` above the memory allocated before; on CPU the running sum of
torch's allocations and frees recorded by ``torch.profiler(profile_memory=True)``, its maximum above
the start (tracemalloc does not see torch's allocator, and ``ru_maxrss`` of this process is set by
imports and model building, far above a small network's activations).
"""
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import basicsr_iln  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from basicsr.archs.swinir_arch import SwinIR as BasicSRSwinIR  # noqa: E402
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402

from basicsr_iln.archs.norms import build_branch_norm, residual_add  # noqa: E402

ARCH_TYPES = {'SwinIR': 'SwinIR_iLN', 'HAT': 'HAT', 'DRCT': 'DRCT'}
NORMS = ('ln', 'iln')
BASICSR = ('SwinIR', 'basicsr')
COMPILED = 'compiled'  # third element of a variant: torch.compile (inductor, static shapes)


def network_kwargs(args, arch):
    kwargs = dict(upscale=2, in_chans=3, img_size=args.train_size, window_size=args.window, img_range=1.0,
                  depths=args.depths, embed_dim=args.embed_dim, num_heads=args.heads, mlp_ratio=2,
                  upsampler='pixelshuffle', resi_connection='1conv')
    if arch == 'HAT':
        kwargs.update(compress_ratio=3, squeeze_factor=16)
    return kwargs


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
    """One variant's network, optimizer and inputs; ``train_step``/``infer`` return seconds."""

    def __init__(self, args, variant, device):
        self.device = device
        self.net = build(args, variant[:2], device)
        if compiled(variant):  # static shapes, as option `compile` defaults to (dynamic tracing hangs)
            self.net = torch.compile(self.net, dynamic=False)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(1)
        self.lq = torch.rand(args.batch, 3, args.train_size, args.train_size, generator=gen).to(device)
        self.gt = torch.rand(args.batch, 3, 2 * args.train_size, 2 * args.train_size, generator=gen).to(device)
        self.image = torch.rand(1, 3, args.infer_size, args.infer_size, generator=gen).to(device)

    def _sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()

    def train_step(self, zero_grad=True):
        self.net.train()
        self._sync()
        start = time.perf_counter()
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        F.l1_loss(self.net(self.lq), self.gt).backward()
        self.optimizer.step()
        self._sync()
        return time.perf_counter() - start

    def infer(self):
        self.net.eval()
        self._sync()
        start = time.perf_counter()
        with torch.no_grad():
            self.net(self.image)
        self._sync()
        return time.perf_counter() - start


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
        y, scale = self.norm.forward_with_scale(x)
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
        train = interleaved_times(benches, 'train_step', 10 * args.repeats, args.warmup)
        infer = interleaved_times(benches, 'infer', 10 * args.repeats, args.warmup)
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


def interleaved_times(benches, method, repeats, warmup):
    """{variant: [seconds per round]}; each round runs every variant once, rotating the order."""
    variants = list(benches)
    for _ in range(warmup):
        for v in variants:
            getattr(benches[v], method)()
    times = {v: [] for v in variants}
    for r in range(repeats):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            times[v].append(getattr(benches[v], method)())
    return times


def paired_ratio(times, num, den):
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def compiled(variant):
    return variant[-1] == COMPILED


def name(variant):
    base = 'SwinIR ln (BasicSR)' if variant[:2] == BASICSR else f'{variant[0]} {variant[1]}'
    return f'{base}, compiled' if compiled(variant) else base


def hardware(device):
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)}, torch {torch.__version__}'
    cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                if line.startswith('model name')), platform.processor())
    return (f'{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, '
            f'load average {os.getloadavg()[0]:.1f} at start')


def profile(args, arch, device):
    """torch.profiler tables of one training step of ``arch`` with LN and with i-LN."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    for norm in NORMS:
        bench = Bench(args, (arch, norm), device)
        for _ in range(args.warmup):
            bench.train_step()
        with torch_profile(activities=activities) as prof:
            for _ in range(3):
                bench.train_step()
        print(f'\n### profile: {arch} {norm}, 3 training steps\n')
        print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=15))


def benchmark(args, device):
    variants = [(arch, norm) for arch in args.archs for norm in NORMS]
    if 'SwinIR' in args.archs:
        variants.append(BASICSR)
    eager = list(variants)
    if args.compile:
        variants += [(*v, COMPILED) for v in eager]
    benches = {v: Bench(args, v, device) for v in variants}
    train = interleaved_times(benches, 'train_step', args.repeats, args.warmup)
    infer = interleaved_times(benches, 'infer', args.repeats, args.warmup)
    del benches
    memory = {v: peak_memory(args, v, device) for v in eager} if args.memory else {}

    mem_kind = 'max_memory_allocated' if device.type == 'cuda' else 'torch.profiler allocations'
    lines = [f'### {device.type.upper()}: {hardware(device)}', '',
             f'Config: x2 pixelshuffle, embed_dim {args.embed_dim}, depths {args.depths}, heads {args.heads}, '
             f'window {args.window}; training batch {args.batch} x {args.train_size}^2 LR, inference 1 x '
             f'{args.infer_size}^2 LR; {args.repeats} interleaved rounds after {args.warmup} warm-up.', '',
             f'| variant | train step (ms, median) | inference (ms, median) | peak memory train / inference (MiB, '
             f'{mem_kind}) |', '|---|---|---|---|']
    for v in variants:
        mem = '/'.join(f'{m / 2**20:.0f}' for m in memory[v][::-1]) if v in memory else 'not measured'
        lines.append(f'| {name(v)} | {statistics.median(train[v]) * 1e3:.1f} | '
                     f'{statistics.median(infer[v]) * 1e3:.1f} | {mem} |')
    lines += ['', '| ratio (median of per-round ratios) | train step | inference |', '|---|---|---|']
    for arch in args.archs:
        lines.append(f'| {arch}: i-LN / LN | {paired_ratio(train, (arch, "iln"), (arch, "ln")):.3f} | '
                     f'{paired_ratio(infer, (arch, "iln"), (arch, "ln")):.3f} |')
    if BASICSR in variants:
        lines.append(f'| SwinIR ln: ours / BasicSR | {paired_ratio(train, ("SwinIR", "ln"), BASICSR):.3f} | '
                     f'{paired_ratio(infer, ("SwinIR", "ln"), BASICSR):.3f} |')
    if args.compile:
        for arch in args.archs:
            iln, ln = (arch, 'iln', COMPILED), (arch, 'ln', COMPILED)
            lines.append(f'| {arch} compiled: i-LN / LN | {paired_ratio(train, iln, ln):.3f} | '
                         f'{paired_ratio(infer, iln, ln):.3f} |')
        for v in eager:
            lines.append(f'| {name(v)}: compiled / eager | {paired_ratio(train, (*v, COMPILED), v):.3f} | '
                         f'{paired_ratio(infer, (*v, COMPILED), v):.3f} |')
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--archs', nargs='+', default=list(ARCH_TYPES), choices=list(ARCH_TYPES))
    parser.add_argument('--devices', nargs='+', default=['cpu', 'cuda'], choices=['cpu', 'cuda'],
                        help='cuda is skipped when not available')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--train-size', type=int, default=32, help='LR training crop (a window multiple)')
    parser.add_argument('--infer-size', type=int, default=64, help='LR inference image size')
    parser.add_argument('--embed-dim', type=int, default=48)
    parser.add_argument('--depths', type=int, nargs='+', default=[2, 2])
    parser.add_argument('--heads', type=int, nargs='+', default=[2, 2])
    parser.add_argument('--window', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=1, help='CPU threads (1: least disturbed by other load)')
    parser.add_argument('--compile', action='store_true', help='also time every variant under torch.compile '
                        '(inductor, dynamic=False; compile time is spent in the warm-up rounds)')
    parser.add_argument('--no-memory', dest='memory', action='store_false', help='skip the peak-memory runs')
    parser.add_argument('--profile', choices=list(ARCH_TYPES), help='also print torch.profiler tables for this arch')
    parser.add_argument('--out', type=Path, help='also write the Markdown tables to this file')
    parser.add_argument('--block-shapes', type=token_shape, nargs='+', default=[], metavar='BxLxC',
                        help='also compare one LN / i-LN block half (norm, Linear branch, residual) on these '
                        'token shapes, on CPU, with 10x --repeats rounds')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    command = 'python scripts/benchmark_speed.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    lines = [f'Command: `{command.strip()}`', '']
    for device_name in args.devices:
        if device_name == 'cuda' and not torch.cuda.is_available():
            lines += ['CUDA: not available on this machine, not measured.', '']
            continue
        device = torch.device(device_name)
        if args.profile:
            profile(args, args.profile, device)
        lines += benchmark(args, device) + ['']
    if args.block_shapes:
        lines += [f'### Block half on CPU: {hardware(torch.device("cpu"))}', ''] + block_half_benchmark(args) + ['']
    print('\n'.join(lines))
    if args.out:
        args.out.write_text('\n'.join(lines), encoding='utf-8')


if __name__ == '__main__':
    main()
