"""The option schema: every key an option file may hold, declared once with its type, default and a
one-line meaning, and the walker that checks a file against it and fills in the defaults.

Why: BasicSR reads options with plain dict look-ups spread over its code, so a misspelt key
(``train.precison``) is silently ignored and a wrong type fails deep inside training. With every key
declared here, the CLIs reject unknown keys (naming the closest valid one) and bad values before any
data is read or any folder is created, defaults live in one place, and the resolved options can be
printed (``--print-options``) and saved with the experiment.

Conventions:
* a ``None`` default means "absent": the key is not filled in and the reader's own default (named in
  the doc) applies; null is accepted wherever the default is ``None``;
* ``train_only`` keys are required / filled in only when training, for dataset keys only in the
  ``train`` phase (elsewhere they are accepted and ignored, as BasicSR does);
* ``runtime`` keys are filled in by the CLI (a value in a file is replaced) and never saved;
* losses, metrics, the optimizer and the scheduler accept exactly the keyword arguments of the
  callable their ``type`` names (types guessed from its defaults) and leave the defaults to it;
* ``network_g`` is checked by the architecture's constructor (utils/network_config.build_network_checked).
"""
import inspect
import math
from copy import deepcopy
from dataclasses import dataclass, replace

import torch
from basicsr.models import lr_scheduler
from basicsr.utils.registry import DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from basicsr_iln.analysis.precision import EVAL_PRECISIONS, FLOAT_DTYPES
from basicsr_iln.archs.chunking import DEFAULT_CHUNK_TOKENS

from .errors import ConfigError, did_you_mean

PHASES = ('train', 'val', 'test')


@dataclass(frozen=True)
class Context:
    """Where a check happens: the option file (for messages) and whether training settings apply."""
    opt_path: str = None
    training: bool = True

    def in_file(self):
        return f' in {self.opt_path}' if self.opt_path else ''


def _fail(where, must, value, hint=''):
    raise ConfigError(f"option '{where}' must be {must}, got {value!r} ({type(value).__name__}){hint}")


def _join(where, key):
    return f'{where}.{key}' if where else str(key)


