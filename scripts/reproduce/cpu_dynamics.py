#!/usr/bin/env python
"""Reproduce the paper's training-dynamics finding (LN vs i-LN) at CPU scale, end to end.

    python scripts/reproduce/cpu_dynamics.py --iters 1500 --out docs/dynamics

1. data: the HR folder (default ../shared/datasets/train/Sun_Hays80) and the benchmark sets (Set5,
   Set14) get MATLAB-bicubic LR images once, with scripts/data_preparation/prepare_sr.py, in
   ``--cache`` (existing folders are reused);
2. trains every ``--archs`` x ``--norms`` combination with the real train CLI, ``analysis`` on
   (probe: centre crops of the Set5 LR images), no EMA (the probed and the evaluated weights are the
   same), a constant learning rate;
3. evaluates each final network on Set5 and Set14 with the real test CLI in every ``--precisions``
   (PSNR/SSIM on the Y channel, border = scale; non-finite output values counted);
4. writes into ``--out``: the raw probe records (``data/<run>/analysis.jsonl``), the figures and
   ``summary.md`` (scripts/plot_dynamics.py, from those records), ``validation.md``
   (with MATLAB-bicubic upsampling as the floor) and ``run.md`` (command, configuration, wall times,
   hardware). Numbers come from the runs only.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'scripts'))
sys.path.insert(0, str(REPO / 'scripts' / 'data_preparation'))

import basicsr_iln  # noqa: E402,F401  (before basicsr)
import cv2  # noqa: E402
import plot_dynamics  # noqa: E402
import torch  # noqa: E402
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils.matlab_functions import imresize  # noqa: E402
from prepare_sr import bicubic  # noqa: E402

SHARED = REPO.parent / 'shared' / 'datasets'
ARCHS = {  # arch -> (registry name, extra network options)
    'swinir': ('SwinIR_iLN', {}),
    'hat': ('HAT', {'compress_ratio': 3, 'squeeze_factor': 16, 'conv_scale': 0.01, 'overlap_ratio': 0.5}),
}


def prepare_data(args):
    """{'train': root, 'Set5': root, ...}: roots holding HR/ and LR_bicubic/X<scale>/, made once."""
    roots = {'train': Path(args.cache) / Path(args.hr_folder).name}
    for folder in args.benchmarks:
        roots[Path(folder).name] = Path(args.cache) / Path(folder).name
    for name, root in roots.items():
        if not (root / 'LR_bicubic' / f'X{args.scale}').is_dir():
            source = args.hr_folder if name == 'train' else next(b for b in args.benchmarks if Path(b).name == name)
            # Benchmarks: HR kept whole, LR from HR mod-cropped by the scale (the standard protocol).
            bicubic([source], str(root), scales=[args.scale], per_scale=name != 'train', overwrite=True)
    return roots


def paired(root, scale, **extra):
    return dict(type='PairedImageDataset', dataroot_gt=str(root / 'HR'), dataroot_lq=str(root / 'LR_bicubic' / f'X{scale}'),
                io_backend={'type': 'disk'}, **extra)


def metrics_options(scale):
    return {'psnr': {'type': 'calculate_psnr', 'crop_border': scale, 'test_y_channel': True},
            'ssim': {'type': 'calculate_ssim', 'crop_border': scale, 'test_y_channel': True}}


def network_options(args, arch, norm):
    name, extra = ARCHS[arch]
    return dict(type=name, norm_type=norm, upscale=args.scale, in_chans=3, img_size=args.patch,
                window_size=args.window, img_range=1.0, depths=args.depths, embed_dim=args.embed_dim,
                num_heads=[args.heads] * len(args.depths), mlp_ratio=2, upsampler='pixelshuffle', **extra)


def train_options(args, roots, arch, norm):
    probe_set = next(name for name in roots if name != 'train')
    return {
        'name': f'cpu_dynamics_{arch}_{norm}_x{args.scale}', 'model_type': 'IRModel', 'scale': args.scale, 'num_gpu': 0,
        'manual_seed': args.seed,
        'datasets': {
            'train': paired(roots['train'], args.scale, name=Path(args.hr_folder).name, gt_size=args.patch * args.scale,
                            use_hflip=True, use_rot=True, num_worker_per_gpu=0, batch_size_per_gpu=args.batch,
                            dataset_enlarge_ratio=100),
            'val': paired(roots[probe_set], args.scale, name=probe_set),
        },
        'network_g': network_options(args, arch, norm),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': args.lr, 'weight_decay': 0, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [args.iters], 'gamma': 0.5},  # constant lr
                  'total_iter': args.iters, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': args.iters, 'save_img': False, 'metrics': metrics_options(args.scale)},
        'logger': {'print_freq': args.freq, 'save_checkpoint_freq': args.iters, 'use_tb_logger': True},
        'analysis': {'freq': args.freq, 'layers': 'all', 'num_probe_images': args.probe_images,
                     'probe_crop': args.probe_crop},
    }


def test_options(args, roots, train_opt):
    sets = [name for name in roots if name != 'train']
    return {'name': f"{train_opt['name']}_test", 'model_type': 'IRModel', 'scale': args.scale, 'num_gpu': 0,
            'datasets': {f'test_{i + 1}': paired(roots[name], args.scale, name=name) for i, name in enumerate(sets)},
            'network_g': train_opt['network_g'],
            'path': {'pretrain_network_g': str(Path(args.workdir) / 'experiments' / train_opt['name'] / 'models' /
                                               'net_g_latest.pth'), 'param_key_g': 'params', 'strict_load_g': True},
            'val': {'save_img': False, 'metrics': metrics_options(args.scale)}}


def cli(script, opt, args, *extra):
    """Command and environment running basicsr_iln/<script>.py on ``opt`` (written next to the runs)."""
    opt_dir = Path(args.workdir) / 'experiments' / 'cpu_dynamics_options'
    opt_dir.mkdir(parents=True, exist_ok=True)
    opt_path = opt_dir / f"{opt['name']}.yml"
    opt_path.write_text(yaml.safe_dump(opt, sort_keys=False))
    env = dict(os.environ, BASICSR_ILN_ROOT=str(args.workdir), OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(REPO))
    return [sys.executable, str(REPO / 'basicsr_iln' / f'{script}.py'), '-opt', str(opt_path), *extra], env


def run_all(commands, jobs, log_dir):
    """Run (name, cmd, env) commands, ``jobs`` at a time; {name: wall seconds}. Fails on any error."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, running, walls = list(commands), {}, {}
    while pending or running:
        while pending and len(running) < jobs:
            name, cmd, env = pending.pop(0)
            log = open(log_dir / f'{name}.log', 'w')
            print(f'[{time.strftime("%H:%M:%S")}] start {name}: {" ".join(cmd[1:])}', flush=True)
            running[name] = (subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log,
                             time.time())
        time.sleep(0.2)
        for name, (proc, log, start) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                walls[name] = time.time() - start
                del running[name]
                print(f'[{time.strftime("%H:%M:%S")}] done {name} ({walls[name] / 60:.1f} min, rc {proc.returncode})',
                      flush=True)
                if proc.returncode != 0:
                    raise SystemExit(f'{name} failed; see {log_dir / name}.log')
    return walls


