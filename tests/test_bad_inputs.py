"""Bad inputs to the real train/test CLIs: each run exits non-zero with one ``error:`` line that names
the culprit (option key, file, expected vs actual) and prints no Python traceback.

Every case runs the real CLI as ``python basicsr_iln/<script>.py`` would, in a fork of the test process
(``helpers.run_python``), when a test first asks for its outcome.

Decided behaviours: 16-bit and alpha images are refused (BasicSR's OpenCV reader would silently cut
them to 8-bit RGB); gray images are accepted by an RGB network (read as 3 equal channels:
``test_gray_images_train_an_rgb_network``); a 1-channel network needs ``color: y`` on its datasets.
"""
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from basicsr_iln.utils.network_config import build_network_checked
from helpers import eval_options_from_train, run_cli, tiny_train_options

pytestmark = pytest.mark.slow  # every test here runs real CLIs or several processes

CHECKPOINT = 'net.pth'  # a valid checkpoint of the tiny network, in every test-CLI case folder


@dataclass
class Run:
    """One CLI invocation being prepared: a case's setup edits ``opt`` and may write files or add args."""
    dir: Path
    opt: dict
    args: list = field(default_factory=list)
    root: Path = None  # BASICSR_ILN_ROOT; default: the case folder
    yml_text: str = None  # written instead of ``opt`` when set
    opt_path: Path = None  # default: the dumped options in the case folder

    def dump(self):
        return yaml.safe_dump(self.opt, sort_keys=False)

    def private_train_data(self):
        """A copy of the training pairs that the case may damage: (HR folder, LR folder)."""
        train = self.opt['datasets']['train']
        hr, lr = self.dir / 'data' / 'HR', self.dir / 'data' / 'LR_x2'
        shutil.copytree(train['dataroot_gt'], hr)
        shutil.copytree(train['dataroot_lq'], lr)
        train.update(dataroot_gt=str(hr), dataroot_lq=str(lr))
        return hr, lr


@dataclass
class Case:
    id: str
    script: str  # 'train' or 'test'
    setup: object  # callable(Run)
    expect: tuple  # substrings of the error line


def set_in(keys, value):
    """Setup that sets opt[k1][k2]... = value (creating absent sections)."""
    def setup(run):
        node = run.opt
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return setup


def previous_run_then_batch_too_large(run):
    """A finished run of the same name is on disk; the new start fails after BasicSR archived it."""
    models = run.dir / 'experiments' / run.opt['name'] / 'models'
    models.mkdir(parents=True)
    (models / 'net_g_100.pth').write_text('the previous run')
    run.opt['train']['global_batch_size'] = 16


def rename_top_level(run):
    run.opt['trian'] = run.opt.pop('train')


def lr_written_as_2e_4(run):
    run.yml_text = run.dump().replace('lr: 0.0002', 'lr: 2e-4')
    assert 'lr: 2e-4' in run.yml_text


def yaml_syntax_error(run):
    lines = run.dump().splitlines()
    at = lines.index('  total_iter: 4')
    lines[at] = '  total_iter: [4'
    run.yml_text = '\n'.join(lines) + '\n'


def missing_folder(run):
    run.opt['datasets']['train']['dataroot_gt'] = str(run.dir / 'no_such_folder')


def empty_folder(run):
    (run.dir / 'empty').mkdir()
    run.opt['datasets']['train']['dataroot_lq'] = str(run.dir / 'empty')


def one_lq_missing(run):
    _, lr = run.private_train_data()
    (lr / 'img07.png').unlink()


def lq_renamed(run):
    _, lr = run.private_train_data()
    (lr / 'img03.png').rename(lr / 'img03_x2.png')


def lq_as_jpeg(run):
    """Same name, other extension: BasicSR's paired_paths_from_folder would stop on an AssertionError."""
    _, lr = run.private_train_data()
    cv2.imwrite(str(lr / 'img03.jpg'), cv2.imread(str(lr / 'img03.png')))
    (lr / 'img03.png').unlink()


def lq_wrong_size(run):
    _, lr = run.private_train_data()
    cv2.imwrite(str(lr / 'img02.png'), np.zeros((30, 30, 3), np.uint8))