def _plain(value):
    """Plain dicts and lists all the way down (YAML loads OrderedDicts; signatures hold tuples)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Kind:
    """A type of option value. ``resolve`` returns the value checked, with defaults filled in below it;
    ``child`` is the kind of ``value[key]`` (None: no such key), for ``--force_yml``."""
    shape = (object, )  # the Python types a value of this kind has (Either picks by them)
    expected = 'a value'

    def resolve(self, value, where, ctx):
        return _plain(value)

    def child(self, key, value):
        return None

    def child_names(self, value):
        return ()

    def without_runtime(self, value):
        return value


class Anything(Kind):
    """Checked elsewhere, or free-form (torch.compile options)."""

    def child(self, key, value):
        return self


class Boolean(Kind):
    shape = (bool, )
    expected = 'true or false'

    def resolve(self, value, where, ctx):
        if not isinstance(value, bool):
            _fail(where, self.expected, value)
        return value


class Text(Kind):
    shape = (str, )

    def __init__(self, expected='a string'):
        self.expected = expected

    def resolve(self, value, where, ctx):
        if not isinstance(value, str):
            _fail(where, self.expected, value)
        return value


def _yaml_float_hint(value):
    """YAML 1.1 (PyYAML) reads exponent numbers without a dot, such as 2e-4, as strings."""
    if not isinstance(value, str):
        return ''
    try:
        float(value)
    except ValueError:
        return ''
    return ' (YAML 1.1 reads 2e-4 as a string: write 2.0e-4 or !!float 2e-4)'


class Number(Kind):
    """An int or float within [low, high] (``low_open``: strictly above ``low``), finite unless ``finite`` is
    false (a type guessed from a signature: the callable judges the value)."""
    shape = (int, float)
    types = (int, float)
    expected = 'a number'

    def __init__(self, low=None, high=None, low_open=False, finite=True):
        self.low, self.high, self.low_open, self.finite = low, high, low_open, finite

    def resolve(self, value, where, ctx):
        if isinstance(value, bool) or not isinstance(value, self.types):
            _fail(where, self.expected, value, _yaml_float_hint(value))
        if self.finite and not math.isfinite(value):
            _fail(where, 'a finite number', value)
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            _fail(where, f"{'>' if self.low_open else '>='} {self.low}", value)
        if self.high is not None and value > self.high:
            _fail(where, f'<= {self.high}', value)
        return value


class Integer(Number):
    shape = types = (int, )
    expected = 'an integer'


POSITIVE_INT = Integer(0, low_open=True)
NON_NEGATIVE_INT = Integer(0)
POSITIVE_NUMBER = Number(0, low_open=True)


class OneOf(Kind):
    def __init__(self, *values):
        self.values = values
        self.shape = tuple({type(v) for v in values})
        names = ['null' if v is None else str(v) for v in values]
        self.expected = names[0] if len(names) == 1 else 'one of ' + ', '.join(names)

    def resolve(self, value, where, ctx):
        if value not in self.values or isinstance(value, bool) != any(isinstance(v, bool) for v in self.values):
            _fail(where, self.expected, value)
        return value


class ListOf(Kind):
    shape = (list, tuple)

    def __init__(self, item, length=None):
        self.item, self.length = item, length
        self.expected = f"a list of {f'{length} ' if length else ''}values ({item.expected} each)"

    def resolve(self, value, where, ctx):
        if not isinstance(value, (list, tuple)) or (self.length and len(value) != self.length):
            _fail(where, self.expected, value)
        return [self.item.resolve(v, f'{where}[{i}]', ctx) for i, v in enumerate(value)]


class Either(Kind):
    """The first alternative whose shape fits; a mapping or list that fits one alternative reports its own error."""

    def __init__(self, *kinds):
        self.kinds = kinds
        self.shape = tuple(t for k in kinds for t in k.shape)
        self.expected = ' or '.join(k.expected for k in kinds)

    def resolve(self, value, where, ctx):
        fitting = [k for k in self.kinds if isinstance(value, k.shape)]
        if len(fitting) == 1 and isinstance(value, (dict, list)):
            return fitting[0].resolve(value, where, ctx)
        for kind in fitting:
            try:
                return kind.resolve(value, where, ctx)
            except ConfigError:
                pass
        _fail(where, self.expected, value)

    def child(self, key, value):
        return next((c for c in (k.child(key, value) for k in self.kinds) if c is not None), None)

    def child_names(self, value):
        return [name for k in self.kinds for name in k.child_names(value)]


class Registered(Kind):
    """The name of a class or function in one of BasicSR's registries."""
    shape = (str, )

    def __init__(self, registry, what):
        self.registry, self.what = registry, what
        self.expected = f'the name of a registered {what}'

    def resolve(self, value, where, ctx):
        if not isinstance(value, str):
            _fail(where, self.expected, value)
        if value not in self.registry:
            valid = sorted(name for name, _ in self.registry)
            raise ConfigError(f"unknown {self.what} '{value}' at {where}.{did_you_mean(value, valid)} "
                              f"Valid: {', '.join(valid)}")
        return value


@dataclass(frozen=True)
class Option:
    """One declared key: its kind, default (None: absent), meaning, and when it is required or filled in."""
    kind: Kind
    default: object
    doc: str
    required: bool = False
    train_only: bool = False
    runtime: bool = False

    def applies(self, ctx):
        return ctx.training or not self.train_only


def resolve_entry(option, value, where, ctx):
    """``value`` of the key ``where`` checked against ``option`` (null: absent, or an empty section)."""
    if value is None:
        if option.default is None and not (option.required and option.applies(ctx)):
            return None
        if isinstance(option.default, dict):
            value = {}
    return option.kind.resolve(value, where, ctx)


