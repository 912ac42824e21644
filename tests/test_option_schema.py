"""The option schema (basicsr_iln/utils/schema.py): every option file and test option dict passes it,
resolving is idempotent and survives a YAML round trip, ``--force_yml`` may add declared keys,
``--print-options`` prints without touching anything, and a training run saves its resolved options
in its folder, from which the test CLI evaluates it. (Rejected options: tests/test_bad_inputs.py.)"""
import copy
from pathlib import Path

import basicsr_iln  # noqa: F401  (before basicsr)
import pytest
import yaml

from basicsr_iln.utils.options import apply_force_yml, check_options, dump_options, load_yaml_file
from basicsr_iln.utils.schema import option_at
from helpers import REPO, eval_options_from_train, run_cli, tiny_train_options, write_yaml

OPTION_FILES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / 'options').rglob('*.yml'))


@pytest.mark.slow
def test_every_option_file_passes_the_schema_and_resolves_idempotently():
    assert len(OPTION_FILES) > 250 and any(p.startswith('options/quickstart/') for p in OPTION_FILES)
    for rel in OPTION_FILES:
        is_train = Path(rel).name.startswith('train_')
        resolved = check_options(load_yaml_file(str(REPO / rel)), is_train, rel)
        reloaded = yaml.safe_load(dump_options(resolved))
        assert reloaded == resolved and check_options(reloaded, is_train, rel) == resolved, rel


def test_test_helper_options_pass_the_schema(tmp_path):
    train_opt = tiny_train_options(tmp_path, 'tiny')
    resolved = check_options(train_opt, True, 'tiny.yml')
    assert resolved['train']['nonfinite_patience'] == option_at('train.nonfinite_patience').default == 10
    assert resolved['logger']['use_tb_logger'] is False and resolved['datasets']['train']['io_backend'] == {
        'type': 'disk'}
    assert 'phase' not in resolved['datasets']['train'] and 'precision' not in resolved  # nothing runtime or unread
    check_options(eval_options_from_train(train_opt, 'eval', tmp_path / 'net.pth'), False, 'eval.yml')


def test_force_yml_adds_declared_keys_only(tmp_path):
    opt = tiny_train_options(tmp_path, 'tiny')
    apply_force_yml(opt, ['train:grad_clip_norm=0.5', 'analysis:freq=3', 'val:metrics:psnr:better=lower',
                          'datasets:train:pin_memory=true', 'logger:keep_last_checkpoints=2'])
    resolved = check_options(opt, True, 'tiny.yml')
    assert resolved['train']['grad_clip_norm'] == 0.5 and resolved['analysis']['freq'] == 3
    assert resolved['val']['metrics']['psnr']['better'] == 'lower' and resolved['datasets']['train']['pin_memory']
    for entry, words in (('train:grad_clip_nrom=1', "Did you mean 'grad_clip_norm'"),
                         ('datasets:train:pin_memroy=1', "Did you mean 'pin_memory'"),
                         ('path:models=/elsewhere', "unknown key 'models' under path")):
        with pytest.raises(basicsr_iln.utils.errors.ConfigError, match=words):
            apply_force_yml(copy.deepcopy(opt), [entry])


@pytest.mark.slow
def test_print_options_prints_resolved_options_and_touches_nothing(tiny_sr_data, tmp_path):
    opt = tiny_train_options(tiny_sr_data, 'printed')
    opt['datasets']['train']['dataroot_gt'] = str(tmp_path / 'not_read')  # would fail the data checks
    result = run_cli('train', write_yaml(tmp_path / 'train.yml', opt), tmp_path, '--print-options',
                     '--force_yml', 'train:grad_clip_norm=0.5')
    assert result.returncode == 0, result.stderr[-3000:]
    printed = yaml.safe_load(result.stdout)
    assert printed == check_options(dict(opt, train=dict(opt['train'], grad_clip_norm=0.5)), True, 'train.yml')
    assert printed['train']['nonfinite_patience'] == 10 and printed['logger']['print_freq'] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['train.yml']

    test_opt = eval_options_from_train(opt, 'printed_test', tmp_path / 'no_such.pth')
    result = run_cli('test', write_yaml(tmp_path / 'test.yml', test_opt), tmp_path, '--print-options')
    assert result.returncode == 0, result.stderr[-3000:]
    assert yaml.safe_load(result.stdout)['val']['precision'] == 'fp32'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['test.yml', 'train.yml']


@pytest.mark.slow
def test_saved_options_are_resolved_and_re_test_the_run(tiny_sr_data, tmp_path):
    opt = tiny_train_options(tiny_sr_data, 'saved', total_iter=2)
    del opt['manual_seed']
    result = run_cli('train', write_yaml(tmp_path / 'train.yml', opt), tmp_path, '--force_yml',
                     'train:nonfinite_patience=7', 'val:save_img=false')
    assert result.returncode == 0, result.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'saved'
    saved_text = (exp / 'train.yml').read_text()
    assert saved_text.startswith('# Resolved options of ')
    saved = yaml.safe_load(saved_text)
    assert saved['train']['nonfinite_patience'] == 7 and saved['val']['save_img'] is False  # --force_yml kept
    assert isinstance(saved['manual_seed'], int) and saved['logger']['use_tb_logger'] is False  # drawn / default
    assert not {'rank', 'world_size', 'dist', 'is_train', 'root_path'} & set(saved)
    assert set(saved['path']) == {'pretrain_network_g', 'strict_load_g', 'resume_state', 'param_key_g'}
    assert 'phase' not in saved['datasets']['train'] and check_options(saved, True, 'saved') == saved

    result = run_cli('test', exp / 'train.yml', tmp_path, '--force_yml',
                     f"path:pretrain_network_g={exp / 'models' / 'net_g_latest.pth'}", 'path:param_key_g=params_ema')
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / 'results' / 'saved' / 'metrics.jsonl').is_file()
