"""Distributed initialisation that works on GPUs (nccl) and CPU-only machines (gloo).

Why not ``basicsr.utils.dist_util.init_dist``: it always calls ``torch.cuda.set_device`` and
defaults to nccl, so it fails on machines without CUDA. Ours follows the device the run trains on
(option ``num_gpu``), not the hardware: a CPU run on a machine with GPUs uses gloo.
"""
import os
import subprocess

import torch
import torch.distributed as dist

from .errors import ConfigError


def default_backend(on_cuda):
    """The process-group backend for a run that trains on CUDA devices (nccl) or on CPU (gloo)."""
    return 'nccl' if on_cuda else 'gloo'


def init_dist(launcher, num_gpu, backend=None, port=None, **kwargs):
    """Initialise the process group for ``--launcher pytorch`` (torchrun) or ``slurm``.

    ``num_gpu`` is the resolved option (``auto`` already replaced by the GPU count): the run trains on
    CUDA devices when it is above 0 and on CPU when it is 0, even on a machine with GPUs.
    ``backend`` (option ``dist_params.backend``) defaults to nccl for a run on CUDA devices and gloo for
    one on CPU (nccl cannot all-reduce CPU tensors). A run on CUDA devices puts each process on the GPU
    of its local rank, whatever the backend (gloo on GPUs would otherwise put every process on GPU 0);
    a run on CPU never selects a CUDA device.
    """
    on_cuda = num_gpu > 0
    backend = backend or default_backend(on_cuda)
    if backend == 'nccl' and not on_cuda:
        if torch.cuda.is_available():
            cause, or_gpus = "option 'num_gpu' is 0", ", or set 'num_gpu' to auto or a GPU count"
        else:
            cause, or_gpus = 'CUDA is not available', ''
        raise ConfigError(f"option 'dist_params.backend' is 'nccl' but the run trains on CPU ({cause}): nccl needs "
                          "CUDA devices; set 'dist_params.backend: gloo' or remove it (gloo is chosen for CPU runs)"
                          f"{or_gpus}")
    if launcher == 'slurm':
        _set_env_from_slurm(port)
    elif launcher != 'pytorch':
        raise ValueError(f"Unknown launcher '{launcher}'. Valid: none, pytorch, slurm.")
    if on_cuda:
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
    dist.init_process_group(backend=backend, **kwargs)


def is_dist():
    return dist.is_available() and dist.is_initialized()


def broadcast_from_rank0(obj):
    """Rank 0's ``obj`` on every rank (``obj`` itself without a process group)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_rank0(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` on rank 0 and None elsewhere; ``[obj]`` without a process group."""
    if not is_dist():
        return [obj]
    objs = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, objs, dst=0)
    return objs


def all_gather(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank; ``[obj]`` without a process group."""
    if not is_dist():
        return [obj]
    objs = [None] * dist.get_world_size()
    dist.all_gather_object(objs, obj)
    return objs


def _summed_over_processes(tensor):
    total = tensor.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(total)
    return total


class _DifferentiableAllReduce(torch.autograd.Function):
    """Every process's output is the sum of all inputs, so an input's gradient is the sum of all outputs'.

    Ours, not ``torch.distributed.nn.functional.all_reduce``: that one is deprecated (a FutureWarning) and
    its suggested replacement is private API.
    """

    @staticmethod
    def forward(ctx, tensor):
        return _summed_over_processes(tensor)

    @staticmethod
    def backward(ctx, grad):
        return _summed_over_processes(grad)


def differentiable_all_reduce(tensor):
    """Sum of ``tensor`` over all processes (every process must call this), with autograd."""
    return _DifferentiableAllReduce.apply(tensor)


def close_dist():
    """Destroy the process group at the end of a CLI run (torch warns about a leaked one)."""
    if is_dist():
        dist.destroy_process_group()


def _set_env_from_slurm(port):
    """torchrun-style environment from SLURM's (one task per device)."""
    proc_id = int(os.environ['SLURM_PROCID'])
    ntasks = int(os.environ['SLURM_NTASKS'])
    node_list = os.environ['SLURM_NODELIST']
    tasks_per_node = int(os.environ.get('SLURM_NTASKS_PER_NODE', '1').split('(')[0])
    os.environ['MASTER_ADDR'] = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1')
    os.environ['MASTER_PORT'] = str(port) if port is not None else os.environ.get('MASTER_PORT', '29500')
    os.environ['WORLD_SIZE'] = str(ntasks)
    os.environ['RANK'] = str(proc_id)
    os.environ['LOCAL_RANK'] = str(int(os.environ.get('SLURM_LOCALID', proc_id % tasks_per_node)))
