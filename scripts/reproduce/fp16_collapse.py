#!/usr/bin/env python
"""The paper's fp16 finding at CPU scale: LN's activations leave the fp16 range, i-LN's do not.

    python scripts/reproduce/fp16_collapse.py --out docs/fp16_collapse

The pipeline of ``cpu_dynamics.py`` (its data preparation, option builders and the real train/test
CLIs), with the setting chosen to drive LN's largest activation up fastest. The growth is
multiplicative over residual groups (docs/dynamics: x5-7 per group after 1500 iterations with 4
groups of 4 blocks, largest |x| 1777), so the same 16 blocks are arranged as 8 groups of 2.

LN and i-LN train side by side, checkpointing every ``--ckpt-freq`` iterations, until

* LN's probe records max |x| > 65504 (the fp16 limit) at some layer: both then run on to the next
  checkpoint iteration and stop; or
* the ``--budget-min`` time budget is spent, or ``--iters`` is reached.

Both networks are evaluated at the last iteration for which both have a checkpoint, in fp32, bf16
and fp16 (the test CLI's ``--precision``: the network is cast), on the ``--benchmarks``. The evaluation
is the test CLI's, untouched by this script. Written into ``--out`` as the run goes (a run cut short
still leaves its records): ``data/<run>/analysis.jsonl``; at the end ``fp16_collapse.png``,
``results.md`` (crossing, growth per group and per iteration, the extrapolation when the limit is
not reached, clearly marked), ``validation.md`` and ``run.md``.
"""
import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_dynamics  # noqa: E402

REPO = cpu_dynamics.REPO
FP16_MAX = 65504.0


def read_records(experiment):
    """Probe records of a run, by iteration (a repeated iteration: the last one wins)."""
    path = experiment / 'analysis.jsonl'
    records = {}
    if path.is_file():
        for line in path.read_text(encoding='utf-8').splitlines():
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line being written
                    continue
                records[record['iter']] = record
    return [records[i] for i in sorted(records)]


def largest(record):
    """(max |x| over every probed layer, that layer's name)."""
    layer = max(record['layers'], key=lambda item: item['max_abs'])
    return layer['max_abs'], layer['name']


def group_max(record):
    """[max |x| of each residual-group output], in depth order."""
    return [layer['max_abs'] for layer in record['layers'] if layer['kind'] == 'group']


def checkpoints(experiment):
    return {int(p.stem.split('_')[-1]) for p in (experiment / 'models').glob('net_g_*.pth')
            if p.stem.split('_')[-1].isdigit()}


