"""Training CLI: ``python basicsr_iln/train.py -opt OPT.yml`` (or ``basicsr-iln-train``).

BasicSR's training loop and option layout, with our option checks, CPU/gloo-capable distributed
setup, resume that works without CUDA and skips incomplete checkpoints, and clear errors. A resumed
run continues where the checkpoint left off, mid-epoch included: with ``num_worker_per_gpu: 0`` it
trains exactly as the uninterrupted run would have (same batches, same random streams).
"""
import copy
import datetime
import itertools
import math
import sys
import time
from os import path as osp

if __package__ in (None, ''):  # run as a script: make the repository importable
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import basicsr_iln  # noqa: E402,F401  (registers everything, makes basicsr importable)
import torch  # noqa: E402
from basicsr.data import build_dataloader  # noqa: E402
from basicsr.data.data_sampler import EnlargedSampler  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.train import init_tb_loggers  # noqa: E402
from basicsr.utils import AvgTimer  # noqa: E402

from basicsr_iln.analysis import build_dynamics_recorder  # noqa: E402
from basicsr_iln.data.prefetch import SideStreamCopy, epoch_batches  # noqa: E402
from basicsr_iln.utils.batching import describe_global_batch, micro_batches_per_step, process_batch  # noqa: E402
from basicsr_iln.utils.checkpoint import prepare_resume, remove_stale_temporaries, resume_position  # noqa: E402
from basicsr_iln.utils.checks import (build_dataset_checked, check_checkpoint_path, check_datasets,  # noqa: E402
                                      check_writable_folder)
from basicsr_iln.utils.console import ProgressLogger, open_run_log  # noqa: E402
from basicsr_iln.utils.denormals import set_denormal_flushing  # noqa: E402
from basicsr_iln.utils.dist import close_dist  # noqa: E402
from basicsr_iln.utils.errors import ConfigError, UserFacingError, run_cli  # noqa: E402
from basicsr_iln.utils.run_folders import NewRunFolders  # noqa: E402
from basicsr_iln.utils.options import parse_options, root_path_from_env, write_resolved_options  # noqa: E402


class ResumableSampler(EnlargedSampler):
    """EnlargedSampler that can start an epoch part-way (``skip`` samples): a run resumed mid-epoch
    trains on the batches the interrupted run would have trained on next (BasicSR restarts the epoch)."""
    skip = 0

    def set_epoch(self, epoch, skip=0):
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self):
        return self.num_samples - self.skip


def global_batches(batches, steps, micro_batches):
    """For each of ``steps`` optimizer steps, the list of its ``micro_batches`` consecutive ``batches``.

    The micro-batches left at the end of an epoch (fewer than a step needs) are never loaded, as the
    loader never loads its incomplete last batch: a run with 2 x 2 micro-batches then sees the very
    samples (and augmentation random draws) of a run with batch 4.
    """
    for _ in range(steps):
        yield [next(batches) for _ in range(micro_batches)]


def create_dataloaders(opt, logger, micro_batches):
    """Loaders, the sampler, and (steps per epoch, epochs, total steps); a step takes ``micro_batches`` batches."""
    train_loader = train_sampler = None
    val_loaders = []
    for phase, dataset_opt in opt['datasets'].items():
        if phase == 'train':
            enlarge = dataset_opt.get('dataset_enlarge_ratio', 1)
            train_set = build_dataset_checked(dataset_opt, phase)
            batch = process_batch(opt)[0] * opt['world_size'] * micro_batches
            if len(train_set) * enlarge < batch:
                raise ConfigError(f'datasets.train: the global batch (batch_size_per_gpu x world size x accumulated '
                                  f'micro-batches) = {batch} is larger than the {len(train_set)} training images '
                                  f'(x dataset_enlarge_ratio {enlarge})')
            train_sampler = ResumableSampler(train_set, opt['world_size'], opt['rank'], enlarge)
            # Page-locked memory is for copies to a GPU: a CPU run would only get torch's warning that it has none.
            dataset_opt = {**dataset_opt, 'pin_memory': bool(dataset_opt.get('pin_memory')) and opt['num_gpu'] > 0}
            train_loader = build_dataloader(train_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                            sampler=train_sampler, seed=opt['manual_seed'])
            # Iterating a loader draws a seed from the global torch RNG; with its own generator, the
            # training stream (dropout, drop-path) does not depend on where an epoch started. Offset by
            # rank, like the augmentation seeds, so worker torch seeds differ between ranks.
            train_loader.generator = torch.Generator().manual_seed(opt['manual_seed'] + opt['rank'])
            iters_per_epoch = len(train_loader) // micro_batches  # optimizer steps; incomplete ones are dropped
            total_iters = int(opt['train']['total_iter'])
            total_epochs = math.ceil(total_iters / iters_per_epoch)
            logger.info(f'Training: {len(train_set)} images x{enlarge}, batch {dataset_opt["batch_size_per_gpu"]} per '
                        f'process x {opt["world_size"]} processes, {iters_per_epoch} iters/epoch, '
                        f'{total_epochs} epochs for {total_iters} iters.')
        else:
            val_set = build_dataset_checked(dataset_opt, phase)
            val_loaders.append(build_dataloader(val_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                                sampler=None, seed=opt['manual_seed']))
            logger.info(f'Validation set {dataset_opt["name"]}: {len(val_set)} images.')
    return train_loader, train_sampler, val_loaders, (iters_per_epoch, total_epochs, total_iters)


