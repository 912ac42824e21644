"""Restoration model (SR, denoising, JPEG artifact removal) on top of BasicSR's SRModel.

What it changes, and why:
* networks are built with a clear error for unknown types / bad keyword arguments;
* DDP works on CPU (gloo) as well as on GPUs (BasicSR passes a CUDA device id unconditionally);
  ``train.sync_bn`` (default true) makes BatchNorm layers use all processes' batch statistics;
* the EMA network also averages BatchNorm running statistics (``model_ema``);
* checkpoints load with ``weights_only=True`` from any released layout (``.pth`` or ``.safetensors``),
  with one clear mismatch error, and are written atomically with the network config beside the
  weights (``network_config``: a load into a network built otherwise is refused); training states
  also hold the RNG states, so a resumed run continues the same random streams;
* batches are copied to the device without blocking (``feed_data``): from page-locked batches a step then
  has no host sync at all;
* training can run under bf16/fp16 autocast (``train.precision``; fp16 with a gradient scaler);
* option ``compile`` (true, or torch.compile arguments) compiles the trained network; checkpoints,
  EMA and evaluation use the original module, so saved keys and test-time shapes are unaffected;
* ``val.self_ensemble: true`` averages the outputs for the 8 flips/rotations at test time;
* Adam is fused by default (``get_optimizer``);
* a non-finite loss or gradient is detected (one fused norm reduction), logged with the iteration and
  the loss name (or the first parameter with a non-finite gradient), and the step skipped; with the
  fused Adam the step is skipped on the device and the checks read back with the log, so a step has no
  host sync (``optimize_parameters``); ``train.nonfinite_patience`` consecutive cases stop training with
  a clear error, so no checkpoint with NaN weights is ever written;
* ``train.grad_clip_norm`` clips the total gradient norm (logged as ``grad_norm`` before clipping);
  ``train.global_batch_size`` accumulates several micro-batches per optimizer step
  (``accumulate_gradients``, then ``optimize_parameters``; see utils/batching.py);
* test-time inference uses the EMA network if present (our architectures pad to the window
  multiple and crop back themselves), its images read by the set's ``num_worker_per_gpu`` workers;
  every validation appends its metrics to ``metrics.jsonl`` in the experiment / results folder, for
  summaries and tables;
* under DDP, validation/testing is split across ranks and gathered (see ``validation``), the
  non-finite decision is shared by all ranks, and every rank's RNG states are saved and restored.
"""
import contextlib
import json
import math
import os
import random
import sys
from collections import OrderedDict
from os import path as osp
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import MODEL_REGISTRY
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from basicsr_iln.analysis.precision import FLOAT_DTYPES, PrecisionNetwork
from basicsr_iln.archs.norms import BatchNorm
from basicsr_iln.utils.batching import micro_batches_per_step
from basicsr_iln.utils.checkpoint import atomic_torch_save, load_weights, prune_checkpoints
from basicsr_iln.utils.console import log_network
from basicsr_iln.utils.dist import all_gather, gather_to_rank0
from basicsr_iln.utils.errors import ConfigError, NonFiniteTrainingError
from basicsr_iln.utils.inference import restore
from basicsr_iln.utils.memory_format import image_memory_format, match_state_layouts, to_memory_format
from basicsr_iln.utils.network_config import NETWORK_CONFIG_KEY, check_network_builds, network_config
from basicsr_iln.utils.schema import read_option, resolve_option

FUSED_ADAM_DEVICES = ('cpu', 'cuda')  # where torch has a fused Adam kernel
MAX_PENDING_CHECKS = 100  # steps taken on the device whose checks are read back at the latest together


def precision_dtype(name, key):
    if name not in FLOAT_DTYPES:
        raise ConfigError(f"option '{key}' must be one of {', '.join(FLOAT_DTYPES)}, got {name!r}")
    return FLOAT_DTYPES[name]


def compile_network(net, compile_opt):
    """``torch.compile(net, **kwargs)`` for option ``compile: true`` or ``compile: {backend: eager, ...}``
    (checked against the schema here too: the model may get options that never went through the CLI).
    Static shapes unless ``dynamic: true``: torch's dynamic-shape tracing of these networks hangs in shape
    simplification once a third image size is seen, and training crops all have one size."""
    if compile_opt is False or compile_opt is None:
        return net
    kwargs = resolve_option('compile', compile_opt)
    kwargs = {} if kwargs is True else dict(kwargs)
    kwargs.setdefault('dynamic', read_option({}, 'compile.dynamic'))
    return torch.compile(net, **kwargs)


