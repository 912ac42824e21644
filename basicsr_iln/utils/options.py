"""Option parsing for the train/test CLIs: BasicSR's flags and option layout, with checks that fail early.

Why not ``basicsr.utils.options.parse_options``: it initialises distributed training with CUDA
assumptions, applies ``--force_yml`` with ``exec``, accepts any key silently, and reports a YAML
typo or ``lr: 2e-4`` (a *string* in YAML 1.1) only as a crash deep inside training.
"""
import argparse
import difflib
import math
import os
import random
from os import path as osp

import torch
import yaml
from basicsr.utils import set_random_seed
from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.options import ordered_yaml

from .dist import init_dist
from .errors import ConfigError

TOP_LEVEL_KEYS = {
    'name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'network_g', 'path', 'train', 'val',
    'logger', 'dist_params', 'find_unused_parameters', 'analysis', 'precision', 'compile'
}
REQUIRED_KEYS = {True: ('name', 'model_type', 'network_g', 'datasets', 'train'), False: ('name', 'model_type',
                                                                                     'network_g', 'datasets')}


def build_arg_parser(is_train):
    parser = argparse.ArgumentParser(
        description=f"{'Train' if is_train else 'Test'} a restoration network from a BasicSR-style YAML option file.")
    parser.add_argument('-opt', type=str, required=True, help='Path to the option YAML file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true', help='resume from the latest complete checkpoint')
    parser.add_argument('--debug', action='store_true', help="prefix the name with 'debug_', log and save often")
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help='set by the launcher')
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY:SUB=VALUE',
                        help='override existing option keys, e.g. train:ema_decay=0.999 (values parsed as YAML)')
    parser.add_argument('--traceback', action='store_true', help='show the Python traceback of user errors')
    if not is_train:
        parser.add_argument('--precision', default=None, metavar='P[,P...]',
                            help='evaluate in these precisions (fp32, bf16, fp16, int8); overrides val.precision')
    return parser


def did_you_mean(word, choices):
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" Did you mean '{close[0]}'?" if close else ''


def load_yaml_file(path):
    """Load an option file; YAML syntax errors are reported with the file and line number."""
    if not osp.isfile(path):
        raise ConfigError(f'option file not found: {path}')
    with open(path, 'r', encoding='utf-8') as f:
        try:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
        except yaml.YAMLError as err:
            mark = getattr(err, 'problem_mark', None)
            where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
            problem = getattr(err, 'problem', None) or str(err)
            raise ConfigError(f'YAML syntax error in {path}{where}: {problem}') from None
    if not isinstance(opt, dict):
        raise ConfigError(f'option file {path} must contain a mapping of option keys, got {type(opt).__name__}')
    return opt


def apply_force_yml(opt, entries):
    """``a:b:c=value`` sets an *existing* key (as BasicSR), with the value parsed as YAML, never executed."""
    for entry in entries:
        if '=' not in entry:
            raise ConfigError(f"--force_yml entry '{entry}' must look like key:subkey=value")
        keys, value = entry.split('=', 1)
        keys = [k.strip() for k in keys.split(':')]
        node = opt
        for depth, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                where = ':'.join(keys[:depth]) or 'the top level'
                choices = node.keys() if isinstance(node, dict) else []
                raise ConfigError(f"--force_yml: unknown key '{key}' under {where}.{did_you_mean(key, choices)}")
            if depth < len(keys) - 1:
                node = node[key]
        node[keys[-1]] = yaml.safe_load(value.strip())


def _require_number(opt, dotted, positive=False, integer=False):
    node = opt
    for key in dotted.split('.'):
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    kind = int if integer else (int, float)
    if isinstance(node, bool) or not isinstance(node, kind):
        hint = ' (YAML 1.1 reads 2e-4 as a string: write 2.0e-4 or !!float 2e-4)' if isinstance(node, str) else ''
        raise ConfigError(f"option '{dotted}' must be a{'n integer' if integer else ' number'}, "
                          f'got {node!r} ({type(node).__name__}){hint}')
    if not math.isfinite(node):
        raise ConfigError(f"option '{dotted}' must be a finite number, got {node}")
    if positive and node <= 0:
        raise ConfigError(f"option '{dotted}' must be > 0, got {node}")


