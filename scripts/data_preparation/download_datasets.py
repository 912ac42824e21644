#!/usr/bin/env python
"""Download and unpack the training and test sets: DIV2K, Flickr2K and the SR benchmarks; the deraining sets.

    python scripts/data_preparation/download_datasets.py DIV2K_train_HR DIV2K_valid_HR Flickr2K benchmark \
        --root datasets/downloads
    python scripts/data_preparation/download_datasets.py Derain --root datasets/downloads

Sources (public, as cited by EDSR/SwinIR/BasicSR and MPRNet/Restormer):
  DIV2K_train_HR, DIV2K_valid_HR  https://data.vision.ee.ethz.ch/cvl/DIV2K/  (official). Byte size and
      sha256 are those in tensorflow_datasets' url_checksums/div2k.txt and are verified.
  Flickr2K   https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar  (the EDSR authors' copy, HR and LR;
      no published checksum, so only completeness of the transfer is checked).
  benchmark  https://cv.snu.ac.kr/research/EDSR/benchmark.tar  (EDSR authors): Set5, Set14,
      B100, Urban100, each with HR/ and LR_bicubic/X{2,3,4}/; no published checksum.
  Rain13K_train, Rain13K_test  the deraining data of MPRNet and Restormer: the Google Drive files that
      Restormer's Deraining/download_data.py fetches (swz30/Restormer@df766d5; ids below). The train
      archive unpacks to train/Rain13K/{input,target}/ (13,712 pairs: the union of Rain14000, Rain1800,
      Rain800 and Rain12 that MPRNet assembled), the test archive to test/{Rain100H,Rain100L,Test100,
      Test1200,Test2800}/{input,target}/ (the paths Restormer's option file and evaluate_PSNR_SSIM.m
      read). No published checksum. Google Drive may answer a script with a web page instead of the file
      (quota, confirmation): the script then names the page to download it from by hand and where to
      save it; run it again and it unpacks the file that is already there.
  Manga109   not redistributable (http://www.manga109.org/en/download.html); obtain it under its
      licence and put the 109 HR images in a folder yourself (see datasets/README.md).

Downloads go to ``ROOT/<file>.part`` and are renamed when complete, so an interrupted run resumes
(HTTP Range) where it stopped. Archives are unpacked into ROOT once (a marker file records it).
Afterwards, run prepare_sr.py on the HR folders and prepare_derain.py on the deraining sets that the
script prints.
"""
import argparse
import hashlib
import os
import os.path as osp
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass, field

CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    url: str
    size: int = None  # bytes, when published
    sha256: str = None  # when published
    hr_dirs: dict = field(default_factory=dict)  # dataset name -> HR folder inside ROOT after unpacking
    pair_dirs: dict = field(default_factory=dict)  # dataset name -> folder of input/ and target/ after unpacking
    archive: str = None  # file name to save as, for URLs that do not end with one
    page: str = None  # where a person can download the file when the host refuses a script

    @property
    def filename(self):
        return self.archive or self.url.rsplit('/', 1)[-1]


_EDSR = 'https://cv.snu.ac.kr/research/EDSR'
_DIV2K = 'https://data.vision.ee.ethz.ch/cvl/DIV2K'
# Google Drive's direct download (confirm=t skips the page that asks to confirm a large file).
_DRIVE = 'https://drive.usercontent.google.com/download?export=download&confirm=t&id='
_DRIVE_PAGE = 'https://drive.google.com/file/d/'
_RAIN_TRAIN_ID, _RAIN_TEST_ID = '14BidJeG4nSNuFNFDf99K-7eErCq4i47t', '1P_-RAvltEoEhfT-9GrWRdpEi6NSswTs8'
DERAIN_TEST_SETS = ('Rain100H', 'Rain100L', 'Test100', 'Test1200', 'Test2800')
SOURCES = {
    'DIV2K_train_HR': Source(f'{_DIV2K}/DIV2K_train_HR.zip', 3530603713,
                             '9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335',
                             {'DIV2K_train_HR': 'DIV2K_train_HR'}),
    'DIV2K_valid_HR': Source(f'{_DIV2K}/DIV2K_valid_HR.zip', 448993893,
                             '20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc',
                             {'DIV2K_valid_HR': 'DIV2K_valid_HR'}),
    'Flickr2K': Source(f'{_EDSR}/Flickr2K.tar', hr_dirs={'Flickr2K_HR': 'Flickr2K/Flickr2K_HR'}),
    'benchmark': Source(f'{_EDSR}/benchmark.tar',
                        hr_dirs={name: f'benchmark/{name}/HR' for name in ('Set5', 'Set14', 'B100', 'Urban100')}),
    'Rain13K_train': Source(_DRIVE + _RAIN_TRAIN_ID, archive='Rain13K_train.zip', page=_DRIVE_PAGE + _RAIN_TRAIN_ID,
                            pair_dirs={'Rain13K': 'train/Rain13K'}),
    'Rain13K_test': Source(_DRIVE + _RAIN_TEST_ID, archive='Rain13K_test.zip', page=_DRIVE_PAGE + _RAIN_TEST_ID,
                           pair_dirs={name: f'test/{name}' for name in DERAIN_TEST_SETS}),
}
MANUAL = {
    'Manga109': 'not redistributable: request it at http://www.manga109.org/en/download.html, put the 109 '
                'HR images in one folder and run prepare_sr.py bicubic on it (datasets/README.md).',
}
ALIASES = {'DF2K': ['DIV2K_train_HR', 'Flickr2K'], 'Set5': ['benchmark'], 'Set14': ['benchmark'],
           'B100': ['benchmark'], 'Urban100': ['benchmark'], 'Derain': ['Rain13K_train', 'Rain13K_test'],
           'Rain13K': ['Rain13K_train'], **{name: ['Rain13K_test'] for name in DERAIN_TEST_SETS}}


