#!/usr/bin/env python
"""Plot the training dynamics recorded by the ``analysis`` option (basicsr_iln/analysis) of one or more runs.

    python scripts/plot_dynamics.py experiments/RUN_LN experiments/RUN_ILN --out docs/dynamics [--per-depth]

Reads ``<run>/analysis.jsonl`` of every folder and writes into ``--out``:

* ``dynamics.png``: like the paper's Fig. 1/4, vs iteration, one colour per run (legend: norm type,
  architecture): feature magnitude (mean x^2, log scale; solid = max over blocks, dashed = median),
  max |x| (log, with the fp16 limit 65504), normalised channel entropy (solid = min over blocks,
  dashed = median; 1 = uniform over channels) and the median over norm layers of
  corr(|bias|, channel magnitude of the norm input) (the paper's Fig. 8 alignment);
* ``depth_<run>.png`` (``--per-depth``): magnitude and entropy of every block, coloured by depth;
* ``summary.md``: per run and layer kind, first/final/peak magnitude, final max |x|, first/final/lowest
  entropy, final bias correlation.

Statistics are over Transformer blocks, or over residual groups for runs recorded with ``layers: groups``.
"""
import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from basicsr_iln.analysis import JSONL_NAME, summarize  # noqa: E402

FP16_MAX = 65504.0


def load_run(folder):
    """{'name', 'arch', 'norm_type', 'kind', 'records', 'summaries'} of one experiment folder."""
    path = Path(folder) / JSONL_NAME
    if not path.is_file():
        raise SystemExit(f'error: {path} not found (train with an `analysis:` option section)')
    by_iter = {}
    for line in path.read_text(encoding='utf-8').splitlines():
        if line.strip():
            record = json.loads(line)
            by_iter[record['iter']] = record  # a resumed run may repeat iterations: the last one wins
    if not by_iter:
        raise SystemExit(f'error: {path} holds no records')
    records = [by_iter[i] for i in sorted(by_iter)]
    kind = 'block' if any(layer['kind'] == 'block' for layer in records[0]['layers']) else 'group'
    last = records[-1]
    return {'name': last.get('name', Path(folder).name), 'arch': last.get('arch', '?'),
            'norm_type': last.get('norm_type', '?'), 'kind': kind, 'records': records,
            'summaries': [summarize(r['layers'], r['norms']) for r in records]}


def label_runs(runs):
    """Legend labels naming norm type and architecture; the run name is added where these repeat."""
    labels = [f"{run['norm_type']} · {run['arch']}" for run in runs]
    return [f"{label} ({run['name']})" if labels.count(label) > 1 else label for label, run in zip(labels, runs)]


