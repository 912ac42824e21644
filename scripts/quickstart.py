#!/usr/bin/env python
"""Quickstart: SwinIR with LayerNorm vs i-LN, trained and evaluated on a laptop CPU, no downloads.

    python scripts/quickstart.py [--iters 500] [--norms ln iln]

1. builds ``datasets/quickstart`` from photos bundled with scikit-image (x2 SR pairs);
2. trains ``options/quickstart/train_SwinIR_quickstart_x2_<norm>.yml`` with the real train CLI;
3. prints PSNR/SSIM (Y channel, border 2) on the held-out photos: bicubic vs each norm, where
   the logs, checkpoints and restored images are, and the commands that test the runs
   (options/quickstart/test_*.yml), restore a folder of images with them, and build the tables.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import basicsr_iln  # noqa: E402,F401
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils.matlab_functions import imresize  # noqa: E402

DATA = REPO / 'datasets' / 'quickstart'
OPTIONS = 'options/quickstart'
CROP_BORDER = 2


def bicubic_scores(scale=2):
    """PSNR/SSIM of MATLAB-bicubic upsampling on the validation photos: the floor to beat."""
    psnrs, ssims = [], []
    for hr_path in sorted((DATA / 'val' / 'HR').glob('*.png')):
        hr = cv2.imread(str(hr_path))
        lr = cv2.imread(str(DATA / 'val' / f'LR_x{scale}' / hr_path.name))
        up = np.clip(np.round(imresize(lr.astype(np.float64) / 255.0, scale) * 255.0), 0, 255)
        psnrs.append(calculate_psnr(up, hr, CROP_BORDER, test_y_channel=True))
        ssims.append(calculate_ssim(up, hr, CROP_BORDER, test_y_channel=True))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def train(norm, iters):
    opt = REPO / OPTIONS / f'train_SwinIR_quickstart_x2_{norm}.yml'
    cmd = [sys.executable, str(REPO / 'basicsr_iln' / 'train.py'), '-opt', str(opt)]
    if iters is not None:
        cmd += ['--force_yml', f'train:total_iter={iters}', f'val:val_freq={iters}',
                f'logger:save_checkpoint_freq={iters}']
    print(f'\n=== training SwinIR x2 with norm_type={norm}: {" ".join(cmd[1:])}', flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return REPO / 'experiments' / f'quickstart_SwinIR_x2_{norm}'


def follow_up_commands(norms):
    """(what, command) pairs that test, apply and tabulate the quickstart runs (run from the repository root)."""
    tests = [f'{OPTIONS}/test_SwinIR_quickstart_x2_{norm}.yml' for norm in norms]
    commands = [(f'Test {norm} (metrics in the log, images in results/test_SwinIR_quickstart_x2_{norm}/)',
                 f'python basicsr_iln/test.py -opt {test}') for norm, test in zip(norms, tests)]
    commands += [(f'Restore a folder of images with {norm} (basicsr-iln-infer once installed; the checkpoint '
                  'records its network)',
                  f'python basicsr_iln/infer.py -c experiments/quickstart_SwinIR_x2_{norm}/models/net_g_latest.pth '
                  f'-i datasets/quickstart/val/LR_x2 -o results/infer_quickstart_x2_{norm}') for norm in norms]
    commands.append(('Tables (results/tables_quickstart/tables.md and .csv)',
                     f'python scripts/evaluate_tables.py {" ".join(tests)} --out results/tables_quickstart'))
    return commands


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iters', type=int, default=None, help='training iterations (default: the option files)')
    parser.add_argument('--norms', nargs='+', default=['ln', 'iln'], choices=['ln', 'iln'])
    args = parser.parse_args()

    subprocess.run([sys.executable, str(REPO / 'scripts' / 'make_quickstart_dataset.py')], cwd=REPO, check=True)
    rows = [('bicubic', *bicubic_scores(), '-')]
    for norm in args.norms:
        exp = train(norm, args.iters)
        final = [json.loads(line) for line in (exp / 'metrics.jsonl').read_text().splitlines()][-1]
        rows.append((f'SwinIR {norm} (EMA, iter {final["iter"]})', final['psnr'], final['ssim'],
                     str(exp.relative_to(REPO))))

    print('\nx2 SR on the held-out quickstart photos (Y channel, crop border 2):\n')
    print('| method | PSNR (dB) | SSIM | experiment folder |')
    print('|---|---|---|---|')
    for name, psnr, ssim, folder in rows:
        print(f'| {name} | {psnr:.2f} | {ssim:.4f} | {folder} |')
    print('\nIn each experiment folder: train_*.log (log), models/net_g_latest.pth (checkpoint: params and '
          'params_ema),\nvisualization/<image>/ (restored validation images), metrics.jsonl (every validation); '
          'TensorBoard: tb_logger/<name>.\n\nNext, from the repository root:')
    for what, command in follow_up_commands(args.norms):
        print(f'\n# {what}\n{command}')


if __name__ == '__main__':
    main()