class Section(Kind):
    """A mapping with declared keys (``open``: undeclared keys are kept unchecked)."""
    shape = (dict, )

    def __init__(self, options, open=False):
        self.options, self.open = options, open
        self.expected = f"a mapping ({', '.join(self.child_names(None))})"

    def resolve(self, value, where, ctx):
        if not isinstance(value, dict):
            _fail(where, self.expected, value)
        resolved = {}
        for key, item in value.items():
            if key in self.options:
                resolved[key] = resolve_entry(self.options[key], item, _join(where, key), ctx)
            elif self.open:
                resolved[key] = _plain(item)
            elif where:
                raise ConfigError(f"unknown option '{_join(where, key)}'{ctx.in_file()}."
                                  f"{did_you_mean(key, self.child_names(value), prefix=f'{where}.')}")
            else:
                raise ConfigError(f"unknown top-level option '{key}'{ctx.in_file()}."
                                  f'{did_you_mean(key, self.child_names(value)) or self.nested_hint(key)}')
        for key, option in self.options.items():
            if key in value or option.runtime or not option.applies(ctx):
                continue
            if option.required:
                raise ConfigError(f"missing required option '{_join(where, key)}'{ctx.in_file()}")
            if option.default is not None:
                resolved[key] = option.kind.resolve(deepcopy(option.default), _join(where, key), ctx)
        return resolved

    def nested_hint(self, key):
        """A hint naming the sections one level down that declare ``key`` (a top-level 'precision')."""
        found = [f"'{name}.{key}'" for name, option in self.options.items()
                 if isinstance(option.kind, Section) and key in option.kind.options]
        return f" Did you mean {' or '.join(found)}?" if found else ''

    def child(self, key, value):
        option = self.options.get(key)
        if option is None:
            return Anything() if self.open else None
        return None if option.runtime else option.kind

    def child_names(self, value):
        return [key for key, option in self.options.items() if not option.runtime]

    def without_runtime(self, value):
        if not isinstance(value, dict):
            return value
        return {key: self.options[key].kind.without_runtime(item) if key in self.options else item
                for key, item in value.items() if not (key in self.options and self.options[key].runtime)}


class Named(Kind):
    """A mapping of free names to entries of one kind (``val.metrics``)."""
    shape = (dict, )

    def __init__(self, entry, expected):
        self.entry, self.expected = entry, expected

    def resolve(self, value, where, ctx):
        if not isinstance(value, dict):
            _fail(where, self.expected, value)
        return {name: self.entry.resolve(item, _join(where, name), ctx) for name, item in value.items()}

    def child(self, key, value):
        return self.entry


class ByType(Kind):
    """A mapping of ``type`` (a name ``targets`` turns into a callable) and that callable's keyword arguments.

    Arguments named in ``declared`` get that declaration (type, requirement, doc); the others must have the
    type of their default (bool, number, string, list; anything when the default is None) and are required
    when they have none. ``skip`` are passed by the caller; ``extra`` are keys read besides the arguments.
    """
    shape = (dict, )

    def __init__(self, type_kind, targets, skip=(), declared=None, extra=None):
        self.type_kind, self.targets, self.skip = type_kind, targets, skip
        self.declared, self.extra = declared or {}, extra or {}
        self.expected = f'a mapping with a type ({type_kind.expected}) and its arguments'

    def section(self, value, where, ctx):
        if not isinstance(value, dict):
            _fail(where, self.expected, value)
        if 'type' not in value:
            raise ConfigError(f"option '{where}' needs a 'type'{ctx.in_file()}")
        name = self.type_kind.resolve(value['type'], _join(where, 'type'), ctx)
        target = self.targets(name)
        options = {'type': Option(self.type_kind, None, 'what to build', required=True)}
        for param in inspect.signature(target).parameters.values():
            if param.name in self.skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            options[param.name] = self.declared.get(param.name) or _argument_option(param, target)
        return Section({**options, **self.extra})

    def resolve(self, value, where, ctx):
        return self.section(value, where, ctx).resolve(value, where, ctx)

    def child(self, key, value):
        try:
            return self.section(value, '', Context()).child(key, value)
        except ConfigError:
            return self.type_kind if key == 'type' else None

    def child_names(self, value):
        try:
            return self.section(value, '', Context()).child_names(value)
        except ConfigError:
            return ['type']


