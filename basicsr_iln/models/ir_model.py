"""Restoration model (SR, denoising, JPEG artifact removal) on top of BasicSR's SRModel.

What it changes, and why:
* networks are built with a clear error for unknown types / bad keyword arguments;
* DDP works on CPU (gloo) as well as on GPUs (BasicSR passes a CUDA device id unconditionally);
* checkpoints load with ``weights_only=True`` from any released layout, with one clear mismatch
  error, and are written atomically; training states also hold the RNG states, so a resumed run
  continues the same random streams;
* training can run under bf16/fp16 autocast (``train.precision``; fp16 with a gradient scaler);
* a non-finite loss or gradient is detected, logged with the iteration and the loss name, and the
  step skipped; ``train.nonfinite_patience`` consecutive cases stop training with a clear error,
  so no checkpoint with NaN weights is ever written;
* test-time inference uses the EMA network if present (our architectures pad to the window
  multiple and crop back themselves); every validation appends its metrics to ``metrics.jsonl``
  in the experiment / results folder, for summaries and tables.
"""
import json
import os
import random
from collections import OrderedDict
from os import path as osp

import numpy as np
import torch
from basicsr.archs import build_network
from basicsr.models.base_model import BaseModel
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
from torch.nn.parallel import DistributedDataParallel

from basicsr_iln.utils.checkpoint import atomic_torch_save, load_weights
from basicsr_iln.utils.errors import ConfigError, NonFiniteTrainingError

PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def precision_dtype(name, key):
    if name not in PRECISIONS:
        raise ConfigError(f"option '{key}' must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return PRECISIONS[name]


def build_network_checked(net_opt):
    """``build_network`` that names the architecture and the bad option instead of a bare TypeError."""
    arch = net_opt.get('type')
    if arch not in ARCH_REGISTRY:
        valid = ', '.join(sorted(name for name, _ in ARCH_REGISTRY))
        raise ConfigError(f"unknown network_g type '{arch}'. Registered architectures: {valid}")
    try:
        return build_network(net_opt)
    except (TypeError, ValueError) as err:
        raise ConfigError(f'network_g ({arch}): {err}') from None


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

    def __init__(self, opt):  # SRModel.__init__, with the checked network build
        BaseModel.__init__(self, opt)
        self.net_g = self.model_to_device(build_network_checked(opt['network_g']))
        self.print_network(self.net_g)
        load_path = self.opt['path'].get('pretrain_network_g')
        if load_path is not None:
            self.load_network(self.net_g, load_path, self.opt['path'].get('strict_load_g', True),
                              self.opt['path'].get('param_key_g', 'params'))
        if self.is_train:
            self.init_training_settings()

    def init_training_settings(self):
        super().init_training_settings()
        train_opt = self.opt['train']
        self.train_dtype = precision_dtype(train_opt.get('precision', 'fp32'), 'train.precision')
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.train_dtype == torch.float16)
        self.nonfinite_patience = int(train_opt.get('nonfinite_patience', 10))
        self.nonfinite_streak = 0

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

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad(set_to_none=True)
        autocast = self.train_dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.train_dtype, enabled=autocast):
            losses = self.compute_losses()
        total = sum(losses.values())
        self.grad_scaler.scale(total).backward()
        self.grad_scaler.unscale_(self.optimizer_g)
        bad = [name for name, value in losses.items() if not torch.isfinite(value).all()]
        if not bad and not all(torch.isfinite(p.grad).all() for p in self.net_g.parameters() if p.grad is not None):
            bad = ['gradients']
        if bad == ['gradients'] and self.grad_scaler.is_enabled():
            # fp16 overflow of the scaled gradients is routine: the scaler skips the step and backs off.
            self.grad_scaler.step(self.optimizer_g)
            self.grad_scaler.update()
        elif bad:
            self._skip_nonfinite_step(current_iter, bad)
        else:
            self.nonfinite_streak = 0
            self.grad_scaler.step(self.optimizer_g)
            self.grad_scaler.update()
            if self.ema_decay > 0:
                self.model_ema(decay=self.ema_decay)
        self.log_dict = self.reduce_loss_dict(losses)

    def _skip_nonfinite_step(self, current_iter, bad):
        self.nonfinite_streak += 1
        self.optimizer_g.zero_grad(set_to_none=True)
        message = (f'non-finite {", ".join(bad)} at iter {current_iter} '
                   f'({self.nonfinite_streak} in a row); step skipped')
        get_root_logger().warning(message)
        if self.nonfinite_streak >= self.nonfinite_patience:
            raise NonFiniteTrainingError(f'{message}; stopping after {self.nonfinite_patience} consecutive '
                                         'non-finite steps (option train.nonfinite_patience). The last '
                                         'checkpoint on disk is from before the divergence.')

    def model_to_device(self, net):
        net = net.to(self.device)
        if self.opt['dist']:
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            net = DistributedDataParallel(
                net, device_ids=device_ids, find_unused_parameters=self.opt.get('find_unused_parameters', False))
        elif self.opt['num_gpu'] > 1:
            net = torch.nn.DataParallel(net)
        return net

    def load_network(self, net, load_path, strict=True, param_key='params'):
        net = self.get_bare_model(net)
        load_weights(net, load_path, param_key=param_key, strict=strict, arch_desc=self._arch_desc())
        get_root_logger().info(f'Loaded {type(net).__name__} from {load_path} [{param_key}].')

    def _arch_desc(self):
        net_opt = self.opt['network_g']
        return net_opt['type'] + '(' + ', '.join(f'{k}={v}' for k, v in net_opt.items() if k != 'type') + ')'

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {
            key: {k: v.detach().cpu() for k, v in self.get_bare_model(n).state_dict().items()}
            for n, key in zip(nets, keys)
        }
        label = 'latest' if current_iter == -1 else current_iter
        atomic_torch_save(save_dict, osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))

    @master_only
    def save_training_state(self, epoch, current_iter):
        if current_iter == -1:
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'rng': rng_states(),
        }
        atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        if 'rng' in resume_state and not self.opt['dist']:
            set_rng_states(resume_state['rng'])

    def test(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        was_training = net.training
        net.eval()
        with torch.no_grad():
            self.output = net(self.lq)
        net.train(was_training)

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        super()._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        self._append_metrics_record(current_iter, dataset_name)

    @master_only
    def _append_metrics_record(self, current_iter, dataset_name):
        record = {'iter': current_iter, 'dataset': dataset_name, **{k: float(v) for k, v in self.metric_results.items()}}
        folder = self.opt['path'].get('experiments_root') or self.opt['path']['results_root']
        os.makedirs(folder, exist_ok=True)
        with open(osp.join(folder, 'metrics.jsonl'), 'a', encoding='utf-8') as f:
            f.write(json.dumps(record) + '\n')