def training_input_size(opt):
    """The side of the network's training inputs (``datasets.train.gt_size`` / scale), or None when the
    training set does not crop."""
    gt_size = (opt['datasets'].get('train') or {}).get('gt_size')
    return None if gt_size is None else gt_size // opt.get('scale', 1)


def grad_clip_option(train_opt):
    """``train.grad_clip_norm`` as a float, or None (absent or null: no clipping)."""
    value = read_option(train_opt, 'train.grad_clip_norm')
    return None if value is None else float(value)


def adam_kwargs(params, kwargs):
    """``optim_g``'s Adam arguments, with ``fused: true`` unless they set ``fused`` or ``foreach``. Our choice:
    the same update as torch's default Adam in one kernel over all tensors instead of one chain of ops per
    tensor (862 of them for HAT), and it can skip a step on the device (``IRModel.optimize_parameters``)."""
    if {'fused', 'foreach'} & set(kwargs) or not all(p.device.type in FUSED_ADAM_DEVICES for p in params):
        return kwargs
    return {**kwargs, 'fused': True}


def gradient_norms(grads):
    """(total L2 norm, index of the first tensor whose norm is non-finite, else -1) of ``grads``, on their
    device, from one fused per-tensor reduction: no host sync, where a per-tensor ``isfinite`` check is one
    kernel and one sync per parameter (862 for HAT). The total is non-finite if any element is (or if it
    overflows float32, which needs elements of ~1e19: no usable step has them)."""
    if not grads:
        return torch.zeros(()), torch.full((), -1)
    norms = torch.stack(torch._foreach_norm(grads))
    bad = ~torch.isfinite(norms)
    return torch.linalg.vector_norm(norms), torch.where(bad.any(), bad.int().argmax(), -1)


class StepCheck(NamedTuple):
    """One optimizer step's checks, on the device: ``values`` holds its losses (``loss_names``), the total
    gradient norm and the index into ``param_names`` of the first parameter whose gradient norm is non-finite
    (-1: none)."""
    current_iter: int
    loss_names: tuple
    param_names: list
    values: torch.Tensor

    @property
    def grad_norm(self):
        return self.values[-2]

    @property
    def finite(self):
        return torch.isfinite(self.values[:-1]).all()


def rank_share_loader(dataset, rank, world_size):
    """Items rank, rank + world_size, ... of a validation / test set, one per batch, read ahead by the set's
    ``num_worker_per_gpu`` worker processes while the network runs (BasicSR's evaluation loaders have none)."""
    share = Subset(dataset, range(rank, len(dataset), world_size))
    return DataLoader(share, batch_size=1, shuffle=False, num_workers=dataset.opt.get('num_worker_per_gpu') or 0)


def show_progress(val_opt):
    """``val.pbar``; unset: a progress bar when the console is a terminal (not in redirected logs)."""
    pbar = read_option(val_opt, 'val.pbar')
    return sys.stderr.isatty() if pbar is None else pbar


