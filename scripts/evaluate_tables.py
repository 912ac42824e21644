#!/usr/bin/env python
"""Evaluate checkpoints over the standard test sets of their task and write the i-LN paper's tables.

    python scripts/evaluate_tables.py RUN [RUN ...] [--out results/tables] [--self-ensemble]

A RUN is a test option file (``options/test/...``: network, checkpoint, test sets and metrics), a
training option file or experiment folder (the test option file of the same stem is looked up
under ``--test-options``; for a folder its ``models/net_g_latest.pth`` is evaluated), or a
checkpoint inside an experiment folder. ``LABEL=RUN`` names the backbone as in the paper (e.g.
``HAT_1=experiments/train_HAT-mini_SRx4_iln``); otherwise a network of a preset size with a paper name
(basicsr_iln/presets.py: the official i-LN HAT-mini and full HAT sizes as HAT_1 / HAT_dagger, SwinIR-S as
SwinIR_1, our stand-in for that size: docs/protocol.md) is labelled with it, any other network of our
families <family>-<dim>x<stages>; a network without a family (BasicSR's own SwinIR) needs its label.

Writes ``tables.md`` and ``tables.csv`` (one row per cell: ours, paper, delta, status) under
``--out``: Table 1 (normalisation schemes, x4 SR), Table 2 (LN vs i-LN per task and backbone),
Table 2(b) (deraining: Rain100H/Rain100L/Test100/Test1200/Test2800, a paired test set at scale 1), SR
(Set5/Set14/B100/Urban100/Manga109, x2/x3/x4), DN (sigma 15/25/50), CAR (q 10/20/30/40,
PSNR/SSIM/PSNR-B) and Table 8 (the largest feature magnitude during training, from the
``analysis.jsonl`` of the run's experiment folder; a run whose copied training options set
``train.grad_clip_norm`` is the ``ln+grad_clip`` row). Published values come from
docs/paper_results.csv only; a value the paper (or that file) lacks stays empty. A missing test set,
checkpoint or run is written into its cell.
"""
import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import basicsr_iln  # noqa: E402,F401
from basicsr.data import build_dataloader  # noqa: E402
from basicsr.models import build_model  # noqa: E402

from basicsr_iln.analysis import JSONL_NAME  # noqa: E402
from basicsr_iln.presets import DEGRADATIONS, LEVELS, SIZES, TEST_SETS, size_of  # noqa: E402
from basicsr_iln.utils.checks import build_dataset_checked  # noqa: E402
from basicsr_iln.utils.checks import check_datasets  # noqa: E402
from basicsr_iln.utils.checkpoint import SAFETENSORS_SUFFIX  # noqa: E402
from basicsr_iln.utils.denormals import add_keep_denormals_argument, flush_unless_kept  # noqa: E402
from basicsr_iln.utils.errors import ConfigError, run_cli  # noqa: E402
from basicsr_iln.utils.memory_format import add_channels_last_argument  # noqa: E402
from basicsr_iln.utils.network_config import arch_class, constructor_defaults  # noqa: E402
from basicsr_iln.utils.options import load_yaml_file, parse_options  # noqa: E402

PAPER_CSV = REPO / 'docs' / 'paper_results.csv'
# The paper's table layouts (columns shown whether or not a run covers them): the test sets and levels of
# basicsr_iln/presets.py, and Table 1's sets.
TABLE1_SETS = ('Set14', 'B100', 'Urban100', 'Manga109')
DERAIN_LEVEL = '-'  # the level column of paper_results.csv's deraining rows
LEVEL_FORMAT = {'SR': 'x{}', 'DN': 'sigma{}', 'CAR': 'q{}'}
METRIC_DIGITS = {'psnr': 2, 'ssim': 4, 'psnrb': 2}
METRIC_NAMES = {'psnr': 'PSNR', 'ssim': 'SSIM', 'psnrb': 'PSNR-B'}
MAGNITUDE = 'max_feature_magnitude'  # Table 8, from analysis.jsonl; spans 1 to 1e7, so significant digits
METRIC_FORMATS = {MAGNITUDE: '.3g'}
DYNAMICS_SET = '-'  # the "test set" column of a training-dynamics value
GRAD_CLIP = '+grad_clip'  # norm suffix of a run trained with train.grad_clip_norm
DEGRADED_TASKS = {d.dataset_type: (kind, d.level_key) for kind, d in DEGRADATIONS.items()}
# Cell states besides a value; the CSV keeps the detail (paths).
NO_RUN = 'no run'
MISSING_SET = 'missing test set'
MISSING_CKPT = 'missing checkpoint'
NOT_TESTED = 'not in the test options'
NOT_COMPUTED = 'metric not computed'


