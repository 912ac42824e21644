"""prepare_sr.py (modcrop, bicubic, sub-images, lmdb) and download_datasets.py's pure functions."""
import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path

import basicsr_iln  # noqa: F401  (before basicsr)
import cv2
import numpy as np
import pytest
import skimage.data
from basicsr.data.data_util import paths_from_lmdb
from basicsr.utils import FileClient, imfrombytes
from basicsr.utils.matlab_functions import imresize

from basicsr_iln.utils.errors import ConfigError
from helpers import run_python

REPO = Path(__file__).resolve().parents[1]
SET5 = REPO.parent / 'shared' / 'datasets' / 'sr' / 'Set5'
sys.path.insert(0, str(REPO / 'scripts' / 'data_preparation'))
import download_datasets  # noqa: E402
import prepare_sr  # noqa: E402


def _names(folder):
    return sorted(p.name for p in Path(folder).iterdir())


@pytest.fixture
def photos(tmp_path):
    """Two real photos of known odd sizes (100x130 colour, 75x90 gray)."""
    folder = tmp_path / 'photos'
    folder.mkdir()
    cv2.imwrite(str(folder / 'astronaut.png'), skimage.data.astronaut()[:100, :130, ::-1])
    cv2.imwrite(str(folder / 'camera.jpg'), skimage.data.camera()[:75, :90], [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def test_bicubic_on_set5_default_and_per_scale(tmp_path):
    if not SET5.is_dir():
        pytest.skip('../shared/datasets/sr/Set5 not available')
    out = tmp_path / 'Set5'
    prepare_sr.bicubic([str(SET5)], str(out), scales=[2, 3, 4])
    assert _names(out / 'HR') == ['baby.png', 'bird.png', 'butterfly.png', 'head.png', 'woman.png']
    for name in _names(out / 'HR'):
        original = cv2.imread(str(SET5 / name))
        hr = cv2.imread(str(out / 'HR' / name))
        assert hr.shape[0] % 12 == 0 and hr.shape[1] % 12 == 0
        assert np.array_equal(hr, original[:hr.shape[0], :hr.shape[1]])
        assert original.shape[0] - hr.shape[0] < 12 and original.shape[1] - hr.shape[1] < 12
        for s in (2, 3, 4):
            lr = cv2.imread(str(out / 'LR_bicubic' / f'X{s}' / name))
            assert lr.shape == (hr.shape[0] // s, hr.shape[1] // s, 3)
            exact = imresize(hr.astype(np.float32), 1 / s)  # MATLAB rounding: half away from zero
            assert np.array_equal(lr, np.floor(np.clip(exact, 0, 255) + 0.5).astype(np.uint8))
            usual = np.clip(np.round(imresize(hr / 255., 1 / s) * 255.), 0, 255)
            diff = np.abs(lr - usual)
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # only exact .5 ties round differently
    assert cv2.imread(str(out / 'HR' / 'baby.png')).shape == (504, 504, 3)  # 512 -> 504

    bench = tmp_path / 'Set5_bench'
    prepare_sr.bicubic([str(SET5)], str(bench), scales=[3], per_scale=True)
    baby = cv2.imread(str(SET5 / 'baby.png'))
    assert np.array_equal(cv2.imread(str(bench / 'HR' / 'baby.png')), baby)  # HR kept whole
    assert cv2.imread(str(bench / 'LR_bicubic' / 'X3' / 'baby.png')).shape == (170, 170, 3)  # from 510x510


def test_modcrop_and_gray_and_jpeg_inputs(photos, tmp_path):
    prepare_sr.modcrop([str(photos)], str(tmp_path / 'mod'), 8)
    assert _names(tmp_path / 'mod') == ['astronaut.png', 'camera.png']  # always PNG, named by stem
    assert cv2.imread(str(tmp_path / 'mod' / 'astronaut.png')).shape == (96, 128, 3)
    camera = cv2.imread(str(tmp_path / 'mod' / 'camera.png'), cv2.IMREAD_UNCHANGED)
    assert camera.shape == (72, 88)  # gray stays gray
    prepare_sr.bicubic([str(photos)], str(tmp_path / 'sr'), scales=[2, 4])
    assert cv2.imread(str(tmp_path / 'sr' / 'LR_bicubic' / 'X4' / 'camera.png'), cv2.IMREAD_UNCHANGED).shape == (18, 22)


def test_extract_subimages_counts_and_lr_alignment(photos, tmp_path):
    prepare_sr.bicubic([str(photos)], str(tmp_path / 'sr'), scales=[2, 4])
    hr_dir, lr_dir = tmp_path / 'sr' / 'HR', tmp_path / 'sr' / 'LR_bicubic' / 'X2'
    # crop 48, step 32, thresh 8. astronaut HR is 100x128 (mod 4):
    #   rows 0, 32 (end 80, 20 left > 8: add flush 52) -> 3; cols 0, 32, 64 (end 112, 16 left: add 80) -> 4
    # camera HR is 72x88: rows 0 (end 48, 24 left: add 24) -> 2; cols 0, 32 (end 80, 8 left, not > 8) -> 2
    n = prepare_sr.extract_subimages(str(hr_dir), str(tmp_path / 'HR_sub'), crop_size=48, step=32, thresh_size=8)
    assert n == 12 + 4
    n_lr = prepare_sr.extract_subimages(str(lr_dir), str(tmp_path / 'X2_sub'), crop_size=48, step=32, thresh_size=8,
                                        scale=2)
    assert n_lr == n and _names(tmp_path / 'HR_sub') == _names(tmp_path / 'X2_sub')
    hr = cv2.imread(str(hr_dir / 'astronaut.png'))
    lr = cv2.imread(str(lr_dir / 'astronaut.png'))
    last_hr = cv2.imread(str(tmp_path / 'HR_sub' / 'astronaut_s012.png'))
    last_lr = cv2.imread(str(tmp_path / 'X2_sub' / 'astronaut_s012.png'))
    assert np.array_equal(last_hr, hr[52:100, 80:128]) and np.array_equal(last_lr, lr[26:50, 40:64])
    assert not (tmp_path / 'HR_sub' / 'astronaut_s013.png').exists()
    with pytest.raises(ValueError, match='divisible'):
        prepare_sr.extract_subimages(str(lr_dir), str(tmp_path / 'X3_sub'), crop_size=48, step=32, scale=3)
    with pytest.raises(ValueError, match='smaller than crop size'):
        prepare_sr.extract_subimages(str(hr_dir), str(tmp_path / 'big'), crop_size=96, step=32)


def test_lmdb_round_trip_through_basicsr_file_client(photos, tmp_path):
    lmdb_path = str(tmp_path / 'photos.lmdb')
    assert prepare_sr.make_lmdb(str(photos), lmdb_path) == 2
    assert paths_from_lmdb(lmdb_path) == ['astronaut', 'camera']
    meta = (Path(lmdb_path) / 'meta_info.txt').read_text().splitlines()
    assert meta == ['astronaut.png (100,130,3) 1', 'camera.png (75,90,1) 1']
    client = FileClient('lmdb', db_paths=[lmdb_path], client_keys=['gt'])
    for key, name in (('astronaut', 'astronaut.png'), ('camera', 'camera.jpg')):
        stored = imfrombytes(client.get(key, 'gt'), flag='unchanged')
        assert np.array_equal(stored, cv2.imread(str(photos / name), cv2.IMREAD_UNCHANGED))
    with pytest.raises(FileExistsError, match='--overwrite'):
        prepare_sr.make_lmdb(str(photos), lmdb_path)
    assert prepare_sr.make_lmdb(str(photos), lmdb_path, overwrite=True) == 2
    with pytest.raises(ValueError, match='.lmdb'):
        prepare_sr.make_lmdb(str(photos), str(tmp_path / 'no_suffix'))


def test_bad_inputs_and_output_protection(photos, tmp_path, capsys):
    missing, empty, corrupt = tmp_path / 'missing', tmp_path / 'empty', tmp_path / 'corrupt'
    empty.mkdir()
    corrupt.mkdir()
    (corrupt / 'broken.png').write_bytes(b'garbage, not a png')
    with pytest.raises(FileNotFoundError, match=str(missing)):
        prepare_sr.bicubic([str(missing)], str(tmp_path / 'o1'))
    with pytest.raises(ValueError, match=str(empty)):
        prepare_sr.modcrop([str(empty)], str(tmp_path / 'o2'), 2)
    with pytest.raises(ValueError, match=str(corrupt / 'broken.png')):
        prepare_sr.bicubic([str(corrupt)], str(tmp_path / 'o3'))
    with pytest.raises(ValueError, match=str(corrupt / 'broken.png')):
        prepare_sr.make_lmdb(str(corrupt), str(tmp_path / 'o4.lmdb'))

    out = tmp_path / 'sr'
    prepare_sr.bicubic([str(photos)], str(out), scales=[2])
    marker = out / 'LR_bicubic' / 'X2' / 'keep.txt'
    marker.write_text('x')
    with pytest.raises(FileExistsError, match='--overwrite'):
        prepare_sr.bicubic([str(photos)], str(out), scales=[2])
    assert marker.exists()
    prepare_sr.bicubic([str(photos)], str(out), scales=[2], overwrite=True)
    assert not marker.exists() and _names(out / 'HR') == ['astronaut.png', 'camera.png']
    with pytest.raises(ValueError, match='contains input'):
        prepare_sr.modcrop([str(photos)], str(tmp_path), 2, overwrite=True)
    assert (photos / 'astronaut.png').exists()

    twin = tmp_path / 'twin'
    twin.mkdir()
    cv2.imwrite(str(twin / 'astronaut.png'), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match='astronaut.png'):
        prepare_sr.bicubic([str(photos), str(twin)], str(tmp_path / 'o5'))

    with pytest.raises(ConfigError, match=str(missing)):  # the CLI reports the same message (run_cli: exit 2)
        prepare_sr.main(['modcrop', '--input', str(missing), '--output', str(tmp_path / 'o6'), '--scale', '2'])


@pytest.mark.slow
@pytest.mark.parametrize('script,args', [
    ('prepare_sr.py', ['modcrop', '--input', 'no_such_folder', '--output', 'out', '--scale', '2']),
    ('download_datasets.py', ['DIV8K']),
])
def test_data_scripts_report_a_user_error_as_one_line_and_exit_2_like_the_clis(script, args, tmp_path):
    result = run_python([REPO / 'scripts' / 'data_preparation' / script, *args], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in result.stderr


def test_download_table_is_complete():
    keys = download_datasets.resolve(['DF2K', 'DIV2K_valid_HR', 'Set5', 'Set14', 'B100', 'Urban100'])
    assert keys == ['DIV2K_train_HR', 'Flickr2K', 'DIV2K_valid_HR', 'benchmark']
    for source in download_datasets.SOURCES.values():
        assert source.url.startswith('https://') and source.filename.endswith(('.zip', '.tar'))
        assert source.hr_dirs or source.pair_dirs
    assert set(download_datasets.SOURCES['benchmark'].hr_dirs) == {'Set5', 'Set14', 'B100', 'Urban100'}
    for key in ('DIV2K_train_HR', 'DIV2K_valid_HR'):
        source = download_datasets.SOURCES[key]
        assert source.size > 10**8 and len(source.sha256) == 64 and int(source.sha256, 16) >= 0
    with pytest.raises(ValueError, match='manga109.org'):
        download_datasets.resolve(['Manga109'])
    with pytest.raises(ValueError, match='unknown dataset'):
        download_datasets.resolve(['DIV8K'])


def test_verify_and_extract_local_archives(tmp_path):
    payload = b'pixels' * 100
    blob = tmp_path / 'blob.bin'
    blob.write_bytes(payload)
    download_datasets.verify(str(blob), len(payload), hashlib.sha256(payload).hexdigest())
    with pytest.raises(ValueError, match='expected 1 bytes'):
        download_datasets.verify(str(blob), 1)
    with pytest.raises(ValueError, match='sha256'):
        download_datasets.verify(str(blob), len(payload), '0' * 64)

    archive = tmp_path / 'Set5.zip'
    with zipfile.ZipFile(archive, 'w') as zf:
        zf.writestr('Set5/HR/baby.png', cv2.imencode('.png', np.zeros((4, 4), np.uint8))[1].tobytes())
    root = tmp_path / 'root'
    download_datasets.extract(str(archive), str(root))
    assert (root / 'Set5' / 'HR' / 'baby.png').is_file()
    assert Path(download_datasets.extracted_marker(str(root), str(archive))).exists()

    tar_path = tmp_path / 'bench.tar.gz'
    with tarfile.open(tar_path, 'w:gz') as tf:
        info = tarfile.TarInfo('benchmark/Set14/HR/a.txt')
        info.size = 3
        tf.addfile(info, io.BytesIO(b'abc'))
    download_datasets.extract(str(tar_path), str(root))
    assert (root / 'benchmark' / 'Set14' / 'HR' / 'a.txt').read_bytes() == b'abc'

    evil = tmp_path / 'evil.zip'
    with zipfile.ZipFile(evil, 'w') as zf:
        zf.writestr('../escaped.txt', 'x')
    with pytest.raises(ValueError, match='outside'):
        download_datasets.extract(str(evil), str(root))
    assert not (tmp_path / 'escaped.txt').exists()
    with pytest.raises(ValueError, match='neither a zip nor a tar'):
        download_datasets.extract(str(blob), str(root))