_KIND_OF_DEFAULT = {bool: Boolean(), int: Number(finite=False), float: Number(finite=False), str: Text(),
                    tuple: ListOf(Anything()), list: ListOf(Anything())}


def _argument_option(param, target):
    required = param.default is inspect.Parameter.empty
    kind = Anything() if required else _KIND_OF_DEFAULT.get(type(param.default), Anything())
    return Option(kind, None, f'argument of {target.__name__}', required=required)


class NetworkOptions(Kind):
    """``network_g``: an architecture ``type`` and constructor arguments, which the constructor checks."""
    shape = (dict, )
    expected = "a mapping with a 'type' (the architecture name)"

    def resolve(self, value, where, ctx):
        if not isinstance(value, dict) or 'type' not in value:
            raise ConfigError(f"option '{where}' needs a 'type' (the architecture name){ctx.in_file()}")
        return _plain(value)

    def child(self, key, value):
        return Anything()


# --- datasets -------------------------------------------------------------------------------------------

def _dataset_options(*groups, **options):
    return Section({key: option for group in (*groups, options) for key, option in group.items()})


COMMON_DATASET = {
    'name': Option(Text(), None, 'name of the set in logs, metrics and image folders', required=True),
    'type': Option(Registered(DATASET_REGISTRY, 'dataset type'), None, 'registered dataset class', required=True),
    'phase': Option(OneOf(*PHASES), None, 'set by the CLI from the phase name', runtime=True),
    'scale': Option(POSITIVE_INT, None, "set by the CLI from the top-level 'scale'", runtime=True),
    'batch_size_per_gpu': Option(POSITIVE_INT, None, 'training batch per process (global batch: x world size)',
                                 required=True, train_only=True),
    'num_worker_per_gpu': Option(NON_NEGATIVE_INT, 0, 'loader worker processes per process (0: load in-process)'),
    'dataset_enlarge_ratio': Option(POSITIVE_INT, 1, 'the training set is repeated this many times per epoch',
                                    train_only=True),
    'use_shuffle': Option(Boolean(), None, "BasicSR's flag; training batches are always shuffled (by the sampler)",
                          train_only=True),
    'prefetch_mode': Option(OneOf(None, 'cpu', 'cuda'), None, 'null: plain loader; cpu: a queue of batches loaded '
                            'ahead by a thread; cuda: each batch copied to the GPU on a side stream (needs '
                            'pin_memory: true)', train_only=True),
    'num_prefetch_queue': Option(POSITIVE_INT, None, 'batches loaded ahead with prefetch_mode: cpu (default 1)',
                                 train_only=True),
    'pin_memory': Option(Boolean(), False, 'page-locked batches: copies to the GPU that do not block the host '
                         '(ignored without a GPU)', train_only=True),
    'persistent_workers': Option(Boolean(), False, 'keep loader workers alive between epochs (needs workers)',
                                 train_only=True),
    'allow_special_modes': Option(Boolean(), None, 'true: accept 16-bit, alpha and palette images, which BasicSR '
                                  'reads as 8-bit RGB (default: refused)'),
}
IO_BACKEND = Section({
    'type': Option(OneOf('disk', 'lmdb'), 'disk', 'image files in folders, or LMDB databases (*.lmdb folders)'),
    'db_paths': Option(ListOf(Text()), None, 'LMDB paths (the datasets set them from the data roots)'),
    'client_keys': Option(ListOf(Text()), None, 'LMDB client names (the datasets set them)'),
})
IMAGE_FILES = {
    'io_backend': Option(IO_BACKEND, {}, 'how images are read'),
    'meta_info_file': Option(Text('a path'), None, 'text file listing the images to use (default: every image)'),
}
GT_FOLDER = {'dataroot_gt': Option(Text('a path'), None, 'folder (or .lmdb) of ground-truth images', required=True)}
LQ_FOLDER = {'dataroot_lq': Option(Text('a path'), None, 'folder (or .lmdb) of degraded input images',
                                   required=True)}