def load_published(path=PAPER_CSV):
    """{(task, backbone, level, dataset, norm, metric): (value text, table number)}; '#' lines are notes."""
    with open(path, newline='', encoding='utf-8') as f:
        rows = csv.DictReader(line for line in f if not line.startswith('#'))
        return {(r['task'], r['backbone'], r['scale_or_level'], r['dataset'], r['norm'], r['metric']):
                (r['value'], r['table']) for r in rows}


def network_facts(net_opt):
    """(family or None, norm_type, effective kwargs) of ``network_g``: class defaults overlaid by the options;
    the family is the architecture class's ``family`` (BasicSR's own networks have none)."""
    cls = arch_class(net_opt['type'])
    kwargs = {**constructor_defaults(cls), **{k: v for k, v in net_opt.items() if k != 'type'}}
    return getattr(cls, 'family', None), kwargs.get('norm_type', 'ln'), kwargs


def backbone_label(family, kwargs):
    """The paper's name of a preset size (the kwargs the option files of that size have), else
    <family>-<dim>x<stages>."""
    size = size_of(family, kwargs)
    if size is not None and SIZES[size].paper_name:
        return SIZES[size].paper_name
    return f"{family}-{kwargs.get('embed_dim')}x{len(kwargs.get('depths', ()))}"


def find_test_options(stem, test_options_dir):
    found = sorted(Path(test_options_dir).rglob(f'test_{stem}.yml'))
    if not found:
        raise ConfigError(f"no test option file 'test_{stem}.yml' under {test_options_dir} for run '{stem}' "
                          '(pass the test option file itself, or --test-options DIR)')
    return found[0]


def resolve_run(spec, test_options_dir):
    """(label or None, test option file, checkpoint overriding path.pretrain_network_g or None)."""
    label, sep, rest = spec.partition('=')
    if not sep or Path(spec).exists():
        label, rest = None, spec
    path = Path(rest)
    if path.suffix in ('.pth', SAFETENSORS_SUFFIX):
        if path.parent.name != 'models':  # the network alone would do, but the test sets come from the test file
            raise ConfigError(f'cannot tell the test sets of checkpoint {path}: give its test option file (with '
                              'path.pretrain_network_g) or its experiment folder')
        return label, find_test_options(path.parent.parent.name.removeprefix('train_'), test_options_dir), path
    if path.is_dir():
        return (label, find_test_options(path.name.removeprefix('train_'), test_options_dir),
                path / 'models' / 'net_g_latest.pth')
    opt = load_yaml_file(str(path))
    if 'train' in (opt.get('datasets') or {}):
        return label, find_test_options(str(opt['name']).removeprefix('train_'), test_options_dir), None
    return label, path, None


def dataset_task(dataset_opt, scale):
    """(task, colour, level) of one test dataset option; a paired set at scale 1 is deraining, the paper's
    only task with input/target pairs of one size."""
    task, key = DEGRADED_TASKS.get(dataset_opt['type'], ('SR', None))
    gray = dataset_opt.get('in_ch') == 1 or dataset_opt.get('color') in ('gray', 'y')
    if task == 'SR' and scale == 1:
        return 'DR', 'gray' if gray else 'color', DERAIN_LEVEL
    level = scale if task == 'SR' else dataset_opt.get(key)
    return task, 'gray' if gray else 'color', int(level) if float(level).is_integer() else level