def corrupt_gt(run):
    hr, _ = run.private_train_data()
    data = (hr / 'img01.png').read_bytes()
    (hr / 'img01.png').write_bytes(data[:len(data) // 2])


def sixteen_bit_gt(run):
    hr, _ = run.private_train_data()
    img = cv2.imread(str(hr / 'img04.png')).astype(np.uint16) * 257
    cv2.imwrite(str(hr / 'img04.png'), img)


def rgba_gt(run):
    hr, _ = run.private_train_data()
    img = cv2.imread(str(hr / 'img05.png'))
    cv2.imwrite(str(hr / 'img05.png'), np.dstack([img, np.full(img.shape[:2], 255, np.uint8)]))


def global_batch_not_a_multiple(run):
    run.opt['datasets']['train']['batch_size_per_gpu'] = 3
    run.opt['train']['global_batch_size'] = 16


def unwritable_root(run):
    (run.dir / 'a_file').write_text('not a folder')
    run.root = run.dir / 'a_file' / 'outputs'


def missing_option_file(run):
    run.opt_path = run.dir / 'no_such_options.yml'


def checkpoint_of(run, **network):
    """Save the tiny network with ``network`` changed as a BasicSR checkpoint; point the test options at it."""
    net = build_network_checked(dict(run.opt['network_g'], **network))
    path = run.dir / f'other_{"_".join(f"{k}{v}" for k, v in network.items())}.pth'
    torch.save({'params': net.state_dict()}, path)
    run.opt['path'].update(pretrain_network_g=str(path), param_key_g='params')


class MakesMarker:
    """Unpickling this creates the folder ``path``: a checkpoint holding it needs code execution to load."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.makedirs, (self.path, )


def pickle_checkpoint(run):
    path = run.dir / 'evil.pth'
    torch.save({'params': {'w': torch.zeros(1)}, 'extra': MakesMarker(run.dir / 'MARKER')}, path)
    run.opt['path']['pretrain_network_g'] = str(path)


CASES = [
    Case('unknown_top_level_key', 'train', rename_top_level,
         ("unknown top-level option 'trian'", "Did you mean 'train'")),
    Case('lr_string', 'train', lr_written_as_2e_4, ("'train.optim_g.lr' must be a number", "'2e-4' (str)")),
    Case('unknown_arch', 'train', set_in(['network_g', 'type'], 'SwinIR_ILN'),
         ("unknown network_g type 'SwinIR_ILN'", 'SwinIR_iLN', 'HAT_iLN')),
    Case('unknown_model', 'train', set_in(['model_type'], 'IRmodel'),
         ("unknown model_type 'IRmodel'", "Did you mean 'IRModel'", 'Valid: ')),
    Case('unknown_dataset', 'train', set_in(['datasets', 'train', 'type'], 'PairedImageDatset'),
         ("unknown dataset type 'PairedImageDatset' at datasets.train.type", 'PairedImageDataset')),
    Case('unknown_metric', 'train', set_in(['val', 'metrics', 'psnr', 'type'], 'calculate_psrn'),
         ("unknown metric type 'calculate_psrn' at val.metrics.psnr.type", 'calculate_psnr')),
    Case('unknown_norm', 'train', set_in(['network_g', 'norm_type'], 'iLN'),
         ('SwinIR_iLN', "norm_type 'iLN'", 'iln, ')),
    Case('missing_data_folder', 'train', missing_folder, ('no_such_folder', 'datasets.train.dataroot_gt', 'not exist')),
    Case('empty_data_folder', 'train', empty_folder, ('datasets.train.dataroot_lq', 'contains no images')),
    Case('count_mismatch', 'train', one_lq_missing, ('datasets.train', '8 GT images', '7 LQ images')),
    Case('name_mismatch', 'train', lq_renamed, ("GT image 'img03.png' has no LQ partner 'img03.png'", 'filename_tmpl')),
    Case('extension_mismatch', 'train', lq_as_jpeg,
         ("GT image 'img03.png' has no LQ partner 'img03.png'", "found 'img03.jpg', but BasicSR pairs the extension")),
    Case('lq_size', 'train', lq_wrong_size, ("LQ 'img02.png' is 30x30", "GT 'img02.png' is 64x64", 'must be 32x32')),
    Case('corrupt_image', 'train', corrupt_gt, ('cannot read image', 'img01.png')),
    Case('image_16_bit', 'train', sixteen_bit_gt, ('img04.png', 'more than 8 bits per channel', 'convert it to 8-bit')),
    Case('image_rgba', 'train', rgba_gt, ('img05.png', 'alpha channel', 'mode RGBA')),
    Case('gt_size_too_big', 'train', set_in(['datasets', 'train', 'gt_size'], 96),
         ('datasets.train.gt_size is 96', 'is only 64x64')),
    Case('gray_network_rgb_data', 'train', set_in(['network_g', 'in_chans'], 1),
         ('network_g.in_chans is 1', 'datasets.train gives 3-channel images', 'color: y')),
    Case('window_not_dividing_img_size', 'train', set_in(['network_g', 'img_size'], 18),
         ('network_g (SwinIR_iLN)', '(18, 18) must be a multiple of window_size 4')),
    Case('scale_not_upscale', 'train', set_in(['scale'], 3), ("'scale' is 3", "'network_g.upscale' is 2")),
    Case('yaml_syntax', 'train', yaml_syntax_error, ('YAML syntax error', 'train.yml at line ')),
    Case('zero_total_iter', 'train', set_in(['train', 'total_iter'], 0), ("'train.total_iter' must be > 0, got 0", )),
    Case('negative_total_iter', 'train', set_in(['train', 'total_iter'], -5), ("'train.total_iter'", 'got -5')),
    Case('batch_larger_than_dataset', 'train', set_in(['datasets', 'train', 'batch_size_per_gpu'], 16),
         ('batch_size_per_gpu', '= 16 is larger than the 8 training images')),
    Case('global_batch_not_a_multiple', 'train', global_batch_not_a_multiple,
         ('train.global_batch_size 16 is not a multiple of datasets.train.batch_size_per_gpu 3 x 1 processes', )),
    Case('global_batch_larger_than_dataset', 'train', set_in(['train', 'global_batch_size'], 16),
         ('accumulated micro-batches) = 16 is larger than the 8 training images', )),
    Case('failed_start_keeps_previous_run', 'train', previous_run_then_batch_too_large,
         ('= 16 is larger than the 8 training images', )),
    Case('heads_not_dividing_width', 'train', set_in(['network_g', 'num_heads'], [5]),
         ('network_g (SwinIR_iLN)', 'width 12 must be divisible by num_heads (5)')),
    Case('grad_clip_norm_negative', 'train', set_in(['train', 'grad_clip_norm'], -1.0),
         ('train.grad_clip_norm', '-1.0')),
    Case('unwritable_experiments_folder', 'train', unwritable_root,
         ('cannot create the experiment folder', 'a_file', 'is a file')),
    Case('unwritable_results_folder', 'test', unwritable_root,
         ('cannot create the results folder', 'a_file', 'is a file')),
    Case('force_yml_bad_key', 'train', lambda run: run.args.extend(['--force_yml', 'train:ema_decy=0.99']),
         ("--force_yml: unknown key 'ema_decy' under train", "Did you mean 'ema_decay'")),
    Case('missing_option_file', 'train', missing_option_file, ('option file not found', 'no_such_options.yml')),
    Case('pretrain_missing', 'train', set_in(['path', 'pretrain_network_g'], '/no/such/net_g.pth'),
         ('checkpoint not found: /no/such/net_g.pth', 'path.pretrain_network_g')),
    Case('checkpoint_other_arch', 'test', lambda run: checkpoint_of(run, type='HAT_iLN', squeeze_factor=4),
         ('does not fit the network SwinIR_iLN(', 'unexpected keys: ', 'conv_block')),
    Case('checkpoint_other_scale', 'test', lambda run: checkpoint_of(run, upscale=4),
         ('does not fit', 'unexpected keys: upsample.2.bias', 'for another scale', 'upscale=2')),
    Case('checkpoint_needs_pickle', 'test', pickle_checkpoint,
         ('refusing to load', 'evil.pth', 'pickled code', 'os.makedirs')),
]


def drop_crop_border(run):
    del run.opt['val']['metrics']['psnr']['crop_border']


def typo(keys, value, expect_did_you_mean):
    """Case setup and expected words for a misspelt key ``keys`` (the last one misspelt)."""
    where = '.'.join(keys)
    return set_in(keys, value), (f"unknown option '{where}' in ", f"Did you mean '{expect_did_you_mean}'?")


# Option-schema errors (basicsr_iln/utils/schema.py): found before any data is read or folder created.
OPTION_CASES = [
    Case('typo_train_precision', 'train', *typo(['train', 'precison'], 'bf16', 'train.precision')),
    Case('typo_train_nonfinite_patience', 'train',
         *typo(['train', 'nonfinite_patince'], 3, 'train.nonfinite_patience')),
    Case('typo_val_self_ensemble', 'train', *typo(['val', 'self_ensembel'], True, 'val.self_ensemble')),
    Case('typo_dataset_key', 'train', *typo(['datasets', 'train', 'use_flip'], True, 'datasets.train.use_hflip')),
    Case('typo_metric_key', 'train',
         *typo(['val', 'metrics', 'psnr', 'test_y_chanel'], True, 'val.metrics.psnr.test_y_channel')),
    Case('typo_logger_key', 'train',
         *typo(['logger', 'save_checkpoint_frq'], 2, 'logger.save_checkpoint_freq')),
    Case('typo_optimizer_key', 'train', *typo(['train', 'optim_g', 'weight_decy'], 0, 'train.optim_g.weight_decay')),
    Case('typo_scheduler_key', 'train', *typo(['train', 'scheduler', 'milestone'], [2], 'train.scheduler.milestones')),
    Case('typo_loss_key', 'train', *typo(['train', 'pixel_opt', 'weight'], 1.0, 'train.pixel_opt.loss_weight')),
    Case('typo_path_key', 'train', *typo(['path', 'strict_load'], True, 'path.strict_load_g')),
    Case('typo_compile_key', 'train', *typo(['compile', 'bakend'], 'eager', 'compile.backend')),
    Case('typo_in_test_options', 'test', *typo(['val', 'self_ensembel'], True, 'val.self_ensemble')),
    Case('self_ensemble_not_bool', 'test', set_in(['val', 'self_ensemble'], 'yes'),
         ("option 'val.self_ensemble' must be true or false, got 'yes' (str)", )),
    Case('ema_decay_not_number', 'train', set_in(['train', 'ema_decay'], 'high'),
         ("option 'train.ema_decay' must be a number, got 'high' (str)", )),
    Case('loss_type_typo', 'train', set_in(['train', 'pixel_opt', 'type'], 'L1loss'),
         ("unknown loss type 'L1loss' at train.pixel_opt.type", "Did you mean 'L1Loss'?")),
    Case('metric_argument_missing', 'train', drop_crop_border,
         ("missing required option 'val.metrics.psnr.crop_border' in ", )),
    Case('top_level_precision_removed', 'train', set_in(['precision'], 'bf16'),
         ("unknown top-level option 'precision'", "Did you mean 'train.precision' or 'val.precision'?")),
    Case('prefetch_mode_gpu', 'train', set_in(['datasets', 'train', 'prefetch_mode'], 'gpu'),
         ("option 'datasets.train.prefetch_mode' must be one of null, cpu, cuda, got 'gpu'", )),
    Case('force_yml_declared_key_misspelt', 'train',
         lambda run: run.args.extend(['--force_yml', 'train:grad_clip_nrom=0.5']),
         ("--force_yml: unknown key 'grad_clip_nrom' under train", "Did you mean 'grad_clip_norm'?")),
    Case('nccl_for_a_cpu_run', 'train',  # num_gpu: 0, with or without CUDA; refused before torchrun's env is read
         lambda run: (set_in(['dist_params', 'backend'], 'nccl')(run), run.args.extend(['--launcher', 'pytorch'])),
         ("option 'dist_params.backend' is 'nccl' but the run trains on CPU", "set 'dist_params.backend: gloo'")),
]
if not torch.cuda.is_available():
    OPTION_CASES.append(Case('prefetch_mode_cuda_without_cuda', 'train',
                             set_in(['datasets', 'train', 'prefetch_mode'], 'cuda'),
                             ("'datasets.train.prefetch_mode' is 'cuda' but CUDA is not available", )))


def prepare(case, base_dir, data, checkpoint, extra_args=()):
    """Write the case's files under ``base_dir/case.id``; returns the arguments of ``run_cli``."""
    train_opt = tiny_train_options(data, case.id)
    folder = base_dir / case.id
    folder.mkdir()
    if case.script == 'train':
        run = Run(folder, train_opt)
    else:
        shutil.copy(checkpoint, folder / CHECKPOINT)
        run = Run(folder, eval_options_from_train(train_opt, case.id, folder / CHECKPOINT))
    case.setup(run)
    if run.opt_path is None:
        run.opt_path = folder / f'{case.script}.yml'
        run.opt_path.write_text(run.yml_text or run.dump())
    return (case.script, run.opt_path, folder, *run.args, *extra_args), {'root': run.root}


class Outcomes:
    """{case id: (case folder, CompletedProcess)}: a case's CLI runs when a test first asks for it."""

    def __init__(self, base, cases, data, checkpoint):
        self.base, self.cases, self.data, self.checkpoint, self.done = base, cases, data, checkpoint, {}

    def __getitem__(self, name):
        if name not in self.done:
            case, extra_args = self.cases[name]
            (script, opt_path, folder, *args), kwargs = prepare(case, self.base, self.data, self.checkpoint, extra_args)
            self.done[name] = folder, run_cli(script, opt_path, folder, *args, **kwargs)
        return self.done[name]


@pytest.fixture(scope='module')
def outcomes(tiny_sr_data, tmp_path_factory):
    """The outcome of every case, and of the ``--traceback`` and gray-data runs."""
    base = tmp_path_factory.mktemp('bad_inputs')
    checkpoint = base / CHECKPOINT
    net_opt = tiny_train_options(tiny_sr_data, 'net')['network_g']
    torch.save({'params_ema': build_network_checked(net_opt).state_dict()}, checkpoint)
    cases = {case.id: (case, ()) for case in CASES + OPTION_CASES}
    cases['traceback'] = Case('traceback', 'train', set_in(['model_type'], 'IRmodel'), ()), ['--traceback']
    cases['gray'] = Case('gray', 'train', gray_training_data, ()), ()
    return Outcomes(base, cases, tiny_sr_data, checkpoint)


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_error_line(case, outcomes):
    _, result = outcomes[case.id]
    assert_one_error_line(result, case.expect)


def assert_one_error_line(result, expect):
    assert result.returncode == 2, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith('error: '), result.stderr[-3000:]
    assert [line for line in lines if line.startswith('error:')] == lines[-1:]
    for words in expect:
        assert words in lines[-1]


@pytest.mark.parametrize('case', OPTION_CASES, ids=[c.id for c in OPTION_CASES])
def test_bad_option_fails_before_anything_is_written(case, outcomes):
    folder, result = outcomes[case.id]
    assert_one_error_line(result, case.expect)
    assert not [name for name in ('experiments', 'results', 'tb_logger') if (folder / name).exists()]


def test_yaml_error_names_the_line(outcomes):
    folder, result = outcomes['yaml_syntax']
    broken = (folder / 'train.yml').read_text().splitlines().index('  total_iter: [4') + 1
    error = result.stderr.strip().splitlines()[-1]
    reported = int(error.split(' at line ')[1].split(',')[0])
    assert broken <= reported <= broken + 1  # the parser notices at the bracket's line or the next one


def test_global_batch_error_comes_before_any_folder(outcomes):
    folder, _ = outcomes['global_batch_not_a_multiple']
    assert not (folder / 'experiments').exists()


def test_failed_start_leaves_the_disk_as_it_was(outcomes):
    """The new run's folders are removed and the previous run's folder, which BasicSR had renamed to
    *_archived_<time>, is back under its name."""
    for case in ('failed_start_keeps_previous_run', 'global_batch_larger_than_dataset', 'heads_not_dividing_width'):
        folder, result = outcomes[case]
        assert result.returncode == 2
        experiments = sorted(p.name for p in (folder / 'experiments').iterdir()) \
            if (folder / 'experiments').exists() else []
        assert not [name for name in experiments if '_archived_' in name], experiments
        assert not (folder / 'tb_logger').exists() or not any((folder / 'tb_logger').iterdir())
    folder, _ = outcomes['failed_start_keeps_previous_run']
    (previous, ) = (folder / 'experiments').iterdir()
    assert (previous / 'models' / 'net_g_100.pth').read_text() == 'the previous run'
    assert [p.name for p in (folder / 'experiments').iterdir()] == [previous.name]


def test_pickle_checkpoint_ran_nothing(outcomes):
    folder, result = outcomes['checkpoint_needs_pickle']
    assert result.returncode == 2
    assert not (folder / 'MARKER').exists()
    torch.load(folder / 'evil.pth', weights_only=False)  # what an unsafe load would have done
    assert (folder / 'MARKER').is_dir()


def test_traceback_flag_shows_the_traceback(outcomes):
    _, result = outcomes['traceback']
    assert result.returncode != 0
    assert 'Traceback (most recent call last)' in result.stderr
    assert "ConfigError: unknown model_type 'IRmodel'" in result.stderr


def gray_training_data(run):
    """All training images gray (1-channel PNGs), a 2-iteration run without validation."""
    for folder in run.private_train_data():
        for path in folder.glob('*.png'):
            cv2.imwrite(str(path), cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY))
    del run.opt['datasets']['val'], run.opt['val']
    run.opt['train']['total_iter'] = 2


def test_gray_images_train_an_rgb_network(outcomes):
    """BasicSR reads gray files as 3 equal channels, so an RGB network trains on them: accepted."""
    folder, result = outcomes['gray']
    assert result.returncode == 0, result.stderr[-3000:]
    hr = next((folder / 'data' / 'HR').glob('*.png'))
    assert cv2.imread(str(hr), cv2.IMREAD_UNCHANGED).ndim == 2
    latest = torch.load(folder / 'experiments' / 'gray' / 'models' / 'net_g_latest.pth', weights_only=True)
    assert all(torch.isfinite(v).all() for v in latest['params'].values())
