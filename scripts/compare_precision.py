#!/usr/bin/env python
"""A norm scheme (i-LN by default) in bf16 next to fp32: the same small config trained twice with the real train
CLI, no extra tricks.

    python scripts/compare_precision.py [--iters 400] [--precisions fp32 bf16] [--norm iln] [--threads 1]

Config: options/quickstart/train_SwinIR_quickstart_x2_<norm>.yml with a smaller network and batch
(SMALL below) and ``train.precision`` set per run; nothing else differs (same seed, data order and
schedule). bf16 runs under autocast with the i-LN statistics in float32 (archs/norms.py); there is
no clamp, EMA of the std, gradient clipping or loss scaling. Writes under ``--out`` (docs/precision):
``results.md`` (final loss and PSNR/SSIM per precision, non-finite steps, command, hardware),
``loss_curves.png`` and ``curves.json``. Runs go to experiments/precision_<norm>_<precision>/.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from basicsr_iln.archs.norms import norm_scheme  # noqa: E402
from basicsr_iln.utils.console import logged_curve  # noqa: E402

# Smaller than the quickstart network and batch, so that both runs take minutes on a shared CPU.
SMALL = {'network_g': {'embed_dim': 24, 'depths': [2, 2], 'num_heads': [2, 2], 'img_size': 24},
         'datasets': {'train': {'batch_size_per_gpu': 4, 'gt_size': 48}}}
TAIL = 20  # final training loss: mean over the last TAIL logged iterations


def merge(base, override):
    for key, value in override.items():
        base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def run_options(norm, precision, iters, print_freq):
    with open(REPO / 'options' / 'quickstart' / f'train_SwinIR_quickstart_x2_{norm}.yml', encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    merge(opt, SMALL)
    milestones = [int(iters * 0.6), int(iters * 0.9)]
    merge(opt, {'name': f'precision_{norm}_{precision}', 'num_gpu': 0,
                'train': {'precision': precision, 'total_iter': iters, 'scheduler': {'milestones': milestones}},
                'val': {'val_freq': iters, 'save_img': False},
                'logger': {'print_freq': print_freq, 'save_checkpoint_freq': iters, 'use_tb_logger': False}})
    return opt


def train(opt, threads):
    """Run the train CLI; returns the experiment folder and the wall time in seconds."""
    exp = REPO / 'experiments' / opt['name']
    opt_path = REPO / 'experiments' / f"{opt['name']}.yml"
    opt_path.parent.mkdir(parents=True, exist_ok=True)
    opt_path.write_text(yaml.safe_dump(opt, sort_keys=False), encoding='utf-8')
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), BASICSR_ILN_ROOT=str(REPO))
    start = time.time()
    subprocess.run([sys.executable, str(REPO / 'basicsr_iln' / 'train.py'), '-opt', str(opt_path)], cwd=REPO, env=env,
                   check=True)
    return exp, time.time() - start


def read_run(exp):
    """Logged (iteration, l_pix) pairs, the number of skipped non-finite steps, and the final metrics."""
    log = max(exp.glob('train_*.log'), key=lambda p: p.stat().st_mtime).read_text(encoding='utf-8')
    curve = logged_curve(log)
    nonfinite = log.count('step skipped')
    final = [json.loads(line) for line in (exp / 'metrics.jsonl').read_text().splitlines()][-1]
    return curve, nonfinite, final


def hardware():
    cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                if line.startswith('model name')), platform.processor()) if Path('/proc/cpuinfo').exists() else ''
    return f'{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, torch {torch.__version__}'


def plot(runs, path, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in runs.items():
        iters, loss = np.array(run['curve']).T
        window = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(window) / window, mode='valid')
        line, = ax.plot(iters, loss, alpha=0.25)
        ax.plot(iters[window - 1:], smooth, color=line.get_color(), label=f"{name} (PSNR {run['psnr']:.2f} dB)")
    ax.set_xlabel('iteration')
    ax.set_ylabel('L1 loss (training batch)')
    ax.set_yscale('log')
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iters', type=int, default=400)
    parser.add_argument('--precisions', nargs='+', default=['fp32', 'bf16'], choices=['fp32', 'bf16', 'fp16'])
    parser.add_argument('--norm', default='iln', choices=['iln', 'ln'])
    parser.add_argument('--print-freq', type=int, default=5, help='logged loss every N iterations')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per run (OMP_NUM_THREADS)')
    parser.add_argument('--out', type=Path, default=REPO / 'docs' / 'precision')
    args = parser.parse_args(argv)

    subprocess.run([sys.executable, str(REPO / 'scripts' / 'make_quickstart_dataset.py')], cwd=REPO, check=True)
    runs = {}
    for precision in args.precisions:
        exp, seconds = train(run_options(args.norm, precision, args.iters, args.print_freq), args.threads)
        curve, nonfinite, final = read_run(exp)
        losses = [loss for _, loss in curve]
        runs[precision] = {'curve': curve, 'nonfinite_steps': nonfinite, 'psnr': final['psnr'], 'ssim': final['ssim'],
                           'final_loss': float(np.mean(losses[-TAIL:])), 'all_finite': bool(np.isfinite(losses).all()),
                           'minutes': seconds / 60, 'experiment': str(exp.relative_to(REPO))}

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'curves.json').write_text(json.dumps(runs, indent=1), encoding='utf-8')
    label = norm_scheme(args.norm).label
    plot(runs, args.out / 'loss_curves.png', f'SwinIR {label}, x2 SR quickstart data: {" vs ".join(runs)}')
    command = 'python scripts/compare_precision.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    lines = [f'# SwinIR with {label} ({args.norm}): training in {" vs ".join(args.precisions)}', '',
             f'Command: `{command.strip()}`  ', f'Hardware: {hardware()}, {args.threads} thread(s) per run  ',
             f'Config: options/quickstart/train_SwinIR_quickstart_x2_{args.norm}.yml with {json.dumps(SMALL)}, '
             f'{args.iters} iterations; only `train.precision` differs. No std clamp/EMA, no gradient clipping, '
             'no loss scaling (bf16).', '',
             f'| precision | final training L1 (mean of last {TAIL} logged) | val PSNR (dB) | val SSIM | '
             'non-finite steps skipped | all logged losses finite | wall time (min) |', '|---|---|---|---|---|---|---|']
    for precision, r in runs.items():
        lines.append(f"| {precision} | {r['final_loss']:.4f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{r['nonfinite_steps']} | {r['all_finite']} | {r['minutes']:.1f} |")
    lines += ['', 'Validation: the 3 held-out quickstart photos, Y channel, crop border 2, EMA weights at the last '
              'iteration. Curves: `loss_curves.png` (raw and moving average), raw values in `curves.json`.',
              'Scope: a short run of a small network on CPU (bf16 speed there depends on native bf16 instructions). It '
              f'shows whether {args.norm} training in half precision follows fp32 at this scale; it does not reproduce '
              "the paper's full-length training, where LN features grow to ~1e6."]
    (args.out / 'results.md').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