def missing_folder(dataset_opt):
    for key in ('dataroot_gt', 'dataroot_lq'):
        if dataset_opt.get(key) and not Path(dataset_opt[key]).exists():
            return dataset_opt[key]
    return None


def experiment_folder(checkpoint):
    """``experiments/<name>`` of a checkpoint ``experiments/<name>/models/<file>.pth``, else None."""
    path = Path(checkpoint) if checkpoint else None
    return path.parent.parent if path is not None and path.parent.name == 'models' else None


def trained_with_grad_clip(experiment):
    """Whether a training option file copied into ``experiment`` sets train.grad_clip_norm: the network
    options cannot tell Table 8's LN + gradient clipping run from plain LN."""
    return any((load_yaml_file(str(path)).get('train') or {}).get('grad_clip_norm') is not None
               for path in sorted(experiment.glob('*.yml')))


def largest_magnitude(experiment):
    """(value, layer name, iteration) of the largest feature magnitude (mean of x^2 of a block or
    residual-group output, stats.py) over every probe in ``experiment/analysis.jsonl``; None without one."""
    path = experiment / JSONL_NAME
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]
    return max(((layer['magnitude'], layer['name'], r['iter']) for r in records for layer in r['layers']),
               default=None)


def evaluate_run(spec, args):
    """Records {task, colour, level, dataset, backbone, norm, run, metrics or status} of one run: one per
    test set, and one for Table 8 when the run's experiment folder has an analysis.jsonl."""
    label, opt_path, checkpoint = resolve_run(spec, args.test_options)
    opt, _ = parse_options(str(args.out.resolve()), is_train=False, argv=['-opt', str(opt_path)])
    if checkpoint is not None:
        opt['path']['pretrain_network_g'] = str(checkpoint)
    checkpoint = opt['path'].get('pretrain_network_g')
    family, norm, kwargs = network_facts(opt['network_g'])
    if not label and family is None:  # its kwargs alone could make it look like one of ours
        raise ConfigError(f"{opt_path}: network_g type '{opt['network_g']['type']}' is not of a backbone family of "
                          'basicsr_iln (its class has no `family`), so its table rows have no name: give one as '
                          f'LABEL={spec}')
    label = label or backbone_label(family, kwargs)
    experiment = experiment_folder(checkpoint)
    if experiment is not None and trained_with_grad_clip(experiment):
        norm += GRAD_CLIP
    records, present = [], {}
    for phase, dataset_opt in opt['datasets'].items():
        task, color, level = dataset_task(dataset_opt, opt.get('scale', 1))
        record = dict(task=task, color=color, level=level, dataset=dataset_opt['name'], backbone=label, norm=norm,
                      run=str(opt_path), checkpoint=str(checkpoint))
        missing = missing_folder(dataset_opt)
        if not checkpoint or not Path(checkpoint).is_file():
            record.update(status=MISSING_CKPT, detail=f'checkpoint not found: {checkpoint}')
        elif missing:
            record.update(status=MISSING_SET, detail=f'test set not found: {missing}')
        else:
            present[phase] = dataset_opt
        records.append(record)
    magnitude = experiment and largest_magnitude(experiment)
    if magnitude:
        value, layer, it = magnitude
        records.append(dict(records[0], dataset=DYNAMICS_SET, status='ok', metrics={MAGNITUDE: value},
                            detail=f'{layer} at iter {it} ({experiment / JSONL_NAME})'))
    if present:
        opt['datasets'] = present
        opt['val'] = dict(opt.get('val') or {}, save_img=False, self_ensemble=args.self_ensemble)
        opt['channels_last'] = args.channels_last or opt['channels_last']
        check_datasets(opt)
        model = build_model(opt)
        by_name = {r['dataset']: r for r in records}
        for dataset_opt in present.values():
            loader = build_dataloader(build_dataset_checked(dataset_opt, 'test'), dataset_opt, num_gpu=opt['num_gpu'],
                                      dist=False, sampler=None, seed=opt['manual_seed'])
            model.validation(loader, current_iter=opt['name'], tb_logger=None, save_img=False)
            by_name[dataset_opt['name']].update(status='ok', metrics=dict(model.metric_results))
    return records


