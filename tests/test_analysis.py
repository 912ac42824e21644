"""Training-dynamics analysis, the plot script and low-precision evaluation (issue 5)."""
import copy
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from basicsr_iln.analysis import JSONL_NAME, build_dynamics_recorder, parse_analysis_options
from basicsr_iln.analysis.dynamics import DynamicsRecorder, probe_batch, recording_off
from basicsr_iln.analysis.precision import PrecisionNetwork, parse_precisions
from basicsr_iln.analysis.stats import affine_stats, channel_entropy, correlation, feature_stats
from basicsr_iln.archs.norms import NORM_SCHEMES, FamilyNorm, NormScheme
from basicsr_iln.utils.errors import ConfigError
from helpers import REPO, eval_options_from_train, run_cli, run_python, tiny_train_options, write_yaml

sys.path.insert(0, str(REPO / 'scripts'))
import plot_dynamics  # noqa: E402

TINY = dict(upscale=2, img_size=16, window_size=4, embed_dim=12, mlp_ratio=2, upsampler='pixelshuffle')


def test_entropy_is_log_c_for_uniform_channels_and_zero_for_one_hot():
    uniform = torch.full((2, 10, 8), -3.0)  # |x| is what counts
    assert channel_entropy(uniform) == pytest.approx((math.log(8), 1.0))
    one_hot = torch.zeros(2, 10, 8)
    one_hot[..., 5] = 2.0
    assert channel_entropy(one_hot) == pytest.approx((0.0, 0.0), abs=1e-12)
    two_channels = torch.zeros(1, 4, 8)
    two_channels[..., :2] = 1.0
    assert channel_entropy(two_channels)[0] == pytest.approx(math.log(2))


def test_magnitude_and_max_of_a_known_tensor():
    x = torch.tensor([[[1.0, -2.0], [3.0, -4.0]]])
    stats = feature_stats(x)
    assert stats['magnitude'] == pytest.approx(7.5)  # (1 + 4 + 9 + 16) / 4
    assert stats['max_abs'] == 4.0 and stats['channels'] == 2
    huge = torch.full((1, 4, 2), 6e4, dtype=torch.float16)  # its square overflows fp16, not the float64 statistics
    assert feature_stats(huge)['magnitude'] == pytest.approx(float(huge[0, 0, 0])**2)


def test_bias_correlation_and_affine_stats():
    magnitude = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert correlation(torch.tensor([0.0, -1.0, 2.0, -3.0]).abs(), magnitude) == pytest.approx(1.0)
    assert correlation(torch.zeros(4), magnitude) is None
    stats = affine_stats(torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 2.0]), torch.tensor([1.0, 5.0]))
    assert stats['weight_mean'] == 2.0 and stats['weight_std'] == 1.0
    assert stats['bias_mean'] == 0.0 and stats['bias_abs_mean'] == 2.0 and stats['bias_magnitude_corr'] is None
    assert 'bias_mean' not in affine_stats(torch.ones(3), None, torch.ones(3))  # RMSNorm: no bias


def hook_count(net):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


@pytest.mark.parametrize('arch, kwargs, blocks, groups, norms', [
    ('SwinIR_iLN', dict(depths=[2, 3], num_heads=[2, 2], norm_type='ln'), 5, 2, 2 * 5 + 2),
    ('SwinIR_iLN', dict(depths=[2, 3], num_heads=[2, 2], norm_type='iln'), 5, 2, 2 * 5 + 2),
    ('HAT_iLN', dict(depths=[2], num_heads=[2], squeeze_factor=4), 3, 1, 2 * 3 + 2),  # 2 HABs + 1 OCAB
    ('DRCT', dict(depths=[2], num_heads=[2], gc=6), 5, 1, 2 * 5 + 2),
    ('SwinIR_iLN', dict(depths=[2], num_heads=[2], norm_type='rezero'), 2, 1, 0),
])
def test_recorder_records_every_block_group_and_norm(tmp_path, arch, kwargs, blocks, groups, norms):
    net = ARCH_REGISTRY.get(arch)(**TINY, **kwargs)
    net.train()
    opts = parse_analysis_options({'freq': 3, 'layers': 'all'})
    recorder = DynamicsRecorder(net, torch.rand(2, 3, 12, 16), opts, str(tmp_path), run_info={'name': 'r'})
    for it in range(1, 7):
        recorder(it)
    assert net.training and hook_count(net) == 0  # mode restored, hooks only during the probe
    records = [json.loads(line) for line in (tmp_path / JSONL_NAME).read_text().splitlines()]
    assert [r['iter'] for r in records] == [1, 3, 6]
    layers = records[-1]['layers']
    assert [layer['index'] for layer in layers if layer['kind'] == 'block'] == list(range(blocks))
    assert [layer['index'] for layer in layers if layer['kind'] == 'group'] == list(range(groups))
    for layer in layers:
        assert all(math.isfinite(layer[k]) for k in ('magnitude', 'max_abs', 'entropy', 'entropy_norm'))
        assert layer['magnitude'] > 0 and 0 < layer['entropy_norm'] <= 1 + 1e-9
    assert len(records[-1]['norms']) == norms
    for norm in records[-1]['norms']:
        assert all(math.isfinite(v) for k, v in norm.items() if k not in ('name', 'type') and v is not None)


