"""Training throughput of 1 process vs N DDP processes at the same per-process batch, side by side.

    python scripts/benchmark_ddp.py -opt options/quickstart/train_SwinIR_quickstart_x2_iln.yml --nproc 2

Every process builds the IRModel from the option file as the training CLI does (option parsing, process
group with the hardware's backend, DDP wrap) and times ``optimize_parameters`` (forward, backward,
gradient all-reduce, Adam, EMA, loss reduction; denormals flushed as ``flush_denormal`` says) on a fixed random batch of the option file's patch
size. Data loading, validation and checkpoints are left out: the numbers isolate compute and
communication. On CPU, both runs use all cores (threads per process = cores // processes) unless
``--threads`` fixes the threads per process (``--threads 1`` avoids multi-threading penalties when
other programs load the machine); on GPUs, one GPU per process. The two runs alternate ``--repeats`` times and the median is reported, so that
load from other programs biases neither; the load average is printed with it.
"""
import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from os import path as osp

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from basicsr_iln.train import build_model  # noqa: E402  (basicsr_iln before basicsr)
from basicsr_iln.utils.denormals import set_denormal_flushing  # noqa: E402
from basicsr_iln.utils.dist import close_dist  # noqa: E402
from basicsr_iln.utils.options import parse_options  # noqa: E402


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def sync(model):
    if model.device.type == 'cuda':
        torch.cuda.synchronize()
    if dist.is_initialized():
        dist.barrier()


def worker(rank, nproc, port, opt_path, iters, warmup, threads, results):
    torch.set_num_threads(threads)
    flags = []
    if nproc > 1:
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                          WORLD_SIZE=str(nproc))
        flags = ['--launcher', 'pytorch']
    opt, _ = parse_options(tempfile.gettempdir(), is_train=True, argv=['-opt', opt_path, *flags])
    set_denormal_flushing(opt['flush_denormal'])  # as the training CLI, before any parallel op
    opt['train'].pop('global_batch_size', None)  # timed: steps of one batch_size_per_gpu batch, no accumulation
    model = build_model(opt)
    data_opt, chans = opt['datasets']['train'], opt['network_g'].get('in_chans', 3)
    batch, gt_size = data_opt['batch_size_per_gpu'], data_opt['gt_size']
    gen = torch.Generator().manual_seed(rank)
    model.feed_data({'lq': torch.rand(batch, chans, gt_size // opt['scale'], gt_size // opt['scale'], generator=gen),
                     'gt': torch.rand(batch, chans, gt_size, gt_size, generator=gen)})
    for it in range(1, warmup + 1):
        model.optimize_parameters(it)
    sync(model)
    start = time.perf_counter()
    for it in range(warmup + 1, warmup + iters + 1):
        model.optimize_parameters(it)
    sync(model)
    if rank == 0:
        results.put((time.perf_counter() - start, batch, model.device.type, threads))
    close_dist()


def measure(nproc, args):
    """(iters/s, batch per process, device type, threads per process) of ``nproc`` processes."""
    ctx = mp.get_context('spawn')
    results = ctx.SimpleQueue()
    threads = args.threads or max(1, (os.cpu_count() or 1) // nproc)
    mp.spawn(worker, args=(nproc, free_port(), args.opt, args.iters, args.warmup, threads, results), nprocs=nproc)
    elapsed, batch, device, threads = results.get()
    return args.iters / elapsed, batch, device, threads


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', required=True, help='training option file (network, batch_size_per_gpu, gt_size)')
    parser.add_argument('--nproc', type=int, default=2, help='processes of the DDP run (compared with 1)')
    parser.add_argument('--iters', type=int, default=20, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=3, help='untimed iterations first')
    parser.add_argument('--threads', type=int, default=0, help='CPU threads per process (0: cores // processes)')
    parser.add_argument('--repeats', type=int, default=3, help='alternating runs of each; the median is shown')
    args = parser.parse_args()
    runs = {n: [] for n in (1, args.nproc)}
    for _ in range(args.repeats):
        for n, measured in runs.items():
            measured.append(measure(n, args))
    rows = []
    for n, measured in runs.items():
        iters_s = statistics.median(m[0] for m in measured)
        _, batch, device, threads = measured[0]
        rows.append((n, iters_s, iters_s * batch * n, device, threads))
    print(f'load average (1/5/15 min) after the runs: {os.getloadavg()}, {os.cpu_count()} cores')
    print(f"{'processes':>9} {'device':>6} {'threads/proc':>12} {'iters/s':>8} {'samples/s':>9}")
    for n, iters_s, samples_s, device, threads in rows:
        print(f'{n:>9} {device:>6} {threads:>12} {iters_s:>8.3f} {samples_s:>9.2f}')
    (_, it1, s1, *_), (n, itn, sn, *_) = rows
    print(f'{n} vs 1 process: iters/s x{itn / it1:.2f}, samples/s x{sn / s1:.2f} (ideal x1.00 and x{n}.00)')


if __name__ == '__main__':
    main()