def train_until_stop(args, runs, out):
    """Train every run side by side; stop by the rule in the module docstring. (stop reason, iteration
    evaluated, {run: wall seconds})."""
    procs = {}
    logs = Path(args.workdir) / 'experiments' / 'fp16_collapse_logs'
    logs.mkdir(parents=True, exist_ok=True)
    for opt in runs.values():
        cmd, env = cpu_dynamics.cli('train', opt, args)
        log = open(logs / f"train_{opt['name']}.log", 'w')
        print(f'[{time.strftime("%H:%M:%S")}] start {opt["name"]}', flush=True)
        procs[opt['name']] = (subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log)
    start, reason, target = time.time(), None, None
    experiments = {name: Path(args.workdir) / 'experiments' / name for name in procs}
    ln_name = runs['ln']['name']
    while True:
        time.sleep(1)
        for name, experiment in experiments.items():
            if (experiment / 'analysis.jsonl').is_file():
                cpu_dynamics.keep_records(experiment, out)
        records = read_records(experiments[ln_name])
        if target is None and records and largest(records[-1])[0] > FP16_MAX:
            crossing = records[-1]['iter']
            target = -(-crossing // args.ckpt_freq) * args.ckpt_freq
            reason = f'LN max |x| passed {FP16_MAX:g} at iteration {crossing}'
            print(f'[{time.strftime("%H:%M:%S")}] {reason}; stopping at checkpoint {target}', flush=True)
        common = set.intersection(*(checkpoints(e) for e in experiments.values()))
        finished = [name for name, (proc, _) in procs.items() if proc.poll() is not None]
        failed = [name for name in finished if procs[name][0].returncode != 0]
        if failed:
            reason = f'{failed[0]} exited with {procs[failed[0]][0].returncode} (see {logs})'
        elif target is not None and target in common:
            pass
        elif len(finished) == len(procs):
            reason = reason or f'--iters {args.iters} reached'
        elif time.time() - start > args.budget_min * 60:
            reason = (reason or 'no crossing') + f'; time budget of {args.budget_min} min spent'
        else:
            continue
        break
    for proc, log in procs.values():
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
        log.close()
    wall = time.time() - start
    common = set.intersection(*(checkpoints(e) for e in experiments.values()))
    if not common:
        raise SystemExit(f'no iteration with a checkpoint of every run ({reason}); see {logs}')
    evaluated = target if target in common else max(common)
    print(f'[{time.strftime("%H:%M:%S")}] stopped: {reason}; evaluating iteration {evaluated}', flush=True)
    return reason, evaluated, wall


def evaluate(args, roots, runs, iteration):
    commands = []
    for opt in runs.values():
        test_opt = cpu_dynamics.test_options(args, roots, opt)
        test_opt['path']['pretrain_network_g'] = str(Path(args.workdir) / 'experiments' / opt['name'] / 'models' /
                                                     f'net_g_{iteration}.pth')
        commands.append((f"test_{opt['name']}", *cpu_dynamics.cli('test', test_opt, args, '--precision',
                                                                   args.precisions)))
    return cpu_dynamics.run_all(commands, args.jobs, Path(args.workdir) / 'experiments' / 'fp16_collapse_logs')


def growth(records, last_iter):
    """(geometric-mean factor per residual group, per-1000-iteration factor of the largest |x|), both measured
    at or before ``last_iter``: per group over the final record's group outputs, per iteration by a
    least-squares line through log(max |x|) over the second half of the records."""
    records = [r for r in records if r['iter'] <= last_iter]
    groups = group_max(records[-1])
    per_group = (groups[-1] / groups[0]) ** (1 / (len(groups) - 1))
    tail = records[len(records) // 2:]
    xs = [r['iter'] for r in tail]
    ys = [math.log(largest(r)[0]) for r in tail]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    return per_group, math.exp(1000 * slope)


def results_table(args, runs, reason, iteration):
    """Markdown: the stop, the largest |x| reached per run and the growth rates; the extrapolation if LN stayed
    inside the fp16 range."""
    lines = [f'Stop: {reason}. Both networks are evaluated at iteration **{iteration}** '
             '(the last one with a checkpoint of both).\n',
             '| run | largest max \\|x\\| (iter, layer) | at evaluated iter | per-group factor | per-1000-iter factor |'
             ' group outputs max \\|x\\|, evaluated iter |', '|---|---|---|---|---|---|']
    extrapolation = ''
    for norm, opt in runs.items():
        records = read_records(Path(args.workdir) / 'experiments' / opt['name'])
        peak = max(records, key=lambda r: largest(r)[0])
        at_eval = [r for r in records if r['iter'] <= iteration][-1]
        per_group, per_kiter = growth(records, iteration)
        value, layer = largest(peak)
        lines.append(f"| {opt['name']} | {value:.4g} (iter {peak['iter']}, `{layer}`) | {largest(at_eval)[0]:.4g} | "
                     f"x{per_group:.2f} | x{per_kiter:.2f} | {', '.join(f'{v:.3g}' for v in group_max(at_eval))} |")
        if norm == 'ln' and value <= FP16_MAX:
            more_groups = math.log(FP16_MAX / value) / math.log(per_group) if per_group > 1 else math.inf
            more_kiters = math.log(FP16_MAX / value) / math.log(per_kiter) if per_kiter > 1 else math.inf
            extrapolation = (
                f'\n**Extrapolation (not measured).** LN stayed inside the fp16 range: its largest |x| was '
                f'{value:.4g}, {FP16_MAX / value:.1f}x below 65504. At the measured rates it would pass the limit '
                f'with about {more_groups:.1f} more residual groups of this kind, or after about '
                f'{more_kiters:.1f}k more iterations (if the per-iteration rate held). The paper\'s networks '
                '(HAT: 6 groups of 6 blocks, 500k iterations) are far past both.\n')
    return '\n'.join(lines) + '\n' + extrapolation


def plot(args, runs, iteration, out):
    """fp16_collapse.png: largest |x| over training (with the fp16 limit), group outputs at the evaluated
    iteration, and PSNR per precision."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {'ln': 'tab:red', 'iln': 'tab:blue'}
    for norm, opt in runs.items():
        records = read_records(Path(args.workdir) / 'experiments' / opt['name'])
        axes[0].plot([r['iter'] for r in records], [largest(r)[0] for r in records], color=colours.get(norm),
                     label=norm)
        at_eval = [r for r in records if r['iter'] <= iteration][-1]
        groups = group_max(at_eval)
        axes[1].plot(range(1, len(groups) + 1), groups, 'o-', color=colours.get(norm), label=norm)
    for ax in axes[:2]:
        ax.axhline(FP16_MAX, color='k', ls='--', lw=1, label='fp16 max')
        ax.set_yscale('log')
        ax.legend()
    axes[0].axvline(iteration, color='grey', lw=0.8)
    axes[0].set(xlabel='iteration', ylabel='max |x| over probed layers', title='largest activation (probe: Set5)')
    axes[1].set(xlabel='residual group', ylabel='max |x| of the group output', title=f'by depth, iteration {iteration}')
    precisions = args.precisions.split(',')
    bars = []  # (label, colour, alpha, {precision: PSNR})
    for norm, opt in runs.items():
        path = Path(args.workdir) / 'results' / f"{opt['name']}_test" / 'metrics.jsonl'
        metrics = [json.loads(line) for line in path.read_text().splitlines()]
        for s, name in enumerate(dict.fromkeys(m['dataset'] for m in metrics)):
            bars.append((f'{norm} · {name}', colours.get(norm), 1.0 - 0.4 * s,
                         {m['precision']: m['psnr'] for m in metrics if m['dataset'] == name}))
    width = 0.8 / len(bars)
    for b, (label, colour, alpha, values) in enumerate(bars):
        xs = [p - 0.4 + (b + 0.5) * width for p in range(len(precisions))]
        heights = [values[p] if math.isfinite(values[p]) else 0.0 for p in precisions]
        axes[2].bar(xs, heights, width, color=colour, alpha=alpha, label=label)
        for x, p in zip(xs, precisions):
            if not math.isfinite(values[p]):
                axes[2].text(x, 0.5, 'NaN', rotation=90, ha='center', va='bottom', fontsize=8)
    axes[2].set_xticks(range(len(precisions)), precisions)
    axes[2].set(ylabel='PSNR (dB, Y)', title='Set5/Set14 evaluation, network cast')
    axes[2].legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(out / 'fp16_collapse.png', dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr-folder', default=str(cpu_dynamics.SHARED / 'train' / 'Sun_Hays80'))
    parser.add_argument('--benchmarks', nargs='+', default=[str(cpu_dynamics.SHARED / 'sr' / 'Set5'),
                                                            str(cpu_dynamics.SHARED / 'sr' / 'Set14')])
    parser.add_argument('--cache', default=str(REPO / 'datasets' / 'cache' / 'cpu_dynamics'))
    parser.add_argument('--workdir', default=str(REPO))
    parser.add_argument('--out', default=str(REPO / 'docs' / 'fp16_collapse'))
    parser.add_argument('--arch', default='swinir', choices=sorted(cpu_dynamics.ARCHS))
    parser.add_argument('--iters', type=int, default=6000, help='upper bound; the stop rule usually ends sooner')
    parser.add_argument('--budget-min', type=float, default=75, help='training time budget (minutes)')
    parser.add_argument('--ckpt-freq', type=int, default=100)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--patch', type=int, default=24)
    parser.add_argument('--embed-dim', type=int, default=48)
    parser.add_argument('--depths', type=int, nargs='+', default=[2] * 8)
    parser.add_argument('--heads', type=int, default=6)
    parser.add_argument('--window', type=int, default=8)
    parser.add_argument('--scale', type=int, default=2)
    parser.add_argument('--freq', type=int, default=50, help='probe every N iterations')
    parser.add_argument('--probe-images', type=int, default=5)
    parser.add_argument('--probe-crop', type=int, default=64)
    parser.add_argument('--precisions', default='fp32,bf16,fp16')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--jobs', type=int, default=2)
    args = parser.parse_args(argv)

    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    roots = cpu_dynamics.prepare_data(args)
    runs = {}
    for norm in ('ln', 'iln'):
        opt = cpu_dynamics.train_options(args, roots, args.arch, norm)
        opt['name'] = f'fp16_collapse_{args.arch}_{norm}_x{args.scale}'
        opt['logger']['save_checkpoint_freq'] = args.ckpt_freq
        runs[norm] = opt
    reason, iteration, train_wall = train_until_stop(args, runs, out)
    walls = {'train (both, side by side)': train_wall}
    walls.update(evaluate(args, roots, runs, iteration))
    for opt in runs.values():
        cpu_dynamics.keep_records(Path(args.workdir) / 'experiments' / opt['name'], out)
    (out / 'results.md').write_text('# fp16 collapse at CPU scale\n\n' + results_table(args, runs, reason, iteration))
    (out / 'validation.md').write_text(cpu_dynamics.validation_table(args, roots, [o['name'] for o in runs.values()]))
    plot(args, runs, iteration, out)
    (out / 'run.md').write_text(cpu_dynamics.run_report(args, walls, time.time() - start)
                                .replace('# CPU-scale dynamics run', '# fp16 collapse run'))
    print(f'wrote {out}/fp16_collapse.png, results.md, validation.md, run.md')


if __name__ == '__main__':
    main()