class Tables:
    """Our records and the published values, indexed for cell look-ups."""

    def __init__(self, records, published):
        self.published = published
        self.ours = {}
        self.runs = set()
        for r in records:
            row = (r['task'], r['color'], r['backbone'], r['norm'], r['level'])
            self.runs.add(row)
            self.ours[(*row, r['dataset'])] = r
        self.csv_rows = []

    def level_text(self, task, level):
        return LEVEL_FORMAT.get(task, '{}').format(level)

    def paper(self, task, color, backbone, norm, level, dataset, metric):
        if task != 'SR' and color != 'color':  # the published DN/CAR values are colour results
            return None
        return self.published.get((task, backbone, self.level_text(task, level), dataset, norm, metric))

    def cell(self, table, task, color, backbone, norm, level, dataset, metric):
        """Markdown text of one cell (ours / paper (delta)); also records the CSV row."""
        record = self.ours.get((task, color, backbone, norm, level, dataset))
        status = NO_RUN if (task, color, backbone, norm, level) not in self.runs else NOT_TESTED
        detail, ours = '', None
        if record is not None:
            status, detail = record['status'], record.get('detail', '')
            if status == 'ok':
                ours = record['metrics'].get(metric)
                status = 'ok' if ours is not None else NOT_COMPUTED
        paper = self.paper(task, color, backbone, norm, level, dataset, metric)
        delta = ours - float(paper[0]) if ours is not None and paper else None
        spec = METRIC_FORMATS.get(metric, f'.{METRIC_DIGITS.get(metric, 4)}f')
        self.csv_rows.append({
            'table': table, 'task': task, 'color': color, 'backbone': backbone, 'norm': norm,
            'level': self.level_text(task, level), 'dataset': dataset, 'metric': metric,
            'ours': '' if ours is None else f'{ours:.6f}', 'paper': paper[0] if paper else '',
            'paper_table': paper[1] if paper else '', 'delta': '' if delta is None else f'{delta:.6f}',
            'status': status, 'detail': detail, 'run': record['run'] if record else ''})
        text = f'{ours:{spec}}' if ours is not None else f'*{status}*'
        if paper:
            text += f' / {paper[0]} ({delta:+{spec}})' if delta is not None else f' / {paper[0]}'
        return text

    def published_rows(self, task, keep=lambda key: True):
        return [key for key in self.published if key[0] == task and keep(key)]


def level_of(task, text):
    return int(text[len(LEVEL_FORMAT[task].format('')):]) if task in LEVEL_FORMAT and text != '-' else text


