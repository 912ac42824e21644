"""Restoration model (SR, denoising, JPEG artifact removal) on top of BasicSR's SRModel.

What it changes, and why:
* networks are built with a clear error for unknown types / bad keyword arguments;
* DDP works on CPU (gloo) as well as on GPUs (BasicSR passes a CUDA device id unconditionally);
* checkpoints load with ``weights_only=True`` from any released layout, with one clear mismatch
  error, and are written atomically; training states also hold the RNG states, so a resumed run
  continues the same random streams;
* test-time inference uses the EMA network if present (our architectures pad to the window
  multiple and crop back themselves); every validation appends its metrics to ``metrics.jsonl``
  in the experiment / results folder, for summaries and tables.
"""
import json
import os
import random
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
from basicsr_iln.utils.errors import ConfigError


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
