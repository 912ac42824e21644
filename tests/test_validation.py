"""Validation: the set's loader workers, results independent of them, and what a subclass may override."""
import os

import pytest

from basicsr_iln.models.ir_model import IRModel, show_progress
from basicsr_iln.train import build_model
from basicsr_iln.utils.checks import build_dataset_checked
from basicsr_iln.utils.options import parse_options
from helpers import tiny_train_options, write_yaml


def validate(data, root, workers, monkeypatch):
    """(metric results, pids of the processes that loaded each image) of one validation pass."""
    root.mkdir()
    train_opt = tiny_train_options(data, 'val_workers')
    train_opt['datasets']['val']['num_worker_per_gpu'] = workers
    opt, _ = parse_options(str(root), is_train=True, argv=['-opt', str(write_yaml(root / 'train.yml', train_opt))])
    model = build_model(opt)
    dataset = build_dataset_checked(opt['datasets']['val'], 'val')
    load = type(dataset).__getitem__
    monkeypatch.setattr(type(dataset), '__getitem__', lambda self, i: {**load(self, i), 'pid': os.getpid()})
    pids, restore_one = [], model._restore_one
    model._restore_one = lambda data, metrics: pids.append(int(data['pid'])) or restore_one(data, metrics)
    model.validation(type('Loader', (), {'dataset': dataset})(), 1, None, save_img=False)
    return model.metric_results, pids


def test_validation_loads_with_the_sets_workers_and_gives_the_same_metrics(tiny_sr_data, tmp_path, monkeypatch):
    in_process, pids_0 = validate(tiny_sr_data, tmp_path / 'w0', 0, monkeypatch)
    with_workers, pids_2 = validate(tiny_sr_data, tmp_path / 'w2', 2, monkeypatch)
    assert set(pids_0) == {os.getpid()} and len(pids_0) == 2
    assert os.getpid() not in pids_2 and len(pids_2) == 2
    assert with_workers == pytest.approx(in_process)


def test_a_subclass_overriding_the_validation_hooks_irmodel_never_calls_is_refused():
    with pytest.raises(TypeError, match='overrides nondist_validation, which IRModel never calls'):
        type('MyModel', (IRModel, ), {'nondist_validation': lambda self, *args: None})


def test_progress_bar_follows_the_option_else_the_terminal(monkeypatch):
    monkeypatch.setattr('sys.stderr.isatty', lambda: True)
    assert show_progress({}) and not show_progress({'pbar': False})
    monkeypatch.setattr('sys.stderr.isatty', lambda: False)
    assert not show_progress({}) and show_progress({'pbar': True})