class ScaledNorm(FamilyNorm, nn.Module):
    """A test-only scheme's norm: per-token L2 normalisation with a learned scale."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward_with_scale(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight, None


def test_a_scheme_added_to_the_spec_trains_and_is_analysed(tmp_path, monkeypatch):
    """One NormScheme record is all a new scheme needs: the architectures build it and the recorder finds
    its layers (branch norms and stems) without a change anywhere else."""
    make = lambda dim, eps: ScaledNorm(dim) if eps is None else ScaledNorm(dim, eps)
    monkeypatch.setitem(NORM_SCHEMES, 'scaled', NormScheme('test-only scaled norm', make, make))
    net = ARCH_REGISTRY.get('SwinIR_iLN')(**TINY, depths=[2], num_heads=[2], norm_type='scaled')
    recorder = DynamicsRecorder(net, torch.rand(1, 3, 8, 8), parse_analysis_options({}), str(tmp_path))
    recorder(1)
    [record] = [json.loads(line) for line in (tmp_path / JSONL_NAME).read_text().splitlines()]
    assert {n['type'] for n in record['norms']} == {'ScaledNorm'} and len(record['norms']) == 2 * 2 + 2


def test_layers_option_selects_blocks_or_groups(tmp_path):
    net = ARCH_REGISTRY.get('SwinIR_iLN')(**TINY, depths=[2, 2], num_heads=[2, 2])
    for layers, kinds in (('blocks', {'block'}), ('groups', {'group'})):
        recorder = DynamicsRecorder(net, torch.rand(1, 3, 8, 8), parse_analysis_options({'layers': layers}),
                                    str(tmp_path / layers))
        assert {kind for _, kind, _, _, _ in recorder.points} == kinds


def test_jsonl_round_trip_through_the_plot_reader(tmp_path):
    net = ARCH_REGISTRY.get('SwinIR_iLN')(**TINY, depths=[2], num_heads=[2], norm_type='ln')
    recorder = DynamicsRecorder(net, torch.rand(2, 3, 8, 8), parse_analysis_options({'freq': 1}), str(tmp_path),
                                run_info={'name': 'rt', 'arch': 'SwinIR_iLN', 'norm_type': 'ln'})
    recorder(1)
    recorder(1)  # a resumed run may repeat an iteration: the reader keeps the last record
    recorder(2)
    layers, norms, _ = recorder.measure()
    run = plot_dynamics.load_run(tmp_path)
    assert (run['name'], run['norm_type'], run['kind']) == ('rt', 'ln', 'block')
    assert [r['iter'] for r in run['records']] == [1, 2]
    assert run['records'][-1]['layers'] == layers and run['records'][-1]['norms'] == norms


def test_analysis_off_builds_nothing_and_registers_no_hook(monkeypatch):
    registered = []
    monkeypatch.setattr(nn.Module, 'register_forward_hook', lambda *a, **k: registered.append(a))
    monkeypatch.setattr(nn.Module, 'register_forward_pre_hook', lambda *a, **k: registered.append(a))
    net = ARCH_REGISTRY.get('SwinIR_iLN')(**TINY, depths=[2], num_heads=[2])
    model = SimpleNamespace(net_g=net, device=torch.device('cpu'), get_bare_model=lambda n: n)
    for section in (None, {'enabled': False, 'freq': 1}):
        opt = {'name': 'off', 'network_g': {'type': 'SwinIR_iLN'}, 'path': {'experiments_root': '/nonexistent'}}
        if section is not None:
            opt['analysis'] = section
        recorder = build_dynamics_recorder(opt, model, val_loaders=[], tb_logger=None)
        assert recorder is recording_off
        for it in range(1, 5):
            recorder(it)
    assert registered == []


@pytest.mark.parametrize('section, message', [
    ({'freqq': 10}, "Did you mean 'analysis.freq'"),
    ({'freq': 0}, "'analysis.freq' must be > 0"),
    ({'layers': 'heads'}, 'blocks, groups, all'),
    ('yes', 'must be a mapping'),
])
def test_bad_analysis_options_are_rejected(section, message):
    with pytest.raises(ConfigError, match=message):
        parse_analysis_options(section)


def test_probe_batch_uses_fixed_centre_crops():
    dataset = [{'lq': torch.arange(3 * 10 * 12.0).view(3, 10, 12)}, {'lq': torch.zeros(3, 8, 20)},
               {'lq': torch.ones(3, 30, 30)}]
    batch = probe_batch(dataset, 2, crop=9)
    assert batch.shape == (2, 3, 8, 9)  # at most `crop`, at most the smallest of the chosen images
    assert torch.equal(batch[0], dataset[0]['lq'][:, 1:9, 1:10])


def test_precision_parsing_and_nonfinite_count():
    assert parse_precisions('fp32, fp16,fp32', 'x') == ['fp32', 'fp16']
    assert parse_precisions(['bf16', 'int8'], 'x') == ['bf16', 'int8']
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        parse_precisions('fp32,fp8', '--precision')
    layer = nn.Linear(4, 4)
    with torch.no_grad():
        layer.weight.fill_(1e5)  # outputs of ~4e5 overflow fp16 (max 65504), not fp32
    x = torch.ones(2, 4)
    for precision, nonfinite in (('fp32', 0), ('bf16', 0), ('fp16', 8), ('int8', 0)):
        wrapped = PrecisionNetwork(layer, precision)
        assert wrapped(x).dtype == torch.float32
        assert wrapped.take_record() == {'precision': precision, 'nonfinite': nonfinite}
        assert wrapped.take_record()['nonfinite'] == 0  # the count restarts for the next test set
    assert layer.weight.dtype == torch.float32  # the model's own network is never converted


@pytest.mark.parametrize('precision, dtype', [('fp16', torch.float16), ('bf16', torch.bfloat16)])
def test_cpu_half_precision_matches_native_half_kernels(precision, dtype):
    net = ARCH_REGISTRY.get('SwinIR_iLN')(**TINY, depths=[2], num_heads=[2], norm_type='ln').eval()
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        native = copy.deepcopy(net).to(dtype)(x.to(dtype)).float()  # slow reference kernels on CPU
        ours = PrecisionNetwork(net, precision)(x)
        exact = net(x)
    assert hook_count(net) == 0
    # Same result up to accumulation order: far closer to the native kernels than either is to fp32.
    assert (ours - native).abs().mean() < 0.1 * (exact - native).abs().mean()
    assert (ours - exact).abs().max() <= 1.5 * (native - exact).abs().max()


@pytest.fixture(scope='module')
def analysed_run(tiny_sr_data, tmp_path_factory):
    """A 4-iteration SwinIR (LN) training through the real CLI with analysis on."""
    work = tmp_path_factory.mktemp('analysed')
    opt = tiny_train_options(tiny_sr_data, 'dyn_ln', norm_type='ln', total_iter=4)
    opt['analysis'] = {'freq': 2, 'num_probe_images': 2, 'probe_crop': 16}
    opt['logger']['use_tb_logger'] = True
    result = run_cli('train', write_yaml(work / 'train.yml', opt), work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work, opt


@pytest.mark.slow
def test_training_cli_records_dynamics_and_plot_script_writes_figures(analysed_run):
    work, _ = analysed_run
    exp = work / 'experiments' / 'dyn_ln'
    records = [json.loads(line) for line in (exp / JSONL_NAME).read_text().splitlines()]
    assert [r['iter'] for r in records] == [1, 2, 4]
    assert records[0]['norm_type'] == 'ln' and records[0]['probe_shape'] == [2, 3, 16, 16]
    assert len(records[0]['layers']) == 2 + 1 and len(records[0]['norms']) == 2 * 2 + 2
    assert any((work / 'tb_logger' / 'dyn_ln').iterdir())  # TensorBoard event file

    out = work / 'figures'
    result = run_python([REPO / 'scripts' / 'plot_dynamics.py', exp, '--out', out, '--per-depth'], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ('dynamics.png', 'depth_dyn_ln.png'):
        data = (out / name).read_bytes()
        assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10000, name
    summary = (out / 'summary.md').read_text()
    final = plot_dynamics.summarize(records[-1]['layers'], records[-1]['norms'])
    for kind in ('block', 'group'):
        assert f"| dyn_ln | ln · SwinIR_iLN | {kind}s | 4 | " in summary
        assert f"→ {final[kind + '_magnitude_max']:.4g} (" in summary


@pytest.mark.slow
def test_test_cli_evaluates_each_precision(analysed_run):
    work, train_opt = analysed_run
    checkpoint = work / 'experiments' / 'dyn_ln' / 'models' / 'net_g_latest.pth'
    test_opt = eval_options_from_train(train_opt, 'prec', checkpoint)
    test_opt['val']['precision'] = ['fp32', 'int8']
    opt_path = write_yaml(work / 'test_prec.yml', test_opt)

    result = run_cli('test', opt_path, work, '--precision', 'fp32,bf16,fp16')  # the flag overrides the option
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (work / 'results' / 'prec' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['precision'] for r in records] == ['fp32', 'bf16', 'fp16']
    assert all(r['nonfinite'] == 0 and r['dataset'] == 'tiny_test' for r in records)
    assert abs(records[2]['psnr'] - records[0]['psnr']) < 0.5  # a small, well-scaled net survives fp16
    images = sorted(p.name for p in (work / 'results' / 'prec' / 'visualization' / 'tiny_test').glob('*.png'))
    assert images == sorted(f'img0{i}_prec_{p}.png' for i in (0, 1) for p in ('fp32', 'bf16', 'fp16'))

    test_opt['name'] = 'prec_opt'
    result = run_cli('test', write_yaml(work / 'test_opt.yml', test_opt), work)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (work / 'results' / 'prec_opt' / 'metrics.jsonl').read_text().splitlines()]
    assert [r['precision'] for r in records] == ['fp32', 'int8']

    result = run_cli('test', opt_path, work, '--precision', 'fp8')
    assert result.returncode == 2 and "unknown precision 'fp8'" in result.stderr
