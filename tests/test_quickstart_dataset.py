"""scripts/make_quickstart_dataset.py: layout, LR = MATLAB bicubic of HR, idempotence, bad scale."""
import hashlib
import sys
from pathlib import Path

import basicsr_iln  # noqa: F401  (before basicsr)
import cv2
import numpy as np
import pytest

from basicsr_iln.utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'scripts'))
import make_quickstart_dataset as quickstart  # noqa: E402
from prepare_sr import bicubic_downsample  # noqa: E402  (path added by the import above)


def _digest(root):
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob('*')) if p.is_file()}


def test_layout_pairs_and_idempotence(tmp_path, capsys):
    out = tmp_path / 'quickstart'
    quickstart.main(['--out', str(out)])
    first = capsys.readouterr().out
    assert str(out) in first and '114 files written, 0 unchanged' in first
    assert sorted(str(p.relative_to(out)) for p in out.glob('*/*')) == [
        'train/HR', 'train/LR_x2', 'val/HR', 'val/LR_x2']

    train_hr = sorted(p.name for p in (out / 'train' / 'HR').iterdir())
    assert len(train_hr) == 54 and train_hr[0] == 'astronaut_s001.png'
    assert {n.rsplit('_s', 1)[0] for n in train_hr} == set(quickstart.TRAIN_PHOTOS)
    assert sorted(p.name for p in (out / 'val' / 'HR').iterdir()) == ['camera.png', 'chelsea.png', 'coins.png']
    assert not set(quickstart.TRAIN_PHOTOS) & set(quickstart.VAL_PHOTOS)
    for split, size in (('train', 192), ('val', 240)):
        for i, hr_path in enumerate(sorted((out / split / 'HR').iterdir())):
            hr = cv2.imread(str(hr_path), cv2.IMREAD_UNCHANGED)
            lr = cv2.imread(str(out / split / 'LR_x2' / hr_path.name), cv2.IMREAD_UNCHANGED)
            assert hr.shape == (size, size, 3) and lr.shape == (size // 2, size // 2, 3)
            if i % 9 == 0:  # a sample of pairs: MATLAB bicubic is slow-ish on CPU
                assert np.array_equal(lr, bicubic_downsample(hr, 2))
    # gray photos are stored as 3 equal channels
    camera = cv2.imread(str(out / 'val' / 'HR' / 'camera.png'))
    assert np.array_equal(camera[..., 0], camera[..., 2]) and camera.std() > 10

    before = _digest(out)
    quickstart.main(['--out', str(out), '--scale', '2'])
    assert '0 files written, 114 unchanged' in capsys.readouterr().out
    assert _digest(out) == before  # same bytes, files not even rewritten


def test_other_scale_shares_hr_and_bad_scale_is_rejected(tmp_path, capsys):
    out = tmp_path / 'qs'
    folders = quickstart.build(str(out), 4)
    assert len(folders['train/LR_x4']) == 54
    assert cv2.imread(folders['val/LR_x4'][0]).shape == (60, 60, 3)
    with pytest.raises(ConfigError, match='--scale'):
        quickstart.main(['--out', str(out), '--scale', '5'])
    assert not (out / 'train' / 'LR_x5').exists()
