"""Option parsing for the train/test CLIs: BasicSR's flags and option layout, with checks that fail early.

Why not ``basicsr.utils.options.parse_options``: it initialises distributed training with CUDA
assumptions, applies ``--force_yml`` with ``exec``, accepts any key silently, and reports a YAML
typo or ``lr: 2e-4`` (a *string* in YAML 1.1) only as a crash deep inside training. Every key is
checked against the declared schema (schema.py), which also supplies the defaults.
"""
import argparse
import os
import random
import sys
import time
from os import path as osp

import torch
import yaml
from basicsr.utils import set_random_seed
from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.options import ordered_yaml

from .dist import init_dist
from .errors import ConfigError, did_you_mean
from .schema import OPTIONS, resolve_options, without_runtime
from .smoke import smoke_options


def build_arg_parser(is_train):
    parser = argparse.ArgumentParser(
        description=f"{'Train' if is_train else 'Test'} a restoration network from a BasicSR-style YAML option file.")
    parser.add_argument('-opt', type=str, required=True, help='Path to the option YAML file.')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true', help='resume from the latest complete checkpoint')
    parser.add_argument('--debug', action='store_true', help="prefix the name with 'debug_', log and save often")
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help='set by the launcher')
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='KEY:SUB=VALUE',
                        help='set option keys, e.g. train:ema_decay=0.999 (values parsed as YAML; a key absent '
                        'from the file must be a declared one)')
    parser.add_argument('--print-options', action='store_true',
                        help='print the resolved options (defaults filled in) as YAML and exit')
    parser.add_argument('--traceback', action='store_true', help='show the Python traceback of user errors')
    if is_train:
        parser.add_argument('--smoke', action='store_true',
                            help='a run of about a minute on a CPU: 20 iterations of a small network of the same '
                            'family and norm on local data, named <name>_smoke (prints what it changes)')
    else:
        parser.add_argument('--precision', default=None, metavar='P[,P...]',
                            help='evaluate in these precisions (fp32, bf16, fp16, int8); overrides val.precision')
    return parser


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
    """``a:b:c=value`` sets a key of the file or a declared one (absent mappings on the way are created),
    with the value parsed as YAML, never executed; the result is checked with the rest of the options."""
    for entry in entries:
        if '=' not in entry:
            raise ConfigError(f"--force_yml entry '{entry}' must look like key:subkey=value")
        keys, value = entry.split('=', 1)
        keys = [k.strip() for k in keys.split(':')]
        node, kind = opt, OPTIONS
        for depth, key in enumerate(keys):
            where = ':'.join(keys[:depth]) or 'the top level'
            if not isinstance(node, dict):
                raise ConfigError(f"--force_yml: {where} is {node!r}, not a mapping with a key '{key}'")
            child = kind.child(key, node) if kind is not None else None
            if key not in node and child is None:
                choices = [*node, *(kind.child_names(node) if kind is not None else ())]
                raise ConfigError(f"--force_yml: unknown key '{key}' under {where}.{did_you_mean(key, choices)}")
            if depth == len(keys) - 1:
                node[key] = yaml.safe_load(value.strip())
            else:
                if node.get(key) is None:
                    node[key] = {}
                node, kind = node[key], child


def check_options(opt, is_train, opt_path):
    """The options checked against the schema, with its defaults filled in (a new dict), and the checks
    that involve several keys."""
    opt = resolve_options(opt, is_train, opt_path)
    if is_train and 'train' not in opt['datasets']:
        raise ConfigError(f"training needs a 'datasets.train' entry in {opt_path}")
    if is_train and not (opt['train'].get('pixel_opt') or opt['train'].get('perceptual_opt')):
        raise ConfigError(f"training needs a loss: 'train.pixel_opt' or 'train.perceptual_opt' in {opt_path}")
    upscale = opt['network_g'].get('upscale')
    if upscale is not None and upscale != opt['scale']:
        raise ConfigError(f"option 'scale' is {opt['scale']} but 'network_g.upscale' is {upscale}: they must match")
    for phase, dataset in opt['datasets'].items():
        _check_loader(dataset, f'datasets.{phase}', phase == 'train')
    wandb = opt['logger'].get('wandb') or {}
    if is_train and wandb.get('project') and not opt['logger']['use_tb_logger']:
        raise ConfigError("option 'logger.wandb.project' needs 'logger.use_tb_logger: true' (W&B syncs the "
                          'TensorBoard logs)')
    return opt