AUGMENT = {
    'use_hflip': Option(Boolean(), True, 'random horizontal flips in training', train_only=True),
    'use_rot': Option(Boolean(), True, 'random vertical flips and transposes in training', train_only=True),
}
NORMALISE = {
    'mean': Option(ListOf(Number()), None, 'per-channel mean subtracted from the images (default: none)'),
    'std': Option(ListOf(Number()), None, 'per-channel std the images are divided by (default: none)'),
    'color': Option(OneOf('y'), None, 'y: use the Y channel of YCbCr (1 channel; default: RGB)'),
}
PAIRED_DATASET = _dataset_options(
    COMMON_DATASET, GT_FOLDER, LQ_FOLDER, IMAGE_FILES, AUGMENT, NORMALISE,
    filename_tmpl=Option(Text(), '{}', "LQ file stem from the GT stem, e.g. '{}x4'"),
    gt_size=Option(POSITIVE_INT, None, 'side of the random GT crops in training', required=True, train_only=True))
SINGLE_DATASET = _dataset_options(COMMON_DATASET, LQ_FOLDER, IMAGE_FILES, NORMALISE)
CLEAN_IMAGE_DATASET = {
    **COMMON_DATASET, **GT_FOLDER, **IMAGE_FILES, **AUGMENT,
    'gt_size': Option(POSITIVE_INT, None, 'side of the random crops in training (default: whole images)',
                      train_only=True),
    'in_ch': Option(OneOf(1, 3), None, '1: gray images (same as color: gray; default 3)'),
    'color': Option(OneOf('rgb', 'gray'), None, 'gray: 1-channel images (default rgb)'),
    'gray_mode': Option(OneOf('y', 'gray'), 'y', "colour files to gray: Y of YCbCr, or OpenCV's gray decoding"),
}
GAUSSIAN_NOISE_DATASET = _dataset_options(
    CLEAN_IMAGE_DATASET,
    sigma=Option(Number(), None, 'noise std in 0-255 units'),
    sigma_range=Option(ListOf(Number(), 2), None, 'training only: sigma drawn uniformly from [low, high]'))
JPEG_DATASET = _dataset_options(
    CLEAN_IMAGE_DATASET,
    quality=Option(Integer(), None, 'JPEG quality, 1-100'),
    quality_range=Option(ListOf(Integer(), 2), None, 'training only: quality drawn from [low, high]'))
DATASET_TYPES = {'PairedImageDataset': PAIRED_DATASET, 'SingleImageDataset': SINGLE_DATASET,
                 'GaussianNoiseDataset': GAUSSIAN_NOISE_DATASET, 'JPEGCompressionDataset': JPEG_DATASET}
UNDECLARED_DATASET = Section(COMMON_DATASET, open=True)  # another registered type: its own keys unchecked


class DatasetPhases(Kind):
    """``datasets``: phase name (train, val*, test*) -> the options of its dataset type."""
    shape = (dict, )
    expected = 'a mapping of phases to datasets'

    def dataset_kind(self, dataset, where, ctx):
        if not isinstance(dataset, dict) or 'type' not in dataset:
            raise ConfigError(f"dataset '{where}' needs a 'type'{ctx.in_file()}")
        name = COMMON_DATASET['type'].kind.resolve(dataset['type'], f'{where}.type', ctx)
        return DATASET_TYPES.get(name, UNDECLARED_DATASET)

    def resolve(self, value, where, ctx):
        if not isinstance(value, dict) or not value:
            raise ConfigError(f"option '{where}' must map phases (train, val, test_1, ...) to datasets{ctx.in_file()}")
        resolved = {}
        for phase, dataset in value.items():
            at = _join(where, phase)
            if str(phase).split('_')[0] not in PHASES:
                raise ConfigError(f"dataset phase '{at}' must start with train, val or test")
            kind = self.dataset_kind(dataset, at, ctx)
            resolved[phase] = kind.resolve(dataset, at, replace(ctx, training=phase == 'train'))
        return resolved

    def child(self, key, value):
        if str(key).split('_')[0] not in PHASES:
            return None
        try:
            return self.dataset_kind(value.get(key), f'datasets.{key}', Context())
        except ConfigError:
            return Anything()  # a new phase: checked once written

    def child_names(self, value):
        return list(value or ())

    def without_runtime(self, value):
        return {phase: self.dataset_kind(dataset, phase, Context()).without_runtime(dataset)
                for phase, dataset in value.items()}


