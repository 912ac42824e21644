"""Flush-to-zero of denormal floats on the CPU, and a check that it reached every intra-op thread.

Why: the shifted-window mask adds -100 (the released models' value) to cross-region logits, so about a
tenth of a training step's softmax outputs are denormal (below 1.2e-38). x86 CPUs compute on those
through microcode assists, many times slower than on normal floats. Flushing them to zero changes only
values below 1.2e-38; GPUs run denormals at full speed, so this is a CPU matter only (measured effect:
docs/benchmarks.md).

The x86 flag (MXCSR) is per thread: torch sets it on the calling thread, and threads inherit it when
they are created. Intra-op (OpenMP) threads started before it was set keep computing on denormals, so
the CLIs set it before their first parallel op, and ``set_denormal_flushing`` checks the result.
"""
import logging
from dataclasses import dataclass

import torch


def denormals_kept():
    """Fraction of a multiply spread over all intra-op threads whose denormal results were kept: 0.0 when
    every thread flushes, 1.0 when none does."""
    size = max(1 << 20, torch.get_num_threads() << 16)  # a chunk for every thread (grain: 32,768 elements)
    product = torch.full((size,), 1e-30) * 1e-10  # 1e-40 in float32: denormal, or zero where flushed
    return (product != 0).float().mean().item()


@dataclass(frozen=True)
class DenormalReport:
    """What ``set_denormal_flushing`` did, as one run-log line."""
    message: str
    complete: bool

    def log(self, logger):
        logger.log(logging.INFO if self.complete else logging.WARNING, self.message)


def set_denormal_flushing(flush):
    """Flush denormals to zero on the CPU (``flush``), or compute on them (torch's default)."""
    if not flush:
        torch.set_flush_denormal(False)
        return DenormalReport('Denormal floats are kept on the CPU (flush_denormal: false).', True)
    if not torch.set_flush_denormal(True):
        return DenormalReport('flush_denormal: this CPU cannot flush denormal floats to zero (torch needs x86 '
                              'SSE3); CPU steps compute on them.', False)
    kept = denormals_kept()
    if kept:
        return DenormalReport(
            f'flush_denormal: {kept:.0%} of a parallel multiply still kept denormal floats: the intra-op threads '
            'were started before flushing was set (torch work before the CLI ran) and keep computing on them. '
            'Set torch.set_flush_denormal(True) before any torch work, or run the CLI in a fresh process.', False)
    threads = torch.get_num_threads()
    return DenormalReport(f"Denormal floats are flushed to zero on the CPU, in {'each of the ' if threads > 1 else ''}"
                          f"{threads} intra-op thread{'s' if threads > 1 else ''} (flush_denormal: true).", True)


def add_keep_denormals_argument(parser):
    """``--keep-denormals`` of the CLIs without an option file (infer, tables, benchmarks)."""
    parser.add_argument('--keep-denormals', action='store_true', help="compute on denormal floats on the CPU "
                        "(torch's default; without it they are flushed to zero, as the train and test CLIs do)")


def flush_unless_kept(args):
    """``set_denormal_flushing`` as ``--keep-denormals`` says, with a note on stdout when a thread missed it."""
    report = set_denormal_flushing(not args.keep_denormals)
    if not report.complete:
        print(f'note: {report.message}')
    return report
