"""The model zoo's shared facts, defined once: backbone sizes and their names in the paper, the tasks
and their levels, the test sets of each task, and the registered network types.

scripts/generate_options.py writes every option file from these; scripts/evaluate_tables.py names
table rows and lays out their columns with them, so a table can never call a network by another name
than the one its option file was generated for.
"""
from typing import NamedTuple

from basicsr_iln.archs.norms import NORM_SCHEMES

# ----------------------------------------------------------------------------------------- tasks
LEVELS = {'SR': (2, 3, 4), 'DN': (15, 25, 50), 'CAR': (10, 20, 30, 40)}  # SR scales, noise sigmas, JPEG qualities


class Degradation(NamedTuple):
    """How a DN/CAR input is made from a clean image (basicsr_iln/data/degraded_dataset.py)."""
    dataset_type: str
    level_key: str
    description: str


DEGRADATIONS = {'DN': Degradation('GaussianNoiseDataset', 'sigma', 'Gaussian denoising'),
                'CAR': Degradation('JPEGCompressionDataset', 'quality', 'JPEG artifact removal')}
COLORS = {'DN': ('color', 'gray'), 'CAR': ('gray', 'color')}  # of the DN/CAR tasks


def _tasks():
    """Every task but deraining as a dict: key (file-name part), kind SR|DN|CAR, scale, color, level."""
    out = [dict(key=f'SRx{s}', kind='SR', scale=s, color='color', level=None) for s in LEVELS['SR']]
    for kind, degradation in DEGRADATIONS.items():
        letter = degradation.level_key[0]  # s15: sigma 15, q40: quality 40
        out += [dict(key=f'{c}{kind}_{letter}{lv}', kind=kind, scale=1, color=c, level=lv)
                for c in COLORS[kind] for lv in LEVELS[kind]]
    return {t['key']: t for t in out}


TASKS = _tasks()
# Deraining (Table 2(b)): rainy/clean pairs of one size, no level; the sets of MPRNet/Restormer (datasets/README.md).
DERAIN = dict(key='Derain', kind='DR', scale=1, color='color', level=None)
TASK_KINDS = ('SR', *DEGRADATIONS, DERAIN['kind'])

# (kind, colour) -> the test sets, in the order of the option files and the tables
TEST_SETS = {
    ('SR', 'color'): ('Set5', 'Set14', 'B100', 'Urban100', 'Manga109'),
    ('DN', 'color'): ('CBSD68', 'Kodak24', 'McMaster', 'Urban100'),
    ('DN', 'gray'): ('Set12', 'BSD68', 'Urban100'),
    ('CAR', 'gray'): ('classic5', 'LIVE1'),
    ('CAR', 'color'): ('LIVE1', 'Urban100'),  # classic5 is gray; Urban100: Table 2 (HAT_1)
    ('DR', 'color'): ('Rain100H', 'Rain100L', 'Test100', 'Test1200', 'Test2800'),
}


# ----------------------------------------------------------------------------------------- backbones
# family (the ``family`` attribute of its architecture classes) -> (registered type for every norm but
# those that normalise the input by its std, type for those)
TYPES = {'SwinIR': ('SwinIR_iLN', 'SwinIR_iLN'), 'HAT': ('HAT', 'HAT_iLN'), 'DRCT': ('DRCT', 'DRCT_iLN')}
FAMILIES = tuple(TYPES)


class BackboneSize(NamedTuple):
    """A size as released: its family, its kwargs as the released option files write them ('sr_upsampler'
    is the SR head, default pixelshuffle) and, for the paper's sizes, the paper's name for it."""
    family: str
    kwargs: dict
    paper_name: str = None


_SWINIR = dict(window_size=8, img_range=1.0, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6, mlp_ratio=2,
               resi_connection='1conv')
_HAT = dict(window_size=16, compress_ratio=3, squeeze_factor=30, conv_scale=0.01, overlap_ratio=0.5, img_range=1.0,
            depths=[6] * 6, embed_dim=180, num_heads=[6] * 6, mlp_ratio=2, resi_connection='1conv')
# Paper names: the official i-LN release's HAT-mini is HAT_1 and its HAT-dagger is HAT's released size
# (../shared/reference/README.md and state_dict_layouts.json). The paper's SwinIR_1 is a reduced SwinIR
# whose size is not public; SwinIR-S, the only reduced SwinIR released, stands for it (docs/protocol.md).
SIZES = {
    'SwinIR': BackboneSize('SwinIR', _SWINIR),  # classical SR / DN / CAR, "SwinIR-M"
    'SwinIR-S': BackboneSize('SwinIR', dict(_SWINIR, depths=[6] * 4, embed_dim=60, num_heads=[6] * 4,
                                            sr_upsampler='pixelshuffledirect'), 'SwinIR_1'),  # lightweight SR
    'HAT': BackboneSize('HAT', _HAT, 'HAT_dagger'),
    'HAT-S': BackboneSize('HAT', dict(_HAT, compress_ratio=24, squeeze_factor=24, embed_dim=144)),
    'HAT-L': BackboneSize('HAT', dict(_HAT, depths=[6] * 12, num_heads=[6] * 12)),
    'HAT-mini': BackboneSize('HAT', dict(_HAT, compress_ratio=24, squeeze_factor=24, embed_dim=96), 'HAT_1'),
    'DRCT': BackboneSize('DRCT', _HAT),
    'DRCT-L': BackboneSize('DRCT', dict(_HAT, depths=[6] * 12, num_heads=[6] * 12)),
}
# Released SwinIR JPEG models use 7x7 windows (JPEG's 8x8 blocks) and img_range 255.
CAR_OVERRIDES = {'SwinIR': dict(window_size=7, img_range=255.0)}


def registered_type(family, norm_type):
    """The registered name: the i-LN alias for i-LN and its ablations (they are HAT-iLN with one change)."""
    ln_type, iln_type = TYPES[family]
    return iln_type if NORM_SCHEMES[norm_type].stdnorm else ln_type


def backbone_kwargs(size, kind):
    """The kwargs of ``size`` for a task kind, as the option files write them: the task's overrides, and
    the size's SR head for SR only (the other tasks restore at scale 1, without one)."""
    family, kwargs, _ = SIZES[size]
    kw = dict(kwargs)
    sr_upsampler = kw.pop('sr_upsampler', 'pixelshuffle')
    if kind == 'CAR':
        kw.update(CAR_OVERRIDES.get(family, {}))
    return {**kw, 'upsampler': sr_upsampler if kind == 'SR' else ''}


def _as_list(value):
    return list(value) if isinstance(value, tuple) else value  # class defaults are tuples, options lists


def size_of(family, kwargs):
    """The size whose kwargs (for some task) a ``family`` network with effective ``kwargs`` has, or None."""
    for size, preset in SIZES.items():
        if preset.family == family and any(
                all(_as_list(kwargs.get(key)) == value for key, value in backbone_kwargs(size, kind).items())
                for kind in TASK_KINDS):
            return size
    return None
