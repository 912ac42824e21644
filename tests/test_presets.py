"""basicsr_iln/presets.py is the one source of the model zoo's facts: the generator writes each size's
kwargs into the option files unchanged, scripts/evaluate_tables.py names every generated network by the
same presets, and the architecture classes' ``family`` agrees with the registered types."""
import csv
import sys

from basicsr.utils.registry import ARCH_REGISTRY

from basicsr_iln import presets
from basicsr_iln.archs.norms import NORM_SCHEMES
from helpers import REPO, main_error_line, write_yaml
from test_option_files import FILE_NAME, GENERATED, GENERATOR_MODULE, OPTS, RELEASED

sys.path.insert(0, str(REPO / 'scripts'))
import evaluate_tables  # noqa: E402


def size_and_task(rel):
    """(size, task) a generated option file was written for: from its name, or the generator's released table."""
    if rel in RELEASED:
        row = GENERATOR_MODULE.RELEASED[OPTS[rel]['name'].removeprefix('test_released_')]
        return row['size'], presets.TASKS[row['task']]
    parts = FILE_NAME.fullmatch(rel.rsplit('/', 1)[1]).groupdict()
    return parts['size'], presets.DERAIN if parts['task'] == 'Derain' else presets.TASKS[parts['task']]


def test_both_scripts_read_the_presets_themselves():
    for name in ('SIZES', 'CAR_OVERRIDES', 'TYPES', 'FAMILIES', 'TASKS', 'DERAIN', 'TEST_SETS', 'LEVELS',
                 'DEGRADATIONS'):
        for script in (GENERATOR_MODULE, evaluate_tables):
            assert getattr(script, name, getattr(presets, name)) is getattr(presets, name), (script, name)


def test_generated_networks_have_their_preset_size_verbatim():
    for rel, opt in OPTS.items():
        size, task = size_and_task(rel)
        preset, net = presets.SIZES[size], opt['network_g']
        overrides = presets.CAR_OVERRIDES.get(preset.family, {}) if task['kind'] == 'CAR' else {}
        for key, value in preset.kwargs.items():
            if key == 'sr_upsampler':
                assert net['upsampler'] == (value if task['kind'] == 'SR' else ''), rel
            else:
                assert net[key] == overrides.get(key, value), (rel, key)
        assert net.get('upsampler') == presets.backbone_kwargs(size, task['kind'])['upsampler'], rel


def test_tables_name_every_generated_network_by_its_preset():
    named = set()
    for rel, opt in OPTS.items():
        size, _ = size_and_task(rel)
        family, _, kwargs = evaluate_tables.network_facts(opt['network_g'])
        assert family == presets.SIZES[size].family, rel
        label = evaluate_tables.backbone_label(family, kwargs)
        paper_name = presets.SIZES[size].paper_name
        assert label == (paper_name or f"{family}-{kwargs['embed_dim']}x{len(kwargs['depths'])}"), rel
        named.add((size, label))
    assert {('HAT-mini', 'HAT_1'), ('HAT', 'HAT_dagger'), ('SwinIR-S', 'SwinIR_1'), ('DRCT', 'DRCT-180x6')} <= named


def test_a_network_off_the_presets_is_labelled_by_its_shape():
    """Class defaults (tuples) count as the option files' lists; one changed kwarg leaves the preset size."""
    hat_mini = {'type': 'HAT_iLN', **presets.backbone_kwargs('HAT-mini', 'SR')}
    family, _, kwargs = evaluate_tables.network_facts(hat_mini)
    assert evaluate_tables.backbone_label(family, kwargs) == 'HAT_1'
    family, _, kwargs = evaluate_tables.network_facts(dict(hat_mini, compress_ratio=3))
    assert evaluate_tables.backbone_label(family, kwargs) == 'HAT-96x6'
    family, _, kwargs = evaluate_tables.network_facts({'type': 'DRCT', 'depths': (6, 6)})
    assert (family, evaluate_tables.backbone_label(family, kwargs)) == ('DRCT', 'DRCT-96x2')


def test_registered_types_are_of_their_family():
    for family, types in presets.TYPES.items():
        assert {ARCH_REGISTRY.get(t).family for t in types} == {family}
        for norm_type in NORM_SCHEMES:
            assert ARCH_REGISTRY.get(presets.registered_type(family, norm_type)).family == family
    assert ARCH_REGISTRY.get('HAT-iLN').family == 'HAT'
    assert presets.FAMILIES == ('SwinIR', 'HAT', 'DRCT')
    assert {opt['network_g']['type'] for opt in GENERATED.values()} <= {t for ts in presets.TYPES.values() for t in ts}


def test_a_network_without_a_family_needs_a_label(tmp_path, capsys):
    """BasicSR's own SwinIR has no ``family``: its kwargs could pass for ours, so it is never named by them."""
    test_set = {'name': 'Set5', 'type': 'PairedImageDataset', 'dataroot_gt': str(tmp_path / 'absent' / 'HR'),
                'dataroot_lq': str(tmp_path / 'absent' / 'LR'), 'io_backend': {'type': 'disk'}}
    run = write_yaml(tmp_path / 'test_basicsr_swinir.yml', {
        'name': 'test_basicsr_swinir', 'model_type': 'IRModel', 'scale': 2, 'num_gpu': 0,
        'datasets': {'test_1': test_set}, 'network_g': {'type': 'SwinIR', 'upscale': 2, 'embed_dim': 60},
        'path': {'pretrain_network_g': None},
        'val': {'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': True}}}})
    assert evaluate_tables.network_facts({'type': 'SwinIR'})[0] is None
    out = tmp_path / 'tables'
    err = main_error_line(evaluate_tables.main, [str(run), '--out', str(out)], capsys)
    assert "network_g type 'SwinIR' is not of a backbone family" in err and f'LABEL={run}' in err

    evaluate_tables.main([f'SwinIR_basicsr={run}', '--out', str(out)])
    with open(out / 'tables.csv', encoding='utf-8') as f:
        [row] = [r for r in csv.DictReader(f) if (r['table'], r['backbone'], r['dataset'], r['metric']) ==
                 ('SR', 'SwinIR_basicsr', 'Set5', 'psnr')]
    assert (row['norm'], row['level'], row['status']) == ('ln', 'x2', 'missing checkpoint')