# --- training, validation, the rest ---------------------------------------------------------------------

OPTIMIZERS = {'Adam': torch.optim.Adam}  # the only type BasicSR's models build
OPTIMIZER = ByType(OneOf(*OPTIMIZERS), OPTIMIZERS.__getitem__, skip=('params', ), declared={
    'lr': Option(POSITIVE_NUMBER, None, 'learning rate', required=True)})
SCHEDULERS = {'MultiStepLR': lr_scheduler.MultiStepRestartLR, 'MultiStepRestartLR': lr_scheduler.MultiStepRestartLR,
              'CosineAnnealingRestartLR': lr_scheduler.CosineAnnealingRestartLR}
SCHEDULER = ByType(OneOf(*SCHEDULERS), SCHEDULERS.__getitem__, skip=('optimizer', 'last_epoch'), declared={
    'milestones': Option(ListOf(NON_NEGATIVE_INT), None, 'iterations at which the lr is multiplied by gamma',
                         required=True),
    'gamma': Option(POSITIVE_NUMBER, None, 'lr factor at each milestone (default 0.1)'),
    'restarts': Option(ListOf(NON_NEGATIVE_INT), None, 'iterations at which the lr restarts (default [0])'),
    'restart_weights': Option(ListOf(Number(0)), None, 'lr factor of each restart (default [1])'),
    'periods': Option(ListOf(POSITIVE_INT), None, 'lengths of the cosine cycles in iterations', required=True),
    'eta_min': Option(Number(0), None, 'lowest lr of a cosine cycle (default 0)'),
})
LOSS = ByType(Registered(LOSS_REGISTRY, 'loss type'), LOSS_REGISTRY.get)
METRIC = ByType(Registered(METRIC_REGISTRY, 'metric type'), METRIC_REGISTRY.get, skip=('img', 'img2'), extra={
    'better': Option(OneOf('higher', 'lower'), 'higher', 'which values are better, for the best-metric log')})