def _check_loader(dataset, where, is_train_phase):
    """Loader settings that torch or BasicSR would refuse only once the loader is built."""
    if dataset.get('prefetch_mode') == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError(f"option '{where}.prefetch_mode' is 'cuda' but CUDA is not available: use null or 'cpu'")
        if not dataset.get('pin_memory'):
            raise ConfigError(f"option '{where}.prefetch_mode: cuda' needs '{where}.pin_memory: true' "
                              "(its side-stream copy is asynchronous only from page-locked memory)")
    if dataset.get('persistent_workers') and not (is_train_phase and dataset['num_worker_per_gpu'] > 0):
        raise ConfigError(f"option '{where}.persistent_workers: true' needs loader workers: num_worker_per_gpu > 0 "
                          'in the train phase (validation and test loaders have none)')


def _set_paths(opt, root_path, is_train):
    paths = opt['path']
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
    if is_train and args.smoke:  # before --force_yml, which may still override the smoke values
        opt, changes = smoke_options(opt, args.opt)
        for change in changes:
            print(f'--smoke: {change}', file=sys.stderr)
    if args.force_yml:
        apply_force_yml(opt, args.force_yml)
    if not is_train and opt.get('val') is None:
        opt['val'] = {}  # the test CLI always evaluates: with the val defaults
    opt = check_options(opt, is_train, args.opt)
    if args.debug and not opt['name'].startswith('debug'):
        opt['name'] = 'debug_' + opt['name']
    if is_train and 'debug' in opt['name']:
        if opt.get('val'):
            opt['val']['val_freq'] = 8
        opt['logger']['print_freq'] = 1
        opt['logger']['save_checkpoint_freq'] = 8
    if args.print_options:  # like --help: nothing is initialised, read or written
        print(dump_options(opt), end='')
        sys.exit(0)

    # num_gpu first: the process group's backend and device follow it (a num_gpu: 0 run uses gloo, on GPUs too)
    if opt['num_gpu'] == 'auto':
        opt['num_gpu'] = torch.cuda.device_count()
    if opt['num_gpu'] > 0 and not torch.cuda.is_available():
        raise ConfigError(f"num_gpu is {opt['num_gpu']} but CUDA is not available: set num_gpu: 0 or auto")
    if args.launcher == 'none':
        opt['dist'] = False
    else:
        opt['dist'] = True
        init_dist(args.launcher, opt['num_gpu'], **(opt.get('dist_params') or {}))
    opt['rank'], opt['world_size'] = get_dist_info()

    seed = opt.get('manual_seed')
    if seed is None:
        seed = opt['manual_seed'] = random.randint(1, 10000)
    set_random_seed(seed + opt['rank'])

    opt['auto_resume'] = args.auto_resume
    opt['is_train'] = is_train

    for phase, dataset in opt['datasets'].items():
        dataset['phase'] = phase.split('_')[0]
        dataset['scale'] = opt['scale']
        for key in ('dataroot_gt', 'dataroot_lq'):
            if dataset.get(key) is not None:
                dataset[key] = osp.expanduser(dataset[key])

    _set_paths(opt, root_path, is_train)
    return opt, args


class _OptionDumper(yaml.SafeDumper):
    """Block mappings, flow lists (``betas: [0.9, 0.99]``), as the hand-written option files."""


_OptionDumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    'tag:yaml.org,2002:seq', data, flow_style=True))


def dump_options(opt):
    """YAML text of resolved options that our CLIs load back to the same options."""
    return yaml.dump(opt, Dumper=_OptionDumper, sort_keys=False, allow_unicode=True)


def write_resolved_options(opt, folder, opt_path):
    """Save ``opt`` as ``<folder>/<option file name>``: the run's resolved options (defaults, --force_yml
    overrides, the drawn seed) without the keys the CLI fills in, so the run can be re-tested or resumed
    from its own folder with exactly the options it ran with."""
    header = (f'# Resolved options of {opt_path} ({time.asctime()}), defaults filled in\n'
              f"# CMD: {' '.join(sys.argv)}\n")
    with open(osp.join(folder, osp.basename(opt_path)), 'w', encoding='utf-8') as f:
        f.write(header + dump_options(without_runtime(opt)))


def root_path_from_env():
    """Experiments and results go under $BASICSR_ILN_ROOT, else the current directory."""
    return osp.abspath(os.environ.get('BASICSR_ILN_ROOT', os.getcwd()))
