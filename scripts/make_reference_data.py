#!/usr/bin/env python
"""Write the reference data the tests hold the repository to (tests/data/), from their sources.

    python scripts/make_reference_data.py official --iln-repo DIR   # tests/data/official_protocol.csv
    python scripts/make_reference_data.py layouts --shared ../shared/reference  # tests/data/state_dict_layouts.json.gz

``official`` tabulates the training values of the official i-LN option files (DIR: a checkout of
github.com/2minkyulee/i-LN, read with PyYAML as the official code reads them) next to the generated
file that reproduces each; a difference must carry a reason, given below (WHY). ``layouts`` copies the
released checkpoints' key/shape layouts so the compatibility tests run on a clone alone.
"""
import argparse
import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'scripts'))

import generate_options  # noqa: E402

DATA = REPO / 'tests' / 'data'
OFFICIAL_FILES = {  # official file -> the generated file that reproduces it
    'iLN/options/train/HAT-mini/SRx2_HAT-mini_baseline.yml': 'options/train/HAT/train_HAT-mini_SRx2_ln.yml',
    'iLN/options/train/HAT-mini/SRx2_HAT-mini_iLN.yml': 'options/train/HAT/train_HAT-mini_SRx2_iln.yml',
    'iLN/options/train/HAT-mini/SRx4_HAT-mini_baseline.yml': 'options/train/HAT/train_HAT-mini_SRx4_ln.yml',
    'iLN/options/train/HAT-mini/SRx4_HAT-mini_iLN.yml': 'options/train/HAT/train_HAT-mini_SRx4_iln.yml',
    'iLN/options/train/HAT-dagger/SRx2_HAT-dagger_iLN.yml': 'options/train/HAT/train_HAT_SRx2_iln.yml',
    'iLN/options/train/HAT-dagger/SRx4_HAT-dagger_iLN.yml': 'options/train/HAT/train_HAT_SRx4_iln.yml',
}
# Training-relevant keys, in table order; 'network_g.*' keys are those of each official file.
HEAD_KEYS = ['model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets.train.type', 'datasets.train.dataroot_gt',
             'datasets.train.dataroot_lq', 'datasets.train.gt_size', 'datasets.train.use_hflip',
             'datasets.train.use_rot', 'datasets.train.batch_size_per_gpu', 'datasets.train.dataset_enlarge_ratio',
             'train.global_batch_size', 'validation sets']
TAIL_KEYS = ['path.pretrain_network_g', 'path.param_key_g', 'path.strict_load_g', 'train.ema_decay',
             'train.optim_g.type', 'train.optim_g.lr', 'train.optim_g.weight_decay', 'train.optim_g.betas',
             'train.scheduler.type', 'train.scheduler.milestones', 'train.scheduler.gamma', 'train.total_iter',
             'train.warmup_iter', 'train.pixel_opt.type', 'train.pixel_opt.loss_weight', 'train.pixel_opt.reduction',
             'val.val_freq', 'val.metrics.psnr.crop_border', 'val.metrics.psnr.test_y_channel',
             'val.metrics.ssim.crop_border', 'val.metrics.ssim.test_y_channel', 'logger.save_checkpoint_freq']
DATA_WHY = ('our layout (datasets/README.md): the same DF2K images, HR cropped to a multiple of 12 (official: of '
            'the scale) and LR by BasicSR\'s MATLAB-bicubic imresize (official: LR computed in float64)')
WHY = {
    'model_type': 'IRModel is SRModel with the HATModel test-time padding built into our networks (and EMA '
                  'buffers, accumulation, clipping); training is the same SRModel step',
    'network_g.type': 'registered alias of the same class',
    'network_g.eps': 'the official YAML `eps: 1e-4` is read by PyYAML (YAML 1.1) as the string "1e-4"; the float '
                     '1e-4 is the constructor default the other official i-LN files use',
    'path.pretrain_network_g': 'the EMA weights of our own x2 run (official: a placeholder for the x2 model)',
    'datasets.train.dataroot_gt': DATA_WHY, 'datasets.train.dataroot_lq': DATA_WHY,
}
ABSENT = object()


def value_at(opt, key, official):
    if key == 'train.global_batch_size' and official:  # the official files give it as GPUs x batch per GPU
        return opt['num_gpu'] * opt['datasets']['train']['batch_size_per_gpu']
    if key == 'validation sets':
        return [d['name'] for phase, d in opt['datasets'].items() if phase.startswith('val')]
    node = opt
    for part in key.split('.'):
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


def official_rows(iln_repo):
    ours = {rel: yaml.safe_load(text) for rel, text in generate_options.generate().items() if rel.endswith('.yml')}
    commit = subprocess.run(['git', '-C', str(iln_repo), 'rev-parse', 'HEAD'], capture_output=True, text=True)
    rows = []
    for official_rel, our_rel in OFFICIAL_FILES.items():
        official = yaml.safe_load((Path(iln_repo) / official_rel).read_text(encoding='utf-8'))
        for key in HEAD_KEYS + [f'network_g.{k}' for k in official['network_g']] + TAIL_KEYS:
            theirs, mine = value_at(official, key, True), value_at(ours[our_rel], key, False)
            if theirs is ABSENT:
                continue
            why = '' if theirs == mine else WHY[key]  # a KeyError here: a new difference needs its reason
            rows.append({'official_file': official_rel, 'our_file': our_rel, 'key': key,
                         'official': json.dumps(theirs), 'ours': json.dumps(mine), 'why_different': why})
    return rows, commit.stdout.strip() or 'unknown commit'


def write_official(iln_repo):
    rows, commit = official_rows(iln_repo)
    with open(DATA / 'official_protocol.csv', 'w', newline='', encoding='utf-8') as f:
        f.write(f'# Training values of the official i-LN option files (2minkyulee/i-LN@{commit}, read with PyYAML) '
                'next to\n# the generated file that reproduces each; values are JSON. "train.global_batch_size" is '
                'the official\n# num_gpu x batch_size_per_gpu. A non-empty why_different marks a deliberate '
                'difference (tests/test_protocol.py).\n# Written by: python scripts/make_reference_data.py official '
                '--iln-repo DIR\n')
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f'{len(rows)} values, {sum(bool(r["why_different"]) for r in rows)} deliberate differences')


def write_layouts(shared):
    layouts = json.loads((Path(shared) / 'state_dict_layouts.json').read_text(encoding='utf-8'))
    data = json.dumps(layouts, separators=(',', ':')).encode()
    (DATA / 'state_dict_layouts.json.gz').write_bytes(gzip.compress(data, 9, mtime=0))
    print(f'{len(layouts)} layouts')


def main(argv=None):
    parser = argparse.ArgumentParser(description='Write the reference data under tests/data/ from their sources.')
    sub = parser.add_subparsers(dest='what', required=True)
    sub.add_parser('official').add_argument('--iln-repo', required=True, help='checkout of 2minkyulee/i-LN')
    sub.add_parser('layouts').add_argument('--shared', default=str(REPO.parent / 'shared' / 'reference'))
    args = parser.parse_args(argv)
    if args.what == 'official':
        write_official(args.iln_repo)
    else:
        write_layouts(args.shared)


if __name__ == '__main__':
    main()