TRAIN = Section({
    'ema_decay': Option(Number(0, 1), 0, 'EMA weights: ema = decay * ema + (1 - decay) * w per step; 0: no EMA'),
    'optim_g': Option(OPTIMIZER, None, 'optimizer type and arguments', required=True, train_only=True),
    'scheduler': Option(SCHEDULER, None, 'lr schedule: MultiStepLR or CosineAnnealingRestartLR and arguments',
                        required=True, train_only=True),
    'total_iter': Option(POSITIVE_INT, None, 'training iterations', required=True, train_only=True),
    'warmup_iter': Option(Integer(), -1, 'iterations of linear lr warm-up (-1: none)'),
    'pixel_opt': Option(LOSS, None, 'pixel loss: a registered loss type and its arguments'),
    'perceptual_opt': Option(LOSS, None, 'perceptual / style loss: a registered loss type and its arguments'),
    'precision': Option(OneOf(*FLOAT_DTYPES), 'fp32', 'autocast precision of training (fp16 adds a gradient scaler)'),
    'nonfinite_patience': Option(POSITIVE_INT, 10, 'consecutive non-finite (skipped) steps that stop training'),
    'grad_clip_norm': Option(POSITIVE_NUMBER, None, 'max total L2 norm of the gradients (null: no clipping)'),
    'global_batch_size': Option(POSITIVE_INT, None, 'images per optimizer step, accumulated over micro-batches of '
                                'batch_size_per_gpu x world size (null: one micro-batch)'),
    'sync_bn': Option(Boolean(), True, 'synchronise BatchNorm statistics across processes'),
})
PRECISION = OneOf(*EVAL_PRECISIONS)
VAL = Section({
    'val_freq': Option(POSITIVE_INT, None, 'validate every this many iterations', required=True, train_only=True),
    'save_img': Option(Boolean(), False, 'write the restored images (visualization/)'),
    'suffix': Option(Text(), None, 'file-name suffix of images saved by the test CLI (default: the run name)'),
    'pbar': Option(Boolean(), None, 'show a progress bar (null: when the console is a terminal)'),
    'self_ensemble': Option(Boolean(), False, 'average the outputs of the 8 flips/rotations'),
    'max_chunk_tokens': Option(NON_NEGATIVE_INT, DEFAULT_CHUNK_TOKENS, 'whole images in bounded memory: attention '
                               'and MLPs this many tokens at a time (0: in one piece)'),
    'precision': Option(Either(PRECISION, ListOf(PRECISION)), 'fp32',
                        'test CLI: evaluate a cast copy of the network in each precision (--precision overrides)'),
    'metrics': Option(Named(METRIC, 'a mapping of metric names to metrics'), None,
                      'name -> a registered metric function and its arguments'),
})
LOGGER = Section({
    'print_freq': Option(POSITIVE_INT, 100, 'log the losses every this many iterations', train_only=True),
    'save_checkpoint_freq': Option(POSITIVE_INT, 5000, 'checkpoint every this many iterations', train_only=True),
    'keep_last_checkpoints': Option(POSITIVE_INT, None, 'keep only the newest K checkpoints (null: all)'),
    'use_tb_logger': Option(Boolean(), False, 'TensorBoard logs under tb_logger/<name>', train_only=True),
    'wandb': Option(Section({
        'project': Option(Text(), None, 'Weights & Biases project (null: off; needs use_tb_logger: true)'),
        'resume_id': Option(Text(), None, 'W&B run id to resume'),
    }), None, 'Weights & Biases logging'),
})
PATH = Section({
    'pretrain_network_g': Option(Text('a path'), None, 'checkpoint to start from (training) or to evaluate (testing)'),
    'param_key_g': Option(Text(), 'params', 'key of the weights in the checkpoint (params_ema: the EMA weights)'),
    'strict_load_g': Option(Boolean(), True, 'every checkpoint key must fit the network'),
    'resume_state': Option(Text('a path'), None, 'training state to resume from (--auto_resume finds the latest)'),
    **{key: Option(Text('a path'), None, 'set by the CLI under experiments/<name> or results/<name>', runtime=True)
       for key in ('experiments_root', 'results_root', 'models', 'training_states', 'log', 'visualization')},
})
DIST_PARAMS = Section({
    'backend': Option(OneOf('nccl', 'gloo', 'mpi'), None, 'process-group backend (default: nccl when training on '
                      'GPUs, gloo on CPU: num_gpu 0)'),
    'port': Option(Integer(1, 65535), None, 'master port under --launcher slurm (default: $MASTER_PORT or 29500)'),
    'init_method': Option(Text(), None, "torch.distributed's init_method URL (default: env://)"),
})
ANALYSIS = Section({
    'enabled': Option(Boolean(), True, 'false: keep the section but record nothing'),
    'freq': Option(POSITIVE_INT, 1000, 'probe at iteration 1 and every this many iterations'),
    'layers': Option(OneOf('blocks', 'groups', 'all'), 'all', 'which outputs to probe: blocks, residual groups, both'),
    'num_probe_images': Option(POSITIVE_INT, 4, 'probe images: the first validation images'),
    'probe_crop': Option(POSITIVE_INT, 64, 'side of the centre crop of each probe image'),
    'histograms': Option(Boolean(), True, 'also write TensorBoard histograms of the features'),
})
COMPILE = Section({
    'backend': Option(Text(), None, 'torch.compile backend (default inductor)'),
    'mode': Option(Text(), None, 'torch.compile mode (default, reduce-overhead, max-autotune)'),
    'fullgraph': Option(Boolean(), None, 'fail instead of breaking the graph'),
    'dynamic': Option(Boolean(), False, 'dynamic-shape tracing (default false: it hangs on a third image size)'),
    'options': Option(Anything(), None, 'backend options (a mapping)'),
})

