"""Training-dynamics recorder: feature magnitudes, channel entropy and norm parameters during training.

Turned on by an ``analysis`` section in the training option file (absent: off, nothing is built
and no hook is ever registered)::

    analysis:
      freq: 500               # probe at iteration 1 and every `freq` iterations
      layers: all             # blocks | groups | all
      num_probe_images: 4     # the first N images of the first validation set ...
      probe_crop: 64          # ... centre-cropped to at most this many LQ pixels per side
      histograms: true        # TensorBoard histograms of per-channel magnitudes and norm biases

A probe runs the training network (not the EMA copy: its weights are what the optimiser shapes) in
eval mode without gradients on a batch built once, so points are comparable over time. Forward
hooks exist only during that forward pass. Recorded (definitions in ``stats.py``):

* every Transformer block output (a module owning two residual-branch norms ``norm1``/``norm2``:
  the core ``TransformerBlock``, HAT's OCAB) and every residual-group output (the children of
  ``net.layers``: RSTB, RHAG, DRCT's RDG): magnitude, max |x|, channel entropy;
* every norm layer with learned affine parameters: weight/bias mean and std, and the correlation of
  |bias| with the per-channel magnitude of the norm's input.

One JSON record per probe is appended to ``<experiment>/analysis.jsonl`` (read by
``scripts/plot_dynamics.py``) and summaries go to TensorBoard. Under DDP only rank 0 records.
"""
import json
import os
import statistics
import time
from os import path as osp

import torch
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info
from torch import nn

from basicsr_iln.archs.norms import NORM_SCHEMES
from basicsr_iln.utils.errors import ConfigError
from basicsr_iln.utils.schema import resolve_option

from .stats import affine_stats, channel_magnitudes, feature_stats

JSONL_NAME = 'analysis.jsonl'


def norm_layer_types():
    """Every layer class a norm scheme builds (branch and stem), read from ``NORM_SCHEMES``: a scheme added
    there is analysed without a change here."""
    return tuple({type(layer) for scheme in NORM_SCHEMES.values()
                  for layer in (scheme.build_branch(1), scheme.build_stem(1))})


def parse_analysis_options(section):
    """The ``analysis`` section checked and completed with the schema's defaults; None when analysis is off."""
    opts = resolve_option('analysis', section)
    return opts if opts is not None and opts['enabled'] else None


def is_block(module):
    """A Transformer block: owns two residual-branch norms (``norm1``, ``norm2``)."""
    return all(getattr(getattr(module, name, None), 'residual_branch', False) for name in ('norm1', 'norm2'))


def probe_points(net, layers):
    """[(name, kind, index, group, module)] of the blocks and/or residual groups, in forward order."""
    if not isinstance(getattr(net, 'layers', None), nn.ModuleList):
        raise ConfigError(f'analysis needs a network whose residual groups are `layers` (a ModuleList); '
                          f'{type(net).__name__} has none')
    points, num_blocks = [], 0
    for g, group in enumerate(net.layers):
        if layers in ('blocks', 'all'):
            for name, module in group.named_modules():
                if is_block(module):
                    points.append((f'layers.{g}.{name}', 'block', num_blocks, g, module))
                    num_blocks += 1
        if layers in ('groups', 'all'):
            points.append((f'layers.{g}', 'group', g, g, group))
    return points


def norm_layers(net):
    """[(name, module)] of the norm layers that have a learned scale (weight or gamma)."""
    types = norm_layer_types()
    return [(name, m) for name, m in net.named_modules()
            if isinstance(m, types) and _affine(m)[0] is not None]


def _affine(norm):
    """(weight, bias) of a norm layer, whichever naming (weight/bias or gamma/beta) it uses."""
    weight = getattr(norm, 'weight', None)
    if weight is None:
        weight = getattr(norm, 'gamma', None)
    bias = getattr(norm, 'bias', None)
    return weight, bias if bias is not None else getattr(norm, 'beta', None)