def keep_records(experiment, out):
    """Copy a run's analysis.jsonl to ``out/data/<run>/``: the figures can be re-rendered from the report
    folder alone, after the experiment folder (checkpoints, logs) is gone."""
    folder = out / 'data' / experiment.name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(experiment / 'analysis.jsonl', folder / 'analysis.jsonl')
    return folder


def bicubic_floor(roots, scale):
    """{set: (PSNR, SSIM)} of MATLAB-bicubic upsampling of the LR images, same metric protocol."""
    scores = {}
    for name, root in roots.items():
        if name == 'train':
            continue
        psnrs, ssims = [], []
        for lr_path in sorted((root / 'LR_bicubic' / f'X{scale}').glob('*.png')):
            lr = cv2.imread(str(lr_path))
            hr = cv2.imread(str(root / 'HR' / lr_path.name))[:lr.shape[0] * scale, :lr.shape[1] * scale]
            up = np.clip(np.round(imresize(lr.astype(np.float64) / 255.0, scale) * 255.0), 0, 255)
            psnrs.append(calculate_psnr(up, hr, scale, test_y_channel=True))
            ssims.append(calculate_ssim(up, hr, scale, test_y_channel=True))
        scores[name] = (float(np.mean(psnrs)), float(np.mean(ssims)))
    return scores


def validation_table(args, roots, runs):
    """Markdown: PSNR/SSIM and non-finite output values per run, test set and precision."""
    lines = ['| run | set | precision | PSNR (dB) | SSIM | non-finite outputs |', '|---|---|---|---|---|---|']
    for name, (psnr, ssim) in bicubic_floor(roots, args.scale).items():
        lines.append(f'| bicubic | {name} | - | {psnr:.2f} | {ssim:.4f} | - |')
    for run in runs:
        path = Path(args.workdir) / 'results' / f'{run}_test' / 'metrics.jsonl'
        for record in map(json.loads, path.read_text().splitlines()):
            lines.append(f"| {run} | {record['dataset']} | {record['precision']} | {record['psnr']:.2f} | "
                         f"{record['ssim']:.4f} | {record['nonfinite']} |")
    return '\n'.join(lines) + '\n'


