#!/usr/bin/env python
"""Check deraining sets pair by pair and link them into the layout of datasets/README.md.

    python scripts/data_preparation/prepare_derain.py datasets/downloads/train/Rain13K \\
        datasets/downloads/test/{Rain100H,Rain100L,Test100,Test1200,Test2800} --output datasets/DR
    python scripts/data_preparation/prepare_derain.py datasets/DR/*          # check only

Each SET folder holds ``input/`` (rainy) and ``target/`` (clean) images. A good pair has the same file
name in both folders (BasicSR's PairedImageDataset pairs identical names, extension included), images
of the same size, and 8-bit gray or RGB pixels (what the training and test CLIs accept). Every bad pair
is reported on its own line; then the exit status is 1 and nothing is linked. With ``--output``, each
good set becomes OUTPUT/<set folder name>, a symbolic link to the set's real path (the images are
not copied); an existing link there is replaced only with ``--overwrite``, anything else never.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # works from a bare clone too
from basicsr_iln.utils.checks import IMAGE_SUFFIXES, checked_image_size  # noqa: E402
from basicsr_iln.utils.errors import ConfigError, run_cli  # noqa: E402

PAIR_FOLDERS = ('input', 'target')


def image_names(folder):
    return {n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES) and osp.isfile(osp.join(folder, n))}


def unpaired_lines(inputs, targets):
    """One line per name without a partner; an input and a target that differ only in their extension are
    one bad pair (one line)."""
    lonely_targets = {}
    for name in sorted(targets - inputs):
        lonely_targets.setdefault(osp.splitext(name)[0], []).append(name)
    lines = []
    for name in sorted(inputs - targets):
        near = lonely_targets.get(osp.splitext(name)[0])
        if near:
            lines.append(f'input/{name} and target/{near.pop(0)} differ in their extension: a pair needs one '
                         'file name')
        else:
            lines.append(f'input/{name} has no target/{name}')
    return lines + [f'target/{name} has no input/{name}' for names in lonely_targets.values() for name in names]


def image_size(set_dir, folder, name):
    """(width, height, None) of an image the CLIs read faithfully, else (None, None, why)."""
    try:
        return (*checked_image_size(osp.join(set_dir, folder, name), folder, {}), None)
    except ConfigError as err:
        return None, None, str(err)


def bad_pairs(set_dir):
    """One line per bad pair of ``set_dir`` (or one line for a missing folder); [] when every pair is good."""
    missing = [f for f in PAIR_FOLDERS if not osp.isdir(osp.join(set_dir, f))]
    if missing:
        return [f"{set_dir}: no {' or '.join(f + '/' for f in missing)} folder (a set holds input/ and target/)"]
    inputs, targets = (image_names(osp.join(set_dir, f)) for f in PAIR_FOLDERS)
    if not inputs and not targets:
        return [f'{set_dir}: input/ and target/ hold no images ({", ".join(IMAGE_SUFFIXES)})']
    lines = [f'{set_dir}: {line}' for line in unpaired_lines(inputs, targets)]
    for name in sorted(inputs & targets):
        (iw, ih, in_err), (tw, th, tg_err) = (image_size(set_dir, f, name) for f in PAIR_FOLDERS)
        errors = [e for e in (in_err, tg_err) if e]
        if errors:
            lines.append(f'{set_dir}: pair {name}: ' + '; '.join(errors))
        elif (iw, ih) != (tw, th):
            lines.append(f'{set_dir}: pair {name}: input is {iw}x{ih} but target is {tw}x{th} (must be equal)')
    return lines


def link_sets(set_dirs, output, overwrite):
    """OUTPUT/<name> -> real path of each set (resolved first, so re-linking OUTPUT's own entries cannot make a
    link to itself); refuses two sets of one name and (without overwrite) existing entries, before linking any."""
    sources = [osp.realpath(d) for d in set_dirs]
    names = [osp.basename(osp.normpath(d)) for d in set_dirs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f'two sets would both be linked as {output}/{twice[0]}')
    targets = [osp.join(output, n) for n in names]
    taken = [t for t in targets if osp.lexists(t)]
    if taken and not overwrite:
        raise FileExistsError(f'{taken[0]} exists (give --overwrite to replace it)')
    real = [t for t in taken if not osp.islink(t)]
    if real:
        raise FileExistsError(f'{real[0]} is not a link: --overwrite replaces only links, move it away yourself')
    os.makedirs(output, exist_ok=True)
    for source, target in zip(sources, targets):
        if osp.lexists(target):
            os.remove(target)
        os.symlink(source, target, target_is_directory=True)
        print(f'{target} -> {source}')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sets', nargs='+', metavar='SET', help='folder with input/ and target/')
    parser.add_argument('--output', help='link the checked sets here (e.g. datasets/DR); default: check only')
    parser.add_argument('--overwrite', action='store_true', help='replace existing links under --output')
    args = parser.parse_args(argv)
    problems = []
    for set_dir in args.sets:
        if not osp.isdir(set_dir):
            problems.append(f'{set_dir}: not a folder')
            continue
        lines = bad_pairs(set_dir)
        problems += lines
        if not lines:
            print(f'{set_dir}: {len(image_names(osp.join(set_dir, "input")))} pairs, all good')
    if problems:
        for line in problems:
            print(f'error: {line}', file=sys.stderr)
        raise ConfigError(f'{len(problems)} problem(s) in {len(args.sets)} set(s); nothing linked')
    if args.output:
        try:
            link_sets(args.sets, args.output, args.overwrite)
        except (FileExistsError, ValueError) as err:
            raise ConfigError(str(err)) from None


if __name__ == '__main__':
    run_cli(main)