def probe_batch(dataset, num_images, crop):
    """LQ tensor (N, C, h, w) of the first ``num_images`` items, centre-cropped to a common size."""
    lqs = [dataset[i]['lq'] for i in range(min(num_images, len(dataset)))]
    if not lqs:
        raise ConfigError('analysis needs at least one image in the first validation set')
    h = min(crop, *(lq.shape[-2] for lq in lqs))
    w = min(crop, *(lq.shape[-1] for lq in lqs))
    tops_lefts = [((lq.shape[-2] - h) // 2, (lq.shape[-1] - w) // 2) for lq in lqs]
    return torch.stack([lq[..., top:top + h, left:left + w] for lq, (top, left) in zip(lqs, tops_lefts)])


def _first_tensor(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class DynamicsRecorder:
    """Records the statistics above on a fixed probe batch at iteration 1 and every ``freq`` iterations."""

    def __init__(self, net, probe, opts, folder, tb_logger=None, run_info=None):
        self.net = net
        self.probe = probe
        self.opts = opts
        self.points = probe_points(net, opts['layers'])
        self.norms = norm_layers(net)
        self.path = osp.join(folder, JSONL_NAME)
        self.tb_logger = tb_logger
        self.run_info = run_info or {}

    def __call__(self, current_iter):
        if current_iter == 1 or current_iter % self.opts['freq'] == 0:
            self.record(current_iter)

    def measure(self):
        """(layer records, norm records, per-channel magnitudes of the group outputs) of one probe."""
        outputs, norm_inputs = {}, {}

        def keep_output(name):
            return lambda module, args, output: outputs.__setitem__(name, _first_tensor(output))

        def keep_input_magnitude(name):
            return lambda module, args: norm_inputs.__setitem__(name, channel_magnitudes(args[0]).mean(0))

        handles = [m.register_forward_hook(keep_output(name)) for name, _, _, _, m in self.points]
        handles += [m.register_forward_pre_hook(keep_input_magnitude(name)) for name, m in self.norms]
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                self.net(self.probe)
        finally:
            self.net.train(was_training)
            for handle in handles:
                handle.remove()

        layers = [{'name': name, 'kind': kind, 'index': index, 'group': group, **feature_stats(outputs[name])}
                  for name, kind, index, group, _ in self.points]
        norms = [{'name': name, 'type': type(m).__name__, **affine_stats(*_affine(m), norm_inputs[name])}
                 for name, m in self.norms]
        group_channels = {name: channel_magnitudes(outputs[name]).mean(0)
                          for name, kind, _, _, _ in self.points if kind == 'group'}
        return layers, norms, group_channels

    def record(self, current_iter):
        layers, norms, group_channels = self.measure()
        record = {'iter': current_iter, 'time': time.time(), **self.run_info,
                  'probe_shape': list(self.probe.shape), 'layers': layers, 'norms': norms}
        os.makedirs(osp.dirname(self.path), exist_ok=True)
        with open(self.path, 'a', encoding='utf-8') as f:
            f.write(json.dumps(record) + '\n')
        summary = summarize(layers, norms)
        get_root_logger().info(f'dynamics @ iter {current_iter}: ' +
                               ', '.join(f'{k} {v:.4g}' for k, v in summary.items() if v is not None))
        if self.tb_logger is not None:
            self._log_tensorboard(current_iter, layers, norms, group_channels, summary)

    def _log_tensorboard(self, current_iter, layers, norms, group_channels, summary):
        tb = self.tb_logger
        for key, value in summary.items():
            if value is not None:
                tb.add_scalar(f'dynamics/{key}', value, current_iter)
        for layer in layers:
            for key in ('magnitude', 'max_abs', 'entropy_norm'):
                tb.add_scalar(f"dynamics_{layer['kind']}/{key}_{layer['index']:02d}", layer[key], current_iter)
        if self.opts['histograms']:
            for name, magnitudes in group_channels.items():
                tb.add_histogram(f'dynamics_hist/channel_magnitude_{name}', magnitudes, current_iter)
            biases = [_affine(m)[1].detach().flatten() for _, m in self.norms if _affine(m)[1] is not None]
            if biases:
                tb.add_histogram('dynamics_hist/norm_bias', torch.cat(biases), current_iter)


def summarize(layers, norms):
    """Max/median magnitude and min/median normalised entropy per layer kind; median bias correlation."""
    summary = {}
    for kind in ('block', 'group'):
        chosen = [layer for layer in layers if layer['kind'] == kind]
        if chosen:
            magnitudes = [layer['magnitude'] for layer in chosen]
            entropies = [layer['entropy_norm'] for layer in chosen]
            summary.update({
                f'{kind}_magnitude_max': max(magnitudes),
                f'{kind}_magnitude_median': statistics.median(magnitudes),
                f'{kind}_max_abs_max': max(layer['max_abs'] for layer in chosen),
                f'{kind}_entropy_norm_min': min(entropies),
                f'{kind}_entropy_norm_median': statistics.median(entropies),
            })
    corrs = [n['bias_magnitude_corr'] for n in norms if n.get('bias_magnitude_corr') is not None]
    summary['norm_bias_magnitude_corr_median'] = statistics.median(corrs) if corrs else None
    return summary


def recording_off(current_iter):
    """The recorder when analysis is off: does nothing (no probe batch, no hooks)."""


def build_dynamics_recorder(opt, model, val_loaders, tb_logger):
    """The recorder the training loop calls every iteration, or ``recording_off`` (analysis off, or
    not rank 0 under DDP)."""
    opts = parse_analysis_options(opt.get('analysis'))
    if opts is None or get_dist_info()[0] != 0:
        return recording_off
    if not val_loaders:
        raise ConfigError("option 'analysis' needs a validation set (datasets.val) to take its probe images from")
    net = model.get_bare_model(model.net_g)
    probe = probe_batch(val_loaders[0].dataset, opts['num_probe_images'], opts['probe_crop']).to(model.device)
    run_info = {'name': opt['name'], 'arch': opt['network_g']['type'],
                'norm_type': getattr(net, 'norm_type', opt['network_g'].get('norm_type'))}
    return DynamicsRecorder(net, probe, opts, opt['path']['experiments_root'], tb_logger, run_info)