def hardware():
    cpu = next((line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                if line.startswith('model name')), platform.processor()) if Path('/proc/cpuinfo').is_file() else '?'
    return (f'{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python '
            f'{platform.python_version()}, torch {torch.__version__}, no GPU used')


def run_report(args, walls, total_wall):
    config = '\n'.join(f'| `{key}` | `{value}` |' for key, value in vars(args).items())
    times = '\n'.join(f'| {name} | {wall / 60:.1f} |' for name, wall in walls.items())
    return (f'# CPU-scale dynamics run\n\nCommand (from the repository root):\n\n```\n'
            f'python {" ".join(sys.argv)}\n```\n\n'
            f'Finished {time.strftime("%Y-%m-%d %H:%M %Z")}; total wall time {total_wall / 60:.1f} min.\n\n'
            f'Hardware: {hardware()}; {args.threads} thread(s) per process, {args.jobs} process(es) at a time '
            f'(the machine was shared with other work, so wall times are upper bounds).\n\n'
            f'| setting | value |\n|---|---|\n{config}\n\n| step | wall time (min) |\n|---|---|\n{times}\n')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr-folder', default=str(SHARED / 'train' / 'Sun_Hays80'), help='training HR images')
    parser.add_argument('--benchmarks', nargs='+', default=[str(SHARED / 'sr' / 'Set5'), str(SHARED / 'sr' / 'Set14')],
                        help='HR test folders; the first one also gives the probe images')
    parser.add_argument('--cache', default=str(REPO / 'datasets' / 'cache' / 'cpu_dynamics'), help='LR cache folder')
    parser.add_argument('--workdir', default=str(REPO), help='where experiments/, results/, tb_logger/ go')
    parser.add_argument('--out', default=str(REPO / 'docs' / 'dynamics'), help='figures and tables')
    parser.add_argument('--archs', nargs='+', default=['swinir'], choices=sorted(ARCHS))
    parser.add_argument('--norms', nargs='+', default=['ln', 'iln'])
    parser.add_argument('--iters', type=int, default=1500)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--patch', type=int, default=24, help='LR training patch size')
    parser.add_argument('--embed-dim', type=int, default=48)
    parser.add_argument('--depths', type=int, nargs='+', default=[4, 4, 4, 4])
    parser.add_argument('--heads', type=int, default=6)
    parser.add_argument('--window', type=int, default=8)
    parser.add_argument('--scale', type=int, default=2)
    parser.add_argument('--freq', type=int, default=50, help='probe (and log) every N iterations')
    parser.add_argument('--probe-images', type=int, default=5)
    parser.add_argument('--probe-crop', type=int, default=64)
    parser.add_argument('--precisions', default='fp32,bf16,fp16')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1, help='torch threads per process')
    parser.add_argument('--jobs', type=int, default=2, help='processes at a time')
    parser.add_argument('--skip-train', action='store_true', help='evaluate and report finished runs only')
    args = parser.parse_args(argv)

    start = time.time()
    roots = prepare_data(args)
    train_opts = [train_options(args, roots, arch, norm) for arch in args.archs for norm in args.norms]
    logs = Path(args.workdir) / 'experiments' / 'cpu_dynamics_logs'
    walls = {} if args.skip_train else run_all([(f"train_{o['name']}", *cli('train', o, args)) for o in train_opts],
                                               args.jobs, logs)
    walls.update(run_all([(f"test_{o['name']}", *cli('test', test_options(args, roots, o), args, '--precision',
                                                     args.precisions)) for o in train_opts], args.jobs, logs))
    out = Path(args.out)
    records = [keep_records(Path(args.workdir) / 'experiments' / o['name'], out) for o in train_opts]
    plot_dynamics.main([str(folder) for folder in records] + ['--out', str(out), '--per-depth'])
    (out / 'validation.md').write_text(validation_table(args, roots, [o['name'] for o in train_opts]))
    (out / 'run.md').write_text(run_report(args, walls, time.time() - start))
    print(f'wrote {out}/dynamics.png, summary.md, validation.md, run.md')


if __name__ == '__main__':
    main()