def markdown(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return lines + ['| ' + ' | '.join(map(str, row)) + ' |' for row in rows]


def table1(t):
    """Normalisation schemes, x4 SR: a row per backbone and norm."""
    keys = {(b, n) for task, c, b, n, lv in t.runs if task == 'SR' and lv == 4}
    keys |= {(k[1], k[4]) for k in t.published_rows('SR', lambda k: t.published[k][1] == '1')}
    header = ['backbone', 'norm'] + [f'{d} {METRIC_NAMES[m]}' for d in TABLE1_SETS for m in ('psnr', 'ssim')]
    rows = [[b, n] + [t.cell('1', 'SR', 'color', b, n, 4, d, m) for d in TABLE1_SETS for m in ('psnr', 'ssim')]
            for b, n in sorted(keys)]
    return '## Table 1: normalisation schemes (x4 SR)', markdown(header, rows)


def table2(t):
    """LN vs i-LN per task and backbone (deraining: Table 2(b)): a row per task, backbone, level and test set."""
    keys = {(task, c, b, lv, d) for task, c, b, n, lv, d in t.ours
            if n in ('ln', 'iln') and d != DYNAMICS_SET and task != 'DR'}
    keys |= {(k[0], 'color', k[1], level_of(k[0], k[2]), k[3]) for k in t.published
             if t.published[k][1] == '2' and k[5] in ('psnr', 'ssim') and k[0] != 'DR'}
    header = ['task', 'colour', 'backbone', 'level', 'test set'] + [
        f'{name} {METRIC_NAMES[m]}' for name in ('LN', 'i-LN') for m in ('psnr', 'ssim')]
    rows = [[task, c, b, t.level_text(task, lv), d] + [t.cell('2', task, c, b, n, lv, d, m)
                                                       for n in ('ln', 'iln') for m in ('psnr', 'ssim')]
            for task, c, b, lv, d in sorted(keys, key=str)]
    return '## Table 2: LN vs i-LN per task and backbone', markdown(header, rows)


def table2b(t):
    """Deraining, LN vs i-LN: a row per backbone (run or published) and test set."""
    backbones = {b for task, c, b, n, lv in t.runs if task == 'DR'} | {k[1] for k in t.published_rows('DR')}
    header = ['backbone', 'test set'] + [f'{name} {METRIC_NAMES[m]}' for name in ('LN', 'i-LN')
                                         for m in ('psnr', 'ssim')]
    rows = [[b, d] + [t.cell('2b', 'DR', 'color', b, n, DERAIN_LEVEL, d, m) for n in ('ln', 'iln')
                      for m in ('psnr', 'ssim')] for b in sorted(backbones) for d in TEST_SETS[('DR', 'color')]]
    caption = ("PSNR/SSIM on the Y of MATLAB's rgb2ycbcr rounded to integers, whole image (the MPRNet/Restormer "
               'evaluate_PSNR_SSIM.m convention: calculate_psnr_matlab_y / calculate_ssim_matlab_y). SwinIR_1 is '
               'SwinIR-S here: a stand-in for the paper\'s size, which is not in the official release '
               '(docs/protocol.md).')
    return '## Table 2(b): deraining (Rain13K training)', [caption, ''] + markdown(header, rows)


def sr_table(t):
    keys = {(b, n, lv) for task, c, b, n, lv in t.runs if task == 'SR'}
    keys |= {(k[1], k[4], level_of('SR', k[2])) for k in t.published_rows('SR', lambda k: k[5] in ('psnr', 'ssim'))}
    sets = TEST_SETS[('SR', 'color')]
    header = ['backbone', 'norm', 'scale'] + [f'{d} {METRIC_NAMES[m]}' for d in sets for m in ('psnr', 'ssim')]
    rows = [[b, n, f'x{lv}'] + [t.cell('SR', 'SR', 'color', b, n, lv, d, m) for d in sets for m in ('psnr', 'ssim')]
            for b, n, lv in sorted(keys, key=str)]
    return '## SR: bicubic x2/x3/x4 (Y channel)', markdown(header, rows)


def restoration_table(t, task, metrics):
    """DN or CAR: a row per backbone, colour, norm and test set; a column per level and metric."""
    keys = {(b, c, n) for tk, c, b, n, lv in t.runs if tk == task}
    keys |= {(k[1], 'color', k[4]) for k in t.published_rows(task)}
    header = ['backbone', 'colour', 'norm', 'test set'] + [
        f'{LEVEL_FORMAT[task].format(lv)} {METRIC_NAMES[m]}' for lv in LEVELS[task] for m in metrics]
    rows = [[b, c, n, d] + [t.cell(task, task, c, b, n, lv, d, m) for lv in LEVELS[task] for m in metrics]
            for b, c, n in sorted(keys) for d in TEST_SETS[(task, c)]]
    title = {'DN': '## DN: Gaussian denoising (sigma 15/25/50)', 'CAR': '## CAR: JPEG artifact removal (q 10/20/30/40)'}
    return title[task], markdown(header, rows)


def table8(t):
    """Largest feature magnitude during training: a row per task, backbone, norm and level."""
    keys = {(task, c, b, n, lv) for task, c, b, n, lv, d in t.ours if d == DYNAMICS_SET}
    keys |= {(k[0], 'color', k[1], k[4], level_of(k[0], k[2])) for k in t.published if k[5] == MAGNITUDE}
    header = ['task', 'colour', 'backbone', 'norm', 'level', 'max feature magnitude']
    rows = [[task, c, b, n, t.level_text(task, lv), t.cell('8', task, c, b, n, lv, DYNAMICS_SET, MAGNITUDE)]
            for task, c, b, n, lv in sorted(keys, key=str)]
    caption = ("Feature magnitude as in the paper's Fig. 1: the mean of x^2 over a probe batch (analysis.jsonl's "
               '`magnitude`); the largest over every probe of the run and every recorded Transformer-block and '
               'residual-group output (which one and when: tables.csv). Runs need an `analysis` section; '
               f'`ln{GRAD_CLIP}`: trained with `train.grad_clip_norm`.')
    return '## Table 8: max feature magnitude during training', [caption, ''] + markdown(header, rows)


def write_tables(records, published, out, command, self_ensemble):
    t = Tables(records, published)
    sections = [table1(t), table2(t), table2b(t), sr_table(t), restoration_table(t, 'DN', ('psnr', 'ssim')),
                restoration_table(t, 'CAR', ('psnr', 'ssim', 'psnrb')), table8(t)]
    legend = [
        f'Command: `{command}`', '',
        f"Each cell: ours / paper (ours - paper); paper values from docs/paper_results.csv (the paper's table "
        f"number is in tables.csv), empty where it has none. Self-ensemble x8: {'yes' if self_ensemble else 'no'}.",
        f'*{NO_RUN}*: no checkpoint was given for the row; *{MISSING_CKPT}* / *{MISSING_SET}*: a file or folder '
        f'does not exist (path in tables.csv); *{NOT_TESTED}*: the run\'s test option file does not list the set; '
        'published DN/CAR values are compared with colour runs only.']
    lines = ['# Results in the layout of the i-LN paper', ''] + legend
    for title, table in sections:
        lines += ['', title, ''] + table
    out.mkdir(parents=True, exist_ok=True)
    (out / 'tables.md').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    with open(out / 'tables.csv', 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, fieldnames=list(t.csv_rows[0]))
        writer.writeheader()
        writer.writerows(t.csv_rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='*', metavar='[LABEL=]RUN',
                        help='test option file, training option file, experiment folder or its checkpoint')
    parser.add_argument('--out', type=Path, default=Path('results/tables'), help='where tables.md/.csv go')
    parser.add_argument('--test-options', type=Path, default=REPO / 'options' / 'test',
                        help='where to find the test option file of a training run (default: options/test)')
    parser.add_argument('--self-ensemble', action='store_true', help='x8 self-ensemble (flips/rotations)')
    add_channels_last_argument(parser)
    add_keep_denormals_argument(parser)
    parser.add_argument('--traceback', action='store_true', help='show the Python traceback of user errors')
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)

    def run(_):
        flush_unless_kept(args)  # before any parallel op: threads inherit it
        records = [r for spec in args.runs for r in evaluate_run(spec, args)]
        write_tables(records, load_published(), args.out, ' '.join(['python scripts/evaluate_tables.py', *argv]),
                     args.self_ensemble)
        counts = defaultdict(int)
        for r in records:
            counts[r['status']] += 1
        summary = ', '.join(f'{status}: {n}' for status, n in sorted(counts.items())) or 'no runs given'
        print(f"wrote {args.out / 'tables.md'} and {args.out / 'tables.csv'} (test sets by status: {summary})")

    run_cli(run, argv)


if __name__ == '__main__':
    main()