def check_options(opt, is_train, opt_path):
    unknown = [k for k in opt if k not in TOP_LEVEL_KEYS and not k.startswith('network_')]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"unknown top-level option '{key}' in {opt_path}.{did_you_mean(key, TOP_LEVEL_KEYS)}")
    for key in REQUIRED_KEYS[is_train]:
        if key not in opt:
            raise ConfigError(f"missing required option '{key}' in {opt_path}")
    if not isinstance(opt['network_g'], dict) or 'type' not in opt['network_g']:
        raise ConfigError(f"option 'network_g' needs a 'type' (the architecture name) in {opt_path}")
    if not isinstance(opt['datasets'], dict) or not opt['datasets']:
        raise ConfigError(f"option 'datasets' must map phases (train, val, test_1, ...) to datasets in {opt_path}")
    for phase, dataset in opt['datasets'].items():
        if not isinstance(dataset, dict) or 'type' not in dataset:
            raise ConfigError(f"dataset 'datasets.{phase}' needs a 'type' in {opt_path}")
        if phase.split('_')[0] not in ('train', 'val', 'test'):
            raise ConfigError(f"dataset phase 'datasets.{phase}' must start with train, val or test")
    if is_train:
        if 'train' not in opt['datasets']:
            raise ConfigError(f"training needs a 'datasets.train' entry in {opt_path}")
        _require_number(opt, 'train.total_iter', positive=True, integer=True)
        _require_number(opt, 'train.optim_g.lr', positive=True)
        _require_number(opt, 'train.ema_decay')
        _require_number(opt, 'train.nonfinite_patience', positive=True, integer=True)
        _require_number(opt, 'datasets.train.batch_size_per_gpu', positive=True, integer=True)
        _require_number(opt, 'datasets.train.gt_size', positive=True, integer=True)
        _require_number(opt, 'logger.save_checkpoint_freq', positive=True, integer=True)
        _require_number(opt, 'logger.keep_last_checkpoints', positive=True, integer=True)  # absent: keep all
        _require_number(opt, 'val.val_freq', positive=True, integer=True)
        if 'total_iter' not in opt['train']:
            raise ConfigError(f"missing required option 'train.total_iter' in {opt_path}")
    _require_number(opt, 'scale', positive=True, integer=True)
    upscale = opt['network_g'].get('upscale')
    if 'scale' in opt and upscale is not None and upscale != opt['scale']:
        raise ConfigError(f"option 'scale' is {opt['scale']} but 'network_g.upscale' is {upscale}: they must match")


def _set_paths(opt, root_path, is_train):
    paths = opt.setdefault('path', {}) or {}
    opt['path'] = paths
    for key, val in paths.items():
        if val is not None and ('resume_state' in key or 'pretrain_network' in key):
            paths[key] = osp.expanduser(val)
    if is_train:
        root = osp.join(root_path, 'experiments', opt['name'])
        paths.update(experiments_root=root, models=osp.join(root, 'models'),
                     training_states=osp.join(root, 'training_states'), log=root,
                     visualization=osp.join(root, 'visualization'))
    else:
        root = osp.join(root_path, 'results', opt['name'])
        paths.update(results_root=root, log=root, visualization=osp.join(root, 'visualization'))


def parse_options(root_path, is_train=True, argv=None):
    """Parse CLI flags and the option file into BasicSR's option dict (same keys BasicSR fills in)."""
    args = build_arg_parser(is_train).parse_args(argv)
    opt = load_yaml_file(args.opt)
    if args.force_yml:
        apply_force_yml(opt, args.force_yml)
    check_options(opt, is_train, args.opt)

    if args.launcher == 'none':
        opt['dist'] = False
    else:
        opt['dist'] = True
        init_dist(args.launcher, **(opt.get('dist_params') or {}))
    opt['rank'], opt['world_size'] = get_dist_info()

    num_gpu = opt.get('num_gpu', 'auto')
    opt['num_gpu'] = torch.cuda.device_count() if num_gpu == 'auto' else num_gpu
    if opt['num_gpu'] > 0 and not torch.cuda.is_available():
        raise ConfigError(f"num_gpu is {opt['num_gpu']} but CUDA is not available: set num_gpu: 0 or auto")

    seed = opt.get('manual_seed')
    if seed is None:
        seed = opt['manual_seed'] = random.randint(1, 10000)
    set_random_seed(seed + opt['rank'])

    opt['auto_resume'] = args.auto_resume
    opt['is_train'] = is_train
    if args.debug and not opt['name'].startswith('debug'):
        opt['name'] = 'debug_' + opt['name']

    for phase, dataset in opt['datasets'].items():
        dataset['phase'] = phase.split('_')[0]
        if 'scale' in opt:
            dataset['scale'] = opt['scale']
        for key in ('dataroot_gt', 'dataroot_lq'):
            if dataset.get(key) is not None:
                dataset[key] = osp.expanduser(dataset[key])

    opt.setdefault('logger', {})
    opt['logger'].setdefault('print_freq', 100)
    opt['logger'].setdefault('save_checkpoint_freq', 5000)
    _set_paths(opt, root_path, is_train)
    if is_train and 'debug' in opt['name']:
        if opt.get('val'):
            opt['val']['val_freq'] = 8
        opt['logger']['print_freq'] = 1
        opt['logger']['save_checkpoint_freq'] = 8
    return opt, args


def root_path_from_env():
    """Experiments and results go under $BASICSR_ILN_ROOT, else the current directory."""
    return osp.abspath(os.environ.get('BASICSR_ILN_ROOT', os.getcwd()))