def rng_states():
    np_state = np.random.get_state()
    return {
        'python': random.getstate(),
        'numpy': (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states):
    random.setstate(states['python'])
    name, keys, *rest = states['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(states['torch'])
    if states['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


@MODEL_REGISTRY.register()
class IRModel(SRModel):
    """Image restoration model: L1 (or any BasicSR loss) training with EMA, PSNR/SSIM validation."""
    eval_net = None  # a PrecisionNetwork once set_eval_precision was called (test CLI)
    pending_checks = ()  # StepChecks of steps taken on the device, not yet read back (none outside training)

    def __init__(self, opt):
        check_network_builds(opt['network_g'])  # a bad network_g as one line, not BasicSR's traceback
        self.channels_last = read_option(opt, 'channels_last')
        super().__init__(opt)

    def print_network(self, net):
        """The class and size on the console; BasicSR's dump of every layer in the log file only."""
        log_network(net, self.get_bare_model(net))

    def __init_subclass__(cls, **kwargs):
        """``validation`` does the work of BasicSR's (non)dist_validation, which it never calls: a subclass
        overriding those would be silently ignored, so it is refused."""
        super().__init_subclass__(**kwargs)
        ignored = [name for name in ('nondist_validation', 'dist_validation') if name in vars(cls)]
        if ignored:
            raise TypeError(f'{cls.__name__} overrides {", ".join(ignored)}, which IRModel never calls: '
                            'override validation (the whole pass) or _restore_one (one image) instead')

    def init_training_settings(self):
        super().init_training_settings()
        if hasattr(self, 'net_g_ema'):  # built by BasicSR, not through model_to_device
            to_memory_format(self.net_g_ema, self.channels_last)
        train_opt = self.opt['train']
        self.train_dtype = precision_dtype(train_opt.get('precision', 'fp32'), 'train.precision')
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.train_dtype == torch.float16)
        if self.train_dtype == torch.float16 and self.device.type == 'cpu':
            get_root_logger().warning(
                'train.precision is fp16 on the CPU: oneDNN computes fp16 convolution weight gradients with its '
                'reference kernel (ref:any), hundreds of times slower than fp32 or bf16 (docs/benchmarks.md, '
                '"fp16 training on CPU"). bf16 is the CPU\'s half precision; fp16 training is for GPUs.')
        self.nonfinite_patience = read_option(train_opt, 'train.nonfinite_patience')
        self.nonfinite_streak = 0
        self.grad_clip_norm = grad_clip_option(train_opt)
        self.micro_batches = micro_batches_per_step(self.opt)
        self.accumulated = 0  # micro-batches of the coming step whose gradients are already summed
        self.step_losses = OrderedDict()
        self.pending_checks = []

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        """BasicSR's optimizer, an Adam fused by default (``adam_kwargs``)."""
        params = list(params)
        return super().get_optimizer(optim_type, params, lr, **(adam_kwargs(params, kwargs) if optim_type == 'Adam'
                                                                  else kwargs))

    def feed_data(self, data):
        """SRModel.feed_data with non-blocking copies. From page-locked batches (``pin_memory: true``) the copy
        to the GPU is then queued behind the previous step instead of waiting for it to finish on the GPU (a
        host sync every step); from pageable memory torch copies synchronously either way."""
        self.lq = data['lq'].to(self.device, non_blocking=True, memory_format=image_memory_format(self.channels_last))
        if 'gt' in data:
            self.gt = data['gt'].to(self.device, non_blocking=True)

    def compute_losses(self):
        """Forward pass and the weighted losses, as an ordered dict name -> loss tensor."""
        losses = OrderedDict()
        self.output = self.net_g(self.lq)
        if self.cri_pix:
            losses['l_pix'] = self.cri_pix(self.output, self.gt)
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            for name, value in (('l_percep', l_percep), ('l_style', l_style)):
                if value is not None:
                    losses[name] = value
        return losses

    def accumulate_gradients(self):
        """Forward/backward of the fed micro-batch, adding its gradients to the coming step's: with
        ``train.global_batch_size``, train.py calls this for all but the last micro-batch of a step and
        ``optimize_parameters`` for the last. Under DDP the gradients stay local meanwhile (``no_sync``),
        so the step costs one all-reduce, as without accumulation."""
        ddp = self._ddp()
        local = ddp.no_sync() if ddp is not None else contextlib.nullcontext()
        with local:
            self._backward_micro_batch()

    def _backward_micro_batch(self):
        """Each loss is divided by the number of micro-batches, so that for mean-reduced losses the summed
        gradients (and the logged losses) are those of one batch as large as the global batch."""
        if self.accumulated == 0:
            self.optimizer_g.zero_grad(set_to_none=True)
            self.step_losses = OrderedDict()
        autocast = self.train_dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.train_dtype, enabled=autocast):
            losses = self.compute_losses()
        self.grad_scaler.scale(sum(losses.values()) / self.micro_batches).backward()
        for name, value in losses.items():
            self.step_losses[name] = self.step_losses.get(name, 0) + value.detach() / self.micro_batches
        self.accumulated += 1

    def optimize_parameters(self, current_iter):
        """Backward of the fed (last) micro-batch, then one optimizer step on the summed gradients: unscale
        (fp16), non-finite check, clipping (``train.grad_clip_norm``), step, EMA.

        With a fused Adam (the default) and no fp16 scaler the step has no host sync: a non-finite loss or
        gradient makes the fused kernel and the EMA skip the step on the device, and the step's checks are
        read back, logged and counted against ``train.nonfinite_patience`` when the log is read
        (``get_current_log``, every ``logger.print_freq`` iterations), before a checkpoint is saved, or
        after MAX_PENDING_CHECKS steps. Otherwise the checks are read back at once, and the host skips."""
        if self.accumulated != self.micro_batches - 1:
            raise RuntimeError(f'optimize_parameters after {self.accumulated} accumulate_gradients calls: a step '
                               f'of {self.micro_batches} micro-batches needs {self.micro_batches - 1}')
        self._backward_micro_batch()
        self.accumulated = 0
        self.grad_scaler.unscale_(self.optimizer_g)
        named = [(name, p.grad) for name, p in self.get_bare_model(self.net_g).named_parameters() if p.grad is not None]
        names, grads = [name for name, _ in named], [grad for _, grad in named]
        check = self._check_step(current_iter, names, grads)
        if self._skips_on_device():
            finite = check.finite
            self._clip(grads, check.grad_norm)
            self.optimizer_g.found_inf = (~finite).float()  # read by the fused kernel: 1.0 skips the step
            try:
                self.optimizer_g.step()
            finally:
                del self.optimizer_g.found_inf
            if self.ema_decay > 0:
                self.model_ema(decay=self.ema_decay, where=finite)
            self.pending_checks.append(check)
            if len(self.pending_checks) >= MAX_PENDING_CHECKS:
                self.report_checks()
            return
        [outcome] = self._report([check])
        if outcome == 'skip':
            self.optimizer_g.zero_grad(set_to_none=True)
            self.grad_scaler.update()  # fp16: closes the unscaled step (the next unscale_ would raise); backs off
            return
        if outcome == 'step':
            self._clip(grads, check.grad_norm)
        # 'overflow': fp16's routine overflow of the scaled gradients; the scaler skips the step and backs off.
        self.grad_scaler.step(self.optimizer_g)
        self.grad_scaler.update()
        if outcome == 'step' and self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _skips_on_device(self):
        """Whether a step can be skipped without reading its checks: the optimizer takes ``found_inf`` (fused
        Adam: not a state resumed from another implementation) and there is no fp16 scaler deciding on it."""
        return not self.grad_scaler.is_enabled() and all(g.get('fused') for g in self.optimizer_g.param_groups)

    def _check_step(self, current_iter, param_names, grads):
        """The step's ``StepCheck``, computed on the device. Under DDP the losses are averaged over the ranks by
        one all-reduce, so that every rank skips, rescales (fp16) and counts the non-finite streak alike (a
        non-finite loss on any rank makes the average non-finite); the gradients are already all-reduced."""
        losses = torch.stack([value.float().mean() for value in self.step_losses.values()])
        if self.opt['dist']:
            dist.all_reduce(losses)
            losses /= self.opt['world_size']
        grad_norm, first_bad = gradient_norms(grads)
        values = torch.cat([losses, grad_norm.reshape(1).to(losses), first_bad.reshape(1).to(losses)])
        return StepCheck(current_iter, tuple(self.step_losses), param_names, values)

    def _clip(self, grads, grad_norm):
        """``torch.nn.utils.clip_grad_norm_``'s scaling, by a factor computed on the device (1 below the limit)."""
        if self.grad_clip_norm is not None and grads:
            torch._foreach_mul_(grads, (self.grad_clip_norm / (grad_norm + 1e-6)).clamp(max=1.0))

    def report_checks(self):
        """Read back the checks of the steps taken on the device since the last report (one copy), log their
        non-finite steps and count them against ``train.nonfinite_patience``."""
        checks, self.pending_checks = self.pending_checks, []
        if checks:
            self._report(checks)

    def _report(self, checks):
        """Host side of ``checks`` (in step order): the log values of the last one, a warning for each skipped
        step, the non-finite streak; raises NonFiniteTrainingError once it reaches the patience. Returns each
        step's outcome: 'step', 'skip' (non-finite), or 'overflow' (fp16 scaler's routine overflow)."""
        rows = torch.stack([check.values for check in checks]).tolist()
        outcomes = []
        for check, (*loss_values, grad_norm, first_bad) in zip(checks, rows):
            losses = OrderedDict(zip(check.loss_names, loss_values))
            bad = [name for name, value in losses.items() if not math.isfinite(value)]
            if not bad and not math.isfinite(grad_norm):
                bad = ['gradients']
            self.log_dict = OrderedDict(losses)
            self.log_dict['grad_norm'] = grad_norm  # before clipping; under DDP, of the all-reduced gradients
            if bad == ['gradients'] and self.grad_scaler.is_enabled():
                outcomes.append('overflow')
            elif bad:
                outcomes.append('skip')
                where = ''
                if bad == ['gradients']:
                    where = (f', first in {check.param_names[int(first_bad)]}' if first_bad >= 0 else
                             ', finite but their total norm overflows float32')
                self._count_nonfinite(check.current_iter, bad, where)
            else:
                outcomes.append('step')
                self.nonfinite_streak = 0
        return outcomes

    def _count_nonfinite(self, current_iter, bad, where):
        self.nonfinite_streak += 1
        message = (f'non-finite {", ".join(bad)} at iter {current_iter} '
                   f'({self.nonfinite_streak} in a row{where}); step skipped')
        get_root_logger().warning(message)
        if self.nonfinite_streak >= self.nonfinite_patience:
            raise NonFiniteTrainingError(f'{message}; stopping after {self.nonfinite_patience} consecutive '
                                         'non-finite steps (option train.nonfinite_patience). The last '
                                         'checkpoint on disk is from before the divergence.')

    def get_current_log(self):
        """The last step's losses and ``grad_norm``, after reading back the pending steps' checks."""
        self.report_checks()
        return super().get_current_log()

    def model_to_device(self, net):
        net = to_memory_format(net.to(self.device), self.channels_last)
        if self.is_train and read_option(self.opt['train'], 'train.sync_bn') and self.opt['dist']:
            synchronized = BatchNorm.synchronize(net)
            if synchronized:
                get_root_logger().info(f'train.sync_bn: {synchronized} BatchNorm layers use the batch statistics '
                                       f"of all {self.opt['world_size']} processes.")
        if self.is_train and self.opt.get('compile') and hasattr(net, 'keep_shift_mask'):
            patch = training_input_size(self.opt)
            if patch is not None:  # the compiled graph then takes the patch's shift mask as an input
                net.keep_shift_mask((patch, patch))
        if self.opt['dist']:
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            net = DistributedDataParallel(
                net, device_ids=device_ids, find_unused_parameters=self.opt.get('find_unused_parameters', False))
        elif self.opt['num_gpu'] > 1:
            net = torch.nn.DataParallel(net)
        # Compiled around DDP, as torch documents: dynamo's DDPOptimizer then splits the graph at DDP's gradient
        # buckets, so each bucket's all-reduce overlaps the rest of the backward (a compiled module inside DDP
        # has one backward graph, whose gradients all become ready, and are all-reduced, at its end).
        return compile_network(net, self.opt.get('compile', False))

    def get_bare_model(self, net):
        """Also unwraps torch.compile: checkpoints, EMA and evaluation use the original module."""
        return super().get_bare_model(getattr(net, '_orig_mod', net))

    def _ddp(self):
        """net_g's DistributedDataParallel wrapper (inside torch.compile's), None without DDP."""
        net = getattr(self.net_g, '_orig_mod', self.net_g)
        return net if isinstance(net, DistributedDataParallel) else None

    @torch.no_grad()
    def model_ema(self, decay=0.999, where=None):
        """``net_g_ema = decay * net_g_ema + (1 - decay) * net_g`` for the parameters AND the floating-point
        buffers; other buffers (BatchNorm's num_batches_tracked) are copied; ``decay=0`` copies everything.
        ``where``: a bool tensor on the device; where false, nothing changes (a step skipped on the device).

        BasicSR averages parameters only, which leaves the EMA network's BatchNorm statistics at 0/1 while
        validation and testing run that network. Averaging them with the weights' decay (as timm's
        ModelEmaV2/V3) makes them describe the same window of iterates as the averaged weights. Non-persistent
        buffers are no state of the network (constants, the kept shift mask) and are left alone.
        """
        sources = self.get_bare_model(self.net_g).state_dict(keep_vars=True)
        averaged, copied = [], []
        for name, tensor in self.net_g_ema.state_dict(keep_vars=True).items():
            (averaged if tensor.is_floating_point() else copied).append((tensor, sources[name]))
        ema_tensors, net_tensors = zip(*averaged)
        ema_tensors, net_tensors = list(ema_tensors), list(net_tensors)
        if where is None:
            torch._foreach_lerp_(ema_tensors, net_tensors, 1 - decay)
        else:  # a tensor weight for lerp would be read back to the host; a step times 0 keeps the EMA exactly
            steps = torch._foreach_sub(net_tensors, ema_tensors)
            torch._foreach_mul_(steps, where.float() * (1 - decay))
            torch._foreach_add_(ema_tensors, steps)
        for tensor, source in copied:
            tensor.copy_(source if where is None else torch.where(where, source, tensor))

    def load_network(self, net, load_path, strict=True, param_key='params'):
        net = self.get_bare_model(net)
        load_weights(net, load_path, param_key=param_key, strict=strict, arch_desc=self._arch_desc(),
                     network_config=network_config(self.opt['network_g']))
        get_root_logger().info(f'Loaded {type(net).__name__} from {load_path} [{param_key}].')

    def _arch_desc(self):
        net_opt = self.opt['network_g']
        return net_opt['type'] + '(' + ', '.join(f'{k}={v}' for k, v in net_opt.items() if k != 'type') + ')'

    def save(self, epoch, current_iter):
        """SRModel.save (networks, then training state), after the pending steps' checks are read (a run that
        ran out of ``train.nonfinite_patience`` stops first) and refusing non-finite weights; then only the
        newest ``logger.keep_last_checkpoints`` complete checkpoints are kept (all if unset, as BasicSR)."""
        self.report_checks()
        self._check_finite_weights(current_iter)
        super().save(epoch, current_iter)
        keep = self.opt['logger'].get('keep_last_checkpoints')
        if keep and current_iter != -1 and self.opt['rank'] == 0:
            prune_checkpoints(self.opt['path']['models'], self.opt['path']['training_states'], keep)

    def _check_finite_weights(self, current_iter):
        """A checkpoint with NaN/inf weights would poison every resume: stop instead (on every rank alike)."""
        nets = {'net_g': self.net_g, 'net_g_ema': getattr(self, 'net_g_ema', None)}
        for label, net in nets.items():
            state = self.get_bare_model(net).state_dict() if net is not None else {}
            bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
            if bad:
                when = 'the end of training' if current_iter == -1 else f'iter {current_iter}'
                raise NonFiniteTrainingError(f'{label} has non-finite weights ({bad[0]} and {len(bad) - 1} more) at '
                                             f'{when}: refusing to save them; the last checkpoint on disk is older')

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR's layout (``params``/``params_ema``), plus ``network_config`` for net_g, so the file
        alone rebuilds its network (``basicsr-iln-infer -c``) and cannot load into another by mistake."""
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {
            key: {k: v.detach().cpu().contiguous() for k, v in self.get_bare_model(n).state_dict().items()}
            for n, key in zip(nets, keys)
        }
        if net_label == 'net_g':
            save_dict[NETWORK_CONFIG_KEY] = network_config(self.opt['network_g'])
        label = 'latest' if current_iter == -1 else current_iter
        atomic_torch_save(save_dict, osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))

    def save_training_state(self, epoch, current_iter):
        """Rank 0 writes the state; it holds every rank's RNG states (collected here, so every rank calls this)."""
        if current_iter == -1:
            return
        rngs = gather_to_rank0(rng_states())
        if self.opt['rank'] != 0:
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'rng_per_rank': rngs,
            'grad_scaler': self.grad_scaler.state_dict(),  # fp16: the loss scale it has backed off to
        }
        atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        for optimizer in self.optimizers:  # a state saved with the other channels_last setting
            match_state_layouts(optimizer)
        if resume_state.get('grad_scaler'):  # absent in older states and empty for a disabled scaler
            self.grad_scaler.load_state_dict(resume_state['grad_scaler'])
        rngs = resume_state.get('rng_per_rank') or []
        if len(rngs) == self.opt['world_size']:
            set_rng_states(rngs[self.opt['rank']])
        else:
            get_root_logger().warning(f'Random streams restart from the seed: the state holds RNG states of '
                                      f"{len(rngs)} processes, this run has {self.opt['world_size']}.")

    def inference_network(self):
        """The network ``test()`` runs: the test CLI's precision wrapper if set, else the EMA network if any,
        else the bare network (DDP's forward may broadcast buffers, a collective that a rank with one
        validation image fewer would never join)."""
        if self.eval_net is not None:
            return self.eval_net
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)

    def set_eval_precision(self, precision):
        """Let ``test()`` run the network in ``precision`` (analysis/precision.py); metrics records then
        carry the precision and the number of non-finite output values."""
        self.eval_net = None  # inference_network() now returns the underlying network
        self.eval_net = PrecisionNetwork(self.inference_network(), precision)

    def test(self):
        net = self.inference_network()
        was_training = net.training
        net.eval()
        val_opt = self.opt.get('val') or {}
        self.output = restore(net, self.lq, ensemble=read_option(val_opt, 'val.self_ensemble'),
                              max_chunk_tokens=read_option(val_opt, 'val.max_chunk_tokens'))
        net.train(was_training)

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """Validate (or test) on ``dataloader.dataset``, split across ranks: image i on rank i mod world size.

        Rank 0 receives the restored images and is the only writer; every rank receives all per-image
        metrics and averages them over images in dataset order, so the numbers equal a single-process
        run's, and no rank waits in a training collective while another validates a whole set.
        """
        dataset = dataloader.dataset
        dataset_name = dataset.opt['name']
        metrics_opt = self.opt['val'].get('metrics') or {}
        rank, world_size = get_dist_info()
        share = iter(rank_share_loader(dataset, rank, world_size))
        records = []
        for start in tqdm(range(0, len(dataset), world_size), unit='image', unit_scale=world_size,
                          disable=rank != 0 or not show_progress(self.opt['val']), desc=f'Validate {dataset_name}'):
            data = next(share, None)  # None: this rank's share is done, the others' not yet
            restored = self._restore_one(data, metrics_opt) if data is not None else None
            if restored is not None:
                records.append((start + rank, restored[2]))
            if save_img:
                for item in gather_to_rank0(restored and restored[:2]) or []:
                    if item is not None:
                        imwrite(item[1], self._visualization_path(item[0], dataset_name, current_iter))
        if metrics_opt:
            per_image = [values for _, values in sorted(sum(all_gather(records), []), key=lambda r: r[0])]
            self.metric_results = {name: sum(v[name] for v in per_image) / len(per_image) for name in metrics_opt}
            self._initialize_best_metric_results(dataset_name)
            for name, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)

    def _restore_one(self, data, metrics_opt):
        """(image name, restored uint8 image, {metric: value}) for one loaded item (a batch of 1)."""
        self.feed_data(data)
        self.test()
        metric_data = {'img': tensor2img([self.output.detach().cpu()])}
        if 'gt' in data:
            metric_data['img2'] = tensor2img([self.gt.detach().cpu()])
            del self.gt  # the next item may have no ground truth
        del self.lq, self.output
        values = {name: calculate_metric(metric_data, metric_opt) for name, metric_opt in metrics_opt.items()}
        return osp.splitext(osp.basename(data['lq_path'][0]))[0], metric_data['img'], values

    def _visualization_path(self, img_name, dataset_name, current_iter):
        """BasicSR's layout: <name>/<name>_<iter>.png in training, <set>/<name>_<suffix or run name>.png in testing."""
        folder = self.opt['path']['visualization']
        if self.opt['is_train']:
            return osp.join(folder, img_name, f'{img_name}_{current_iter}.png')
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(folder, dataset_name, f'{img_name}_{suffix}.png')

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        precision = self.eval_net.take_record() if self.eval_net is not None else {}
        if precision.get('nonfinite'):
            get_root_logger().warning(f"{dataset_name} in {precision['precision']}: {precision['nonfinite']} "
                                      'non-finite output values')
        self._append_metrics_record(current_iter, dataset_name, precision)

    @master_only
    def _append_metrics_record(self, current_iter, dataset_name, extra):
        record = {'iter': current_iter, 'dataset': dataset_name, **extra,
                  **{k: float(v) for k, v in self.metric_results.items()}}
        folder = self.opt['path'].get('experiments_root') or self.opt['path']['results_root']
        os.makedirs(folder, exist_ok=True)
        with open(osp.join(folder, 'metrics.jsonl'), 'a', encoding='utf-8') as f:
            f.write(json.dumps(record) + '\n')