def resolve(names):
    """Source keys for the requested names (aliases expanded, order kept, duplicates dropped)."""
    keys = []
    for name in names:
        if name in MANUAL:
            raise ValueError(f'{name}: {MANUAL[name]}')
        expanded = ALIASES.get(name, [name])
        unknown = [k for k in expanded if k not in SOURCES]
        if unknown:
            raise ValueError(f'unknown dataset {name!r}; choose from {sorted(SOURCES) + sorted(ALIASES)}')
        keys += [k for k in expanded if k not in keys]
    return keys


def verify(path, size=None, sha256=None):
    """Raise ValueError naming `path` when its byte size or sha256 differs from the expected one."""
    actual = osp.getsize(path)
    if size is not None and actual != size:
        raise ValueError(f'{path}: expected {size} bytes, got {actual}')
    if sha256 is not None:
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(CHUNK), b''):
                digest.update(block)
        if digest.hexdigest() != sha256:
            raise ValueError(f'{path}: sha256 {digest.hexdigest()} does not match the expected {sha256}')


def download(source, root):
    """Fetch `source` into ROOT/<file> through ROOT/<file>.part, resuming a partial transfer."""
    dest = osp.join(root, source.filename)
    if osp.exists(dest):
        print(f'{dest} already downloaded')
        return dest
    part = dest + '.part'
    done = osp.getsize(part) if osp.exists(part) else 0
    request = urllib.request.Request(source.url, headers={'Range': f'bytes={done}-'} if done else {})
    with urllib.request.urlopen(request) as response:
        resumed = response.status == 206
        total = response.headers.get('Content-Length')
        total = int(total) + (done if resumed else 0) if total else source.size
        print(f'downloading {source.url} -> {dest}' + (f' (resuming at {done} bytes)' if resumed else ''))
        with open(part, 'ab' if resumed else 'wb') as f:
            for block in iter(lambda: response.read(CHUNK), b''):
                f.write(block)
    try:
        verify(part, source.size if source.size is not None else total, source.sha256)
    except ValueError:
        os.remove(part)  # a corrupt partial file would otherwise be resumed forever
        raise
    os.replace(part, dest)
    return dest


def _check_member(root, name):
    target = osp.realpath(osp.join(root, name))
    if target != osp.realpath(root) and not target.startswith(osp.realpath(root) + os.sep):
        raise ValueError(f'archive member {name!r} would be written outside {root}')


def extracted_marker(root, archive):
    return osp.join(root, f'.extracted-{osp.basename(archive)}')


def extract(archive, root):
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into `root`; members escaping `root` are rejected."""
    os.makedirs(root, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                _check_member(root, name)
            zf.extractall(root)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                _check_member(root, member.name)
            # the 'data' filter (Python >= 3.10.12/3.11.4) also drops device files and odd permissions
            tf.extractall(root, **({'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}))
    else:
        raise ValueError(f'{archive} is neither a zip nor a tar archive')
    open(extracted_marker(root, archive), 'w').close()
    print(f'extracted {archive} -> {root}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('names', nargs='+', help=f'any of {sorted(SOURCES)}, or aliases {sorted(ALIASES)}')
    parser.add_argument('--root', default='datasets/downloads', help='where archives go and are unpacked')
    parser.add_argument('--keep-archives', action='store_true', help='keep archives after unpacking')
    args = parser.parse_args(argv)
    try:
        keys = resolve(args.names)
    except ValueError as err:
        fail(str(err))
    os.makedirs(args.root, exist_ok=True)
    for key in keys:
        source = SOURCES[key]
        if osp.exists(extracted_marker(args.root, source.filename)):
            print(f'{key}: already downloaded and extracted in {args.root}')
        else:
            archive = download(source, args.root)
            try:
                extract(archive, args.root)
            except ValueError as err:
                if not source.page:
                    raise
                fail(f'{err}: the host sent something else (a web page?); download the file from {source.page}, '
                     f'save it as {archive} (replacing this one) and run again')
            if not args.keep_archives:
                os.remove(archive)
        for what, folders in (('HR images', source.hr_dirs), ('input/ and target/ pairs', source.pair_dirs)):
            for name, rel in folders.items():
                path = osp.join(args.root, rel)
                found = '' if osp.isdir(path) else '  (NOT FOUND: check the archive layout)'
                print(f'{name}: {what} in {path}{found}')


def fail(message):
    """One ``error:`` line and exit status 2, as the package's CLIs (``run_cli``), without importing the
    package: this script needs no torch."""
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
    main()