def start_run(opt, args, resolved, micro_batches, folders):
    """Folders, logs, data loaders, model and dynamics recorder of a run: everything before the first step."""
    if folders is not None:
        folders.create()
    if opt['rank'] == 0:  # the only writer: other ranks never touch the experiment folder
        write_resolved_options(resolved, opt['path']['experiments_root'], args.opt)
    logger = open_run_log(opt, 'train')
    tb_logger = init_tb_loggers(opt)
    logger.info(describe_global_batch(opt, micro_batches))
    loaders = create_dataloaders(opt, logger, micro_batches)
    model = build_model(opt)
    record_dynamics = build_dynamics_recorder(opt, model, loaders[2], tb_logger)  # no-op unless `analysis`
    return logger, tb_logger, loaders, model, record_dynamics


def train_pipeline(root_path, argv=None):
    opt, args = parse_options(root_path, is_train=True, argv=argv)
    denormals = set_denormal_flushing(opt['flush_denormal'])  # before any parallel op: threads inherit it
    opt['root_path'] = root_path
    micro_batches = micro_batches_per_step(opt)
    check_datasets(opt)
    check_writable_folder(opt['path']['experiments_root'], 'experiment')
    torch.backends.cudnn.benchmark = True

    resolved = copy.deepcopy(opt)  # saved below as the run's options; resuming re-points path.* at the checkpoint
    resume_state = prepare_resume(opt)
    check_checkpoint_path(opt)
    folders = NewRunFolders(opt, root_path) if resume_state is None else None
    try:
        logger, tb_logger, loaders, model, record_dynamics = start_run(opt, args, resolved, micro_batches, folders)
    except UserFacingError:
        if folders is not None:
            folders.undo()
        raise
    denormals.log(logger)
    train_loader, train_sampler, val_loaders, (iters_per_epoch, total_epochs, total_iters) = loaders
    start_epoch, skip, current_iter = 0, 0, 0
    if resume_state is not None:
        model.resume_training(resume_state)
        start_epoch, skip = resume_position(resume_state, iters_per_epoch)
        current_iter = resume_state['iter']
        logger.info(f'Resuming training from epoch {start_epoch}, iter {current_iter} ({skip} batches into the '
                    'epoch).')
        if opt['rank'] == 0:
            for path in remove_stale_temporaries(opt['path']['models'], opt['path']['training_states']):
                logger.info(f'Removed {path}: an unfinished checkpoint write of the interrupted run.')

    msg_logger = ProgressLogger(opt, current_iter, tb_logger)
    to_gpu = SideStreamCopy(model.device) if opt['datasets']['train'].get('prefetch_mode') == 'cuda' else None

    logger.info(f'Start training from epoch {start_epoch}, iter {current_iter}.')
    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    val_opt = opt.get('val')
    epoch = start_epoch
    for epoch in range(start_epoch, total_epochs + 1):
        if current_iter >= total_iters:
            break
        train_sampler.set_epoch(epoch, skip * micro_batches * process_batch(opt)[0])
        steps = min(iters_per_epoch - skip, total_iters - current_iter)
        skip = 0
        batches = epoch_batches(train_loader, steps * micro_batches, to_gpu)
        for step_data in global_batches(batches, steps, micro_batches):
            data_timer.record()
            current_iter += 1  # one iteration = one optimizer step
            model.update_learning_rate(current_iter, warmup_iter=opt['train'].get('warmup_iter', -1))
            for micro_batch in step_data[:-1]:
                model.feed_data(micro_batch)
                model.accumulate_gradients()
            model.feed_data(step_data[-1])
            model.optimize_parameters(current_iter)
            iter_timer.record()
            record_dynamics(current_iter)  # outside the timed step
            if current_iter == 1:
                msg_logger.reset_start_time()
            if current_iter % opt['logger']['print_freq'] == 0:
                log_vars = {'epoch': epoch, 'iter': current_iter, 'lrs': model.get_current_learning_rate(),
                            'time': iter_timer.get_avg_time(), 'data_time': data_timer.get_avg_time()}
                log_vars.update(model.get_current_log())
                msg_logger(log_vars)
            if current_iter % opt['logger']['save_checkpoint_freq'] == 0:
                logger.info('Saving models and training states.')
                model.save(epoch, current_iter)
            if val_opt is not None and current_iter % val_opt['val_freq'] == 0:
                for val_loader in val_loaders:
                    model.validation(val_loader, current_iter, tb_logger, val_opt.get('save_img', False))
            data_timer.start()
            iter_timer.start()

    logger.info(f'End of training. Time consumed: {datetime.timedelta(seconds=int(time.time() - start_time))}')
    logger.info('Save the latest model.')
    model.save(epoch=-1, current_iter=-1)
    if val_opt is not None and current_iter % val_opt['val_freq'] != 0:  # not validated at this iter yet
        for val_loader in val_loaders:
            model.validation(val_loader, current_iter, tb_logger, val_opt.get('save_img', False))
    if tb_logger:
        tb_logger.close()
    close_dist()
    return opt


def main(argv=None):
    run_cli(lambda a: train_pipeline(root_path_from_env(), a), argv)


if __name__ == '__main__':
    main()