OPTIONS = Section({
    'name': Option(Text(), None, 'run name: outputs go to experiments/<name>/ or results/<name>/', required=True),
    'model_type': Option(Registered(MODEL_REGISTRY, 'model_type'), None, 'registered model class (IRModel)',
                         required=True),
    'scale': Option(POSITIVE_INT, 1, 'upscaling factor (1: denoising, JPEG); equals network_g.upscale'),
    'num_gpu': Option(Either(OneOf('auto'), NON_NEGATIVE_INT), 'auto', 'GPUs per process: auto (all visible) or a '
                      'count'),
    'manual_seed': Option(Integer(), None, 'random seed (null: drawn at start, recorded in the saved options)'),
    'datasets': Option(DatasetPhases(), None, 'phase (train, val*, test*) -> dataset options', required=True),
    'network_g': Option(NetworkOptions(), None, 'architecture type and constructor arguments', required=True),
    'path': Option(PATH, {}, 'checkpoints to load and resume from'),
    'train': Option(TRAIN, None, 'training settings', required=True, train_only=True),
    'val': Option(VAL, None, 'validation in training (absent: none) and evaluation in the test CLI'),
    'logger': Option(LOGGER, {}, 'logging and checkpointing'),
    'dist_params': Option(DIST_PARAMS, None, 'distributed-training settings'),
    'find_unused_parameters': Option(Boolean(), False, 'DDP: allow parameters unused in the forward pass'),
    'analysis': Option(ANALYSIS, None, 'training-dynamics probes (absent: off)'),
    'compile': Option(Either(Boolean(), COMPILE), False, 'torch.compile the trained network (true or its arguments)'),
    'channels_last': Option(Boolean(), False, 'convolution weights in NHWC memory format (oneDNN / cuDNN native; '
                            'faster or slower by machine: docs/benchmarks.md); checkpoints stay contiguous'),
    'flush_denormal': Option(Boolean(), True, 'CPU: flush denormal floats (below 1.2e-38) to zero, which x86 '
                             'computes on slowly; set before the first parallel op (basicsr_iln/utils/denormals.py)'),
    'dist': Option(Boolean(), None, 'set by the CLI: distributed run?', runtime=True),
    'rank': Option(NON_NEGATIVE_INT, None, 'set by the CLI: process rank', runtime=True),
    'world_size': Option(POSITIVE_INT, None, 'set by the CLI: number of processes', runtime=True),
    'auto_resume': Option(Boolean(), None, 'set by the CLI from --auto_resume', runtime=True),
    'is_train': Option(Boolean(), None, 'set by the CLI: training or testing', runtime=True),
    'root_path': Option(Text('a path'), None, 'set by the CLI: where experiments/ and results/ go', runtime=True),
})


def resolve_options(opt, training, opt_path):
    """A new options dict: ``opt`` checked against the schema, with the declared defaults filled in."""
    return OPTIONS.resolve(opt, '', Context(opt_path, training))


def option_at(dotted):
    """The declaration of a key in nested sections, e.g. 'train.nonfinite_patience'."""
    option = None
    for key in dotted.split('.'):
        section = option.kind if option else OPTIONS
        if isinstance(section, Either):
            section = next(k for k in section.kinds if isinstance(k, Section))
        option = section.options[key]
    return option


def resolve_option(dotted, value):
    """One section or value checked on its own (a caller given options that may not come from the CLI)."""
    return resolve_entry(option_at(dotted), value, dotted, Context())


def read_option(section, dotted):
    """The value of the key ``dotted`` from its ``section`` (options that may not come from the CLI), checked
    against its declaration, or the declared default when absent: readers need no checks or defaults of their own."""
    option = option_at(dotted)
    return resolve_entry(option, section.get(dotted.rsplit('.', 1)[-1], option.default), dotted, Context())


def without_runtime(opt):
    """``opt`` without the keys the CLI fills in at run time: what an option file may hold."""
    return OPTIONS.without_runtime(opt)
