"""Distributed initialisation that works on GPUs (nccl) and CPU-only machines (gloo).

Why not ``basicsr.utils.dist_util.init_dist``: it always calls ``torch.cuda.set_device`` and
defaults to nccl, so it fails on machines without CUDA.
"""
import os
import subprocess

import torch
import torch.distributed as dist


def default_backend():
    return 'nccl' if torch.cuda.is_available() else 'gloo'


def init_dist(launcher, backend=None, port=None, **kwargs):
    """Initialise the process group for ``--launcher pytorch`` (torchrun) or ``slurm``.

    ``backend`` (option ``dist_params.backend``) defaults to nccl with CUDA, else gloo. With CUDA,
    each process uses the GPU of its local rank.
    """
    backend = backend or default_backend()
    if launcher == 'slurm':
        _set_env_from_slurm(port)
    elif launcher != 'pytorch':
        raise ValueError(f"Unknown launcher '{launcher}'. Valid: none, pytorch, slurm.")
    if torch.cuda.is_available() and backend == 'nccl':
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count())
    dist.init_process_group(backend=backend, **kwargs)


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
