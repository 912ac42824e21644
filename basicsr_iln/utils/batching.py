"""Global batch and gradient accumulation: the paper's global batch (16 = 2 x 8 GPUs) on any hardware.

``train.global_batch_size`` fixes the batch of one optimizer step; each process accumulates the
gradients of ``global_batch_size / (datasets.train.batch_size_per_gpu x world size)`` micro-batches
before stepping. Absent: one micro-batch per step (global batch = per-process batch x world size).
"""
from basicsr_iln.utils.errors import ConfigError
from basicsr_iln.utils.schema import read_option


def process_batch(opt):
    """(samples one process loads per micro-batch, how that is made up): BasicSR's loader multiplies
    batch_size_per_gpu by num_gpu for a single process driving several GPUs (DataParallel)."""
    per_gpu = opt['datasets']['train']['batch_size_per_gpu']
    gpus = opt['num_gpu'] if not opt['dist'] and opt['num_gpu'] > 1 else 1
    if gpus == 1:
        return per_gpu, f'datasets.train.batch_size_per_gpu {per_gpu}'
    return per_gpu * gpus, f'datasets.train.batch_size_per_gpu {per_gpu} x num_gpu {gpus} (one process)'


def micro_batches_per_step(opt):
    """Micro-batches each process accumulates per optimizer step (a positive integer, else ConfigError)."""
    global_batch = read_option(opt['train'], 'train.global_batch_size')
    if global_batch is None:
        return 1
    (per_process, made_of), world_size = process_batch(opt), opt['world_size']
    micro_batches, rest = divmod(global_batch, per_process * world_size)
    if rest or micro_batches == 0:
        raise ConfigError(f'train.global_batch_size {global_batch} is not a multiple of {made_of} x {world_size} '
                          'processes')
    return micro_batches


def describe_global_batch(opt, micro_batches):
    """The one log line saying how the global batch is made up."""
    per_process, world_size = process_batch(opt)[0], opt['world_size']
    return (f'global batch {per_process * world_size * micro_batches} = {per_process} per process x {world_size} '
            f'processes x {micro_batches} accumulated micro-batches')