def series(run, key):
    pairs = [(r['iter'], s[key]) for r, s in zip(run['records'], run['summaries']) if s.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


CORR_KEY = 'norm_bias_magnitude_corr_median'
PANELS = [  # (title, summary keys drawn solid then dashed, log scale, legend title)
    ('feature magnitude (mean $x^2$)', ('magnitude_max', 'magnitude_median'), True, 'solid: max, dashed: median'),
    ('max |x|', ('max_abs_max', ), True, None),
    ('channel entropy / log C', ('entropy_norm_min', 'entropy_norm_median'), False, 'solid: min, dashed: median'),
    ('corr(|norm bias|, input channel magnitude), median', (CORR_KEY, ), False, None),
]


def summary_key(run, key):
    """Full summary key: per layer kind (block_/group_) except the norm-layer correlation."""
    return key if key == CORR_KEY else f"{run['kind']}_{key}"


def plot_dynamics(runs, labels, out):
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for ax, (title, keys, log, legend_title) in zip(axes.flat, PANELS):
        for i, (run, label) in enumerate(zip(runs, labels)):
            for key, style in zip(keys, ('-', '--')):
                x, y = series(run, summary_key(run, key))
                ax.plot(x, y, style, color=colours[i % len(colours)], label=label if style == '-' else None)
        if title == 'max |x|':
            ax.axhline(FP16_MAX, color='grey', lw=0.8, ls=':', label='fp16 max')
        ax.set(title=title, xlabel='iteration', yscale='log' if log else 'linear')
        ax.grid(alpha=0.3)
        ax.legend(title=legend_title, fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'dynamics.png', dpi=120)
    plt.close(fig)


def plot_depth(run, label, out):
    """Magnitude and entropy of every recorded block (or group) vs iteration, coloured by depth."""
    layers = [layer for layer in run['records'][0]['layers'] if layer['kind'] == run['kind']]
    cmap = plt.get_cmap('viridis')
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout='constrained')
    iters = [r['iter'] for r in run['records']]
    for layer in layers:
        colour = cmap(layer['index'] / max(len(layers) - 1, 1))
        values = [next(x for x in r['layers'] if x['name'] == layer['name']) for r in run['records']]
        axes[0].plot(iters, [v['magnitude'] for v in values], color=colour)
        axes[1].plot(iters, [v['entropy_norm'] for v in values], color=colour)
    fig.suptitle(label)
    axes[0].set(title=f'feature magnitude (mean $x^2$) per {run["kind"]}', xlabel='iteration', yscale='log')
    axes[1].set(title=f'channel entropy / log C per {run["kind"]}', xlabel='iteration')
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(layers) - 1))
    fig.colorbar(sm, ax=axes, label=f'{run["kind"]} depth')
    fig.savefig(out / f"depth_{run['name']}.png", dpi=120)
    plt.close(fig)


def summary_table(runs, labels):
    """Markdown table, one row per run and layer kind (blocks, residual groups): magnitude and entropy at the
    first and the last probe, their peak / lowest value, final max |x| and bias correlation."""
    rows = ['| run | norm · arch | layers | last iter | magnitude max: first → final (peak @ iter) | '
            'magnitude median, final | max abs, final | entropy/logC min: first → final (lowest @ iter) | '
            'entropy/logC median, final | bias corr, final |',
            '|---|---|---|---|---|---|---|---|---|---|']
    for run, label in zip(runs, labels):
        first, final, last = run['summaries'][0], run['summaries'][-1], run['records'][-1]['iter']
        corr = final[CORR_KEY]
        for k in ('block', 'group'):
            if f'{k}_magnitude_max' not in final:
                continue
            peak_iter, peak = max(zip(*series(run, f'{k}_magnitude_max')), key=lambda p: p[1])
            low_iter, low = min(zip(*series(run, f'{k}_entropy_norm_min')), key=lambda p: p[1])
            rows.append(f"| {run['name']} | {label} | {k}s | {last} | {first[f'{k}_magnitude_max']:.4g} → "
                        f"{final[f'{k}_magnitude_max']:.4g} ({peak:.4g} @ {peak_iter}) | "
                        f"{final[f'{k}_magnitude_median']:.4g} | {final[f'{k}_max_abs_max']:.4g} | "
                        f"{first[f'{k}_entropy_norm_min']:.4f} → {final[f'{k}_entropy_norm_min']:.4f} "
                        f"({low:.4f} @ {low_iter}) | {final[f'{k}_entropy_norm_median']:.4f} | "
                        f"{'n/a' if corr is None else f'{corr:.3f}'} |")
    return '\n'.join(rows) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help='experiment folders holding analysis.jsonl')
    parser.add_argument('--out', required=True, help='folder for the PNG figures and summary.md')
    parser.add_argument('--per-depth', action='store_true', help='also plot every block depth, one figure per run')
    args = parser.parse_args(argv)
    runs = [load_run(folder) for folder in args.runs]
    labels = label_runs(runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_dynamics(runs, labels, out)
    if args.per_depth:
        for run, label in zip(runs, labels):
            plot_depth(run, label, out)
    (out / 'summary.md').write_text(summary_table(runs, labels), encoding='utf-8')
    print(f'wrote {out / "dynamics.png"} and {out / "summary.md"}')


if __name__ == '__main__':
    main()
