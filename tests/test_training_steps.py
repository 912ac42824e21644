"""One optimizer step per iteration: gradient accumulation (``train.global_batch_size``), gradient clipping
(``train.grad_clip_norm``) and the one-reduction non-finite gradient check, on IRModel and through the
real train CLI (single process and 2-process DDP on gloo)."""
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import basicsr_iln  # noqa: F401  (before basicsr)
import pytest
import torch
from basicsr.models import build_model
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils._python_dispatch import TorchDispatchMode

from basicsr_iln.models.ir_model import MAX_PENDING_CHECKS, grad_clip_option, gradient_norms
from basicsr_iln.utils.batching import describe_global_batch, micro_batches_per_step
from basicsr_iln.utils.dist import close_dist
from basicsr_iln.utils.errors import ConfigError
from basicsr_iln.utils.options import parse_options
from helpers import run_cli, start_ranks, tiny_train_options, write_yaml
from test_distributed import NPROC, free_port, load_ranks
from test_reliability import read_log, same


def model_options(data, name, batch=2, **train):
    """Tiny training options without random differences between batch layouts: no drop-path, no flips,
    no validation."""
    opt = tiny_train_options(data, name, drop_path_rate=0.0)
    opt['datasets']['train'].update(batch_size_per_gpu=batch, use_hflip=False, use_rot=False)
    opt['train'].update(train)
    del opt['datasets']['val'], opt['val']
    return opt


def build(tmp_path, data, name, *flags, **options):
    """An IRModel built through the CLI's option parsing (same seed, so the same initial weights)."""
    yml = write_yaml(tmp_path / f'{name}.yml', model_options(data, name, **options))
    opt, _ = parse_options(str(tmp_path), is_train=True, argv=['-opt', str(yml), *flags])
    return build_model(opt)


def batches(n, size=4, nan_at=None):
    gen = torch.Generator().manual_seed(1)
    out = [{'lq': torch.rand(size, 3, 16, 16, generator=gen), 'gt': torch.rand(size, 3, 32, 32, generator=gen)}
           for _ in range(n)]
    if nan_at is not None:
        out[nan_at[0]]['lq'][nan_at[1], 0, 0, 0] = float('nan')
    return out


def step(model, batch, micro_batches, it):
    """One optimizer step on ``batch`` split into ``micro_batches`` equal parts, as train.py does."""
    parts = [{k: v.chunk(micro_batches)[i] for k, v in batch.items()} for i in range(micro_batches)]
    for part in parts[:-1]:
        model.feed_data(part)
        model.accumulate_gradients()
    model.feed_data(parts[-1])
    model.optimize_parameters(it)


def weights(model, ema=False):
    net = model.net_g_ema if ema else model.get_bare_model(model.net_g)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def grads(model):
    return {n: p.grad.clone() for n, p in model.get_bare_model(model.net_g).named_parameters()}


def assert_relatively_close(actual, expected, rel=1e-4):
    """Every tensor within ``rel`` of the expected one, relative to its norm: float32 sums of the ~1e4 per-pixel
    L1 terms, added in another order (other thread counts, DDP's bucketed all-reduce), differ by a few 1e-6,
    and up to ~2e-5 for sums that mostly cancel (the output conv's bias: L1 terms of both signs). A wrong
    gradient is off by far more."""
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        if value.is_floating_point():
            error = float((actual[name].double() - value.double()).norm())
            assert error <= rel * float(value.double().norm()) + 1e-12, (name, error)


def test_micro_batches_per_step_follows_the_global_batch():
    def opt(global_batch, per_process=2, world_size=1, num_gpu=0):
        train = {} if global_batch is None else {'global_batch_size': global_batch}
        return {'train': train, 'datasets': {'train': {'batch_size_per_gpu': per_process}}, 'world_size': world_size,
                'dist': world_size > 1, 'num_gpu': num_gpu}

    assert micro_batches_per_step(opt(None)) == 1
    assert micro_batches_per_step(opt(16, 2, 1)) == 8
    assert micro_batches_per_step(opt(16, 2, 8, num_gpu=1)) == 1
    # one process driving 8 GPUs (DataParallel): BasicSR's loader batch is batch_size_per_gpu x num_gpu
    assert micro_batches_per_step(opt(32, 4, 1, num_gpu=8)) == 1
    with pytest.raises(ConfigError, match=r'^train.global_batch_size 16 is not a multiple of '
                                          r'datasets.train.batch_size_per_gpu 3 x num_gpu 2 \(one process\) x 1'):
        micro_batches_per_step(opt(16, 3, 1, num_gpu=2))
    assert describe_global_batch(opt(16), 8) == 'global batch 16 = 2 per process x 1 processes x 8 accumulated ' \
                                                'micro-batches'
    with pytest.raises(ConfigError, match=r'^train.global_batch_size 16 is not a multiple of '
                                          r'datasets.train.batch_size_per_gpu 3 x 2 processes$'):
        micro_batches_per_step(opt(16, 3, 2))
    with pytest.raises(ConfigError, match='is not a multiple'):
        micro_batches_per_step(opt(2, 2, 2))  # smaller than one micro-batch per process
    for bad, must in ((0, '> 0'), (-4, '> 0'), (4.0, 'an integer'), ('16', 'an integer'), (True, 'an integer')):
        with pytest.raises(ConfigError, match=rf"^option 'train.global_batch_size' must be {must}, got {bad!r}"):
            micro_batches_per_step(opt(bad))


def test_accumulated_micro_batches_update_like_one_large_batch(tiny_sr_data, tmp_path):
    large = build(tmp_path, tiny_sr_data, 'large', batch=4)
    accumulated = build(tmp_path, tiny_sr_data, 'accumulated', batch=2, global_batch_size=4)
    assert (large.micro_batches, accumulated.micro_batches) == (1, 2)
    assert same(weights(large), weights(accumulated))
    for it, batch in enumerate(batches(3), start=1):
        step(large, batch, 1, it)
        step(accumulated, batch, 2, it)
        assert_relatively_close(grads(accumulated), grads(large))
        accumulated_log, large_log = accumulated.get_current_log(), large.get_current_log()
        assert accumulated_log['l_pix'] == pytest.approx(large_log['l_pix'], rel=1e-5)
        assert accumulated_log['grad_norm'] == pytest.approx(large_log['grad_norm'], rel=1e-5)
    assert_relatively_close(weights(accumulated), weights(large))
    assert_relatively_close(weights(accumulated, ema=True), weights(large, ema=True))
    assert not same(weights(large), weights(build(tmp_path, tiny_sr_data, 'fresh', batch=4)))  # it did train
    assert accumulated.optimizer_g.state_dict()['state'][0]['step'] == 3  # one Adam step per step, not per micro


def test_optimize_parameters_refuses_a_step_with_the_wrong_number_of_micro_batches(tiny_sr_data, tmp_path):
    model = build(tmp_path, tiny_sr_data, 'three', batch=2, global_batch_size=6)
    model.feed_data(batches(1, size=2)[0])
    with pytest.raises(RuntimeError, match='after 0 accumulate_gradients calls: a step of 3 micro-batches needs 2'):
        model.optimize_parameters(1)


# BasicSR 1.4.2 builds only Adam. With betas 0 and an eps far above every gradient element it is plain SGD
# with lr / eps, so that a clipped step is visibly shorter (Adam's usual first step ignores the scale).
SGD_LIKE_ADAM = {'type': 'Adam', 'lr': 100.0, 'eps': 100.0, 'betas': [0.0, 0.0]}


def test_gradient_clipping_equals_clip_grad_norm_then_the_step(tiny_sr_data, tmp_path):
    clipped = build(tmp_path, tiny_sr_data, 'clipped', grad_clip_norm=1e-3, optim_g=SGD_LIKE_ADAM)
    reference = build(tmp_path, tiny_sr_data, 'reference', optim_g=SGD_LIKE_ADAM)
    [batch] = batches(1, size=2)
    before = weights(clipped)
    step(clipped, batch, 1, 1)

    reference.feed_data(batch)
    sum(reference.compute_losses().values()).backward()
    params = list(reference.get_bare_model(reference.net_g).parameters())
    raw_norm = float(torch.nn.utils.clip_grad_norm_(params, 1e-3, error_if_nonfinite=False))
    reference.optimizer_g.step()

    assert raw_norm > 1e-2  # the clip is active
    assert clipped.get_current_log()['grad_norm'] == pytest.approx(raw_norm, rel=1e-6)  # logged before clipping
    assert_relatively_close(grads(clipped), grads(reference))
    # torch's clip coefficient is max_norm / (norm + 1e-6): the clipped norm falls just short of max_norm.
    assert float(gradient_norms(list(grads(clipped).values()))[0]) == pytest.approx(1e-3 * raw_norm / (raw_norm + 1e-6),
                                                                             rel=1e-5)
    assert_relatively_close(weights(clipped), weights(reference))
    update, _ = gradient_norms([after - before[k] for k, after in weights(clipped).items() if after.is_floating_point()])
    assert float(update) == pytest.approx(1e-3, rel=1e-3)  # lr / eps x the clipped gradient


def test_gradient_norms_give_the_total_and_the_first_nonfinite_tensor():
    finite, nan, inf = torch.tensor([3.0, 4.0]), torch.tensor([1.0, float('nan')]), torch.tensor([float('inf')])
    assert [float(v) for v in gradient_norms([finite, torch.zeros(2, 2)])] == [5.0, -1]
    total, first = gradient_norms([finite, nan, inf])
    assert math.isnan(float(total)) and int(first) == 1
    assert [float(v) for v in gradient_norms([finite, inf])] == [math.inf, 1]
    assert [float(v) for v in gradient_norms([])] == [0.0, -1]


@pytest.mark.parametrize('value, must', [(0, '> 0'), (-1.0, '> 0'), (float('nan'), 'a finite number'),
                                         (float('inf'), 'a finite number'), ('1e-3', 'a number'), (True, 'a number')])
def test_bad_grad_clip_norm_is_a_config_error(value, must):
    """Where IRModel reads it (options that never went through the CLI's checks, e.g. a script's)."""
    assert grad_clip_option({}) is None and grad_clip_option({'grad_clip_norm': None}) is None
    assert grad_clip_option({'grad_clip_norm': 1}) == 1.0
    expected = rf"^option 'train.grad_clip_norm' must be {must}, got {re.escape(repr(value))}"
    with pytest.raises(ConfigError, match=expected):
        grad_clip_option({'grad_clip_norm': value})



class HostReads(TorchDispatchMode):
    """Sizes of the tensors read back to the host while active: scalar reads (item, bool, float, and torch's
    own conversions of a tensor to a Scalar argument, e.g. a tensor weight of ``_foreach_lerp_``) and
    ``tolist``. On CUDA each is a sync."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.sizes, self.active = [], False
        original = torch.Tensor.tolist
        monkeypatch.setattr(torch.Tensor, 'tolist', lambda t: (self.active and self.sizes.append(t.numel()))
                            or original(t))

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc_info):
        self.active = False
        return super().__exit__(*exc_info)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.sizes.append(args[0].numel())
        return func(*args, **(kwargs or {}))


def test_a_fused_adam_step_reads_nothing_back_and_the_log_reads_the_pending_steps_once(tiny_sr_data, tmp_path,
                                                                                       monkeypatch, warnings):
    model = build(tmp_path, tiny_sr_data, 'checks', batch=2, global_batch_size=4, grad_clip_norm=1e-3)
    assert model.optimizer_g.param_groups[0]['fused']  # IRModel's default Adam
    first, second = batches(2)
    reads = HostReads(monkeypatch)
    with reads:
        step(model, first, 2, 1)
    assert reads.sizes == []  # the step with its checks, clipping and EMA read nothing back: no sync
    bare = model.get_bare_model(model.net_g)
    bare.layers[0].residual_group.blocks[1].mlp.fc2.weight.register_hook(lambda grad: grad * float('nan'))
    before = weights(model), weights(model, ema=True), model.optimizer_g.state_dict()['state'][0]['step'].clone()
    with reads:
        step(model, second, 2, 2)
    assert reads.sizes == []
    assert same(weights(model), before[0]) and same(weights(model, ema=True), before[1])  # skipped on the device
    assert model.optimizer_g.state_dict()['state'][0]['step'] == before[2] == 1
    assert 'non-finite' not in warnings.text  # reported when the log is read

    with reads:
        log = model.get_current_log()
    assert reads.sizes == [2 * 3]  # one copy: the loss, the gradient norm and the first bad parameter of both steps
    assert set(log) == {'l_pix', 'grad_norm'} and all(type(v) is float for v in log.values())
    assert ('non-finite gradients at iter 2 (1 in a row, first in layers.0.residual_group.blocks.1.mlp.fc2.weight); '
            'step skipped') in warnings.text
    assert model.nonfinite_streak == 1 and math.isnan(log['grad_norm'])  # the last step's


def test_an_unfused_adam_step_reads_its_checks_at_once(tiny_sr_data, tmp_path, monkeypatch, warnings):
    """``optim_g.fused: false`` (or a training state of another Adam implementation) cannot skip on the device:
    the host reads the checks and decides, once per step, as do fp16 runs (the scaler decides there)."""
    model = build(tmp_path, tiny_sr_data, 'unfused', optim_g={'type': 'Adam', 'lr': 2e-4, 'fused': False})
    assert not model.optimizer_g.param_groups[0]['fused']
    first, second = batches(2, size=2)
    reads = HostReads(monkeypatch)
    with reads:
        step(model, first, 1, 1)
    assert 3 in reads.sizes and model.log_dict['grad_norm'] > 0  # read at once (torch's Adam reads its counters too)
    model.get_bare_model(model.net_g).conv_first.weight.register_hook(lambda grad: grad * float('nan'))
    before = weights(model)
    step(model, second, 1, 2)
    assert same(weights(model), before)
    assert 'non-finite gradients at iter 2 (1 in a row, first in conv_first.weight); step skipped' in warnings.text


def test_fp16_training_leaves_an_overflow_to_the_scaler(tiny_sr_data, tmp_path, warnings):
    """fp16 (CPU autocast here): an overflow of the scaled gradients is routine; the scaler skips the step and
    halves its scale, with no warning and no count against the patience."""
    model = build(tmp_path, tiny_sr_data, 'fp16', batch=2, precision='fp16')
    first, second = batches(2, size=2)
    step(model, first, 1, 1)
    scale = model.grad_scaler.get_scale()
    model.get_bare_model(model.net_g).conv_first.weight.register_hook(lambda grad: grad * float('inf'))
    before = weights(model)
    step(model, second, 1, 2)
    assert same(weights(model), before) and model.grad_scaler.get_scale() == scale / 2
    assert model.log_dict['grad_norm'] != model.log_dict['grad_norm'] or math.isinf(model.log_dict['grad_norm'])
    assert 'non-finite' not in warnings.text and model.nonfinite_streak == 0
    assert 'train.precision is fp16 on the CPU: oneDNN computes fp16 convolution weight gradients' in warnings.text


def test_fp16_training_skips_a_non_finite_loss_and_trains_on(tiny_sr_data, tmp_path, warnings):
    """fp16: a non-finite loss (not the scaler's routine overflow) is skipped and counted, and the scaler's
    state is closed for the step (its update), so that the next step can unscale again."""
    model = build(tmp_path, tiny_sr_data, 'fp16_nan', batch=2, precision='fp16')
    before, scale = weights(model), model.grad_scaler.get_scale()
    step(model, batches(1, size=2, nan_at=(0, 0))[0], 1, 1)
    assert same(weights(model), before) and model.grad_scaler.get_scale() == scale / 2
    assert 'non-finite l_pix at iter 1 (1 in a row); step skipped' in warnings.text
    step(model, batches(1, size=2)[0], 1, 2)
    assert model.nonfinite_streak == 0 and not same(weights(model), before)


def test_fp16_training_state_keeps_the_loss_scale(tiny_sr_data, tmp_path):
    """A resumed fp16 run continues from the scale its scaler backed off to, not from the initial 65536."""
    model = build(tmp_path, tiny_sr_data, 'fp16_state', batch=2, precision='fp16')
    model.get_bare_model(model.net_g).conv_first.weight.register_hook(lambda grad: grad * float('inf'))
    step(model, batches(1, size=2)[0], 1, 1)
    model.save_training_state(0, 1)
    state = torch.load(Path(model.opt['path']['training_states']) / '1.state', weights_only=False)
    resumed = build(tmp_path, tiny_sr_data, 'fp16_resumed', batch=2, precision='fp16')
    resumed.resume_training(state)
    assert resumed.grad_scaler.get_scale() == model.grad_scaler.get_scale() == 2.0**15


def test_pending_checks_are_read_after_at_most_max_pending_steps(tiny_sr_data, tmp_path, monkeypatch):
    model = build(tmp_path, tiny_sr_data, 'pending', batch=2)
    [batch] = batches(1, size=2)
    monkeypatch.setattr('basicsr_iln.models.ir_model.MAX_PENDING_CHECKS', 3)
    for it in range(1, 4):
        assert len(model.pending_checks) == it - 1
        step(model, batch, 1, it)
    assert model.pending_checks == [] and model.log_dict['grad_norm'] > 0
    assert MAX_PENDING_CHECKS == 100


def test_a_nan_in_one_micro_batch_skips_the_whole_step(tiny_sr_data, tmp_path, warnings):
    model = build(tmp_path, tiny_sr_data, 'nan_micro', batch=2, global_batch_size=4)
    before = weights(model)
    step(model, batches(1, nan_at=(0, 0))[0], 2, 1)  # image 0: in the first micro-batch
    assert same(weights(model), before) and same(weights(model, ema=True), weights(model))
    model.get_current_log()
    assert 'non-finite l_pix at iter 1 (1 in a row); step skipped' in warnings.text
    step(model, batches(1)[0], 2, 2)
    model.get_current_log()
    assert model.nonfinite_streak == 0 and not same(weights(model), before)


# --- the real train CLI ---------------------------------------------------------------------------------

TOTAL_ITER = 6  # 8 training crops: batch 4 (or 2 x 2 micro-batches) makes 2 steps per epoch


def cli_options(data, name, batch, **train):
    opt = model_options(data, name, batch=batch, total_iter=TOTAL_ITER, **train)
    opt['logger']['save_checkpoint_freq'] = 3
    return opt


def run_all(tmp_path, runs):
    """Run the train CLI on each {name: (options, extra CLI arguments)} at once, each to a clean end."""
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = {name: pool.submit(run_cli, 'train', write_yaml(tmp_path / f'{name}.yml', opt), tmp_path, *args)
                   for name, (opt, args) in runs.items()}
    for name, future in futures.items():
        result = future.result()
        assert result.returncode == 0, (name, result.stderr[-3000:])


def logged(log, key):
    """{iter: value} of ``key`` in the MessageLogger lines of a training log."""
    return {int(it): float(v) for it, v in re.findall(rf'iter:\s*(\d+), .*?{key}: ([-+.\de]+)', log)}


@pytest.mark.slow
def test_cli_accumulation_equals_large_batch_and_resumes_exactly(tiny_sr_data, tmp_path):
    run_all(tmp_path, {
        'large': (cli_options(tiny_sr_data, 'large', 4, global_batch_size=4), ()),
        'accumulated': (cli_options(tiny_sr_data, 'accumulated', 2, global_batch_size=4), ()),
        'stopped': (cli_options(tiny_sr_data, 'stopped', 2, global_batch_size=4),
                    ('--force_yml', 'train:total_iter=3')),  # stops right after its mid-epoch checkpoint at iter 3
    })
    exp = tmp_path / 'experiments'
    resumed = run_cli('train', tmp_path / 'stopped.yml', tmp_path, '--auto_resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'Resuming training from epoch 1, iter 3 (1 batches into the epoch)' in resumed.stderr

    logs = {name: read_log(exp / name) for name in ('large', 'accumulated')}
    assert 'global batch 4 = 4 per process x 1 processes x 1 accumulated micro-batches' in logs['large']
    assert 'global batch 4 = 2 per process x 1 processes x 2 accumulated micro-batches' in logs['accumulated']
    assert '2 iters/epoch, 3 epochs for 6 iters' in logs['accumulated']
    for log in logs.values():  # one logged iteration per optimizer step; MultiStepLR halves at its milestone
        iters = [int(i) for i in re.findall(r'iter:\s*(\d+), lr', log)]
        assert iters == list(range(1, TOTAL_ITER + 1))
        assert re.search(r'iter:\s*2, lr:\(2\.000e-04,\)', log) and re.search(r'iter:\s*3, lr:\(1\.000e-04,\)', log)
        assert all(v > 0 for v in logged(log, 'grad_norm').values()) and len(logged(log, 'grad_norm')) == TOTAL_ITER

    latest = {name: torch.load(exp / name / 'models' / 'net_g_latest.pth', weights_only=True)
              for name in ('large', 'accumulated', 'stopped')}
    for key in ('params', 'params_ema'):
        assert_relatively_close(latest['accumulated'][key], latest['large'][key])
    assert same(latest['stopped'], latest['accumulated'])  # resumed mid-epoch: bit-identical
    states = {name: torch.load(exp / name / 'training_states' / '6.state', weights_only=True)
              for name in ('large', 'accumulated')}
    for state in states.values():
        assert (state['iter'], state['epoch']) == (TOTAL_ITER, 2)
        assert state['optimizers'][0]['state'][0]['step'] == TOTAL_ITER
    assert same(states['accumulated']['schedulers'], states['large']['schedulers'])


@pytest.mark.slow
def test_cli_gradient_clipping_logs_the_norm_and_bounds_each_step(tiny_sr_data, tmp_path):
    """SGD-like steps and a small max norm: each step moves the weights by the max norm (lr / eps = 1)."""
    opt = cli_options(tiny_sr_data, 'clip', 2, global_batch_size=4, grad_clip_norm=1e-2, optim_g=SGD_LIKE_ADAM,
                      scheduler={'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5})
    opt['logger']['save_checkpoint_freq'] = 1
    run_all(tmp_path, {'clip': (opt, ())})
    exp = tmp_path / 'experiments' / 'clip'
    norms = logged(read_log(exp), 'grad_norm')
    assert sorted(norms) == list(range(1, TOTAL_ITER + 1)) and min(norms.values()) > 2e-2
    for it in range(1, TOTAL_ITER):
        old, new = (torch.load(exp / 'models' / f'net_g_{i}.pth', weights_only=True)['params'] for i in (it, it + 1))
        moved, _ = gradient_norms([new[k] - old[k] for k in new if new[k].is_floating_point()])
        assert float(moved) == pytest.approx(1e-2, rel=1e-3), it


# --- DDP: no all-reduce on the micro-batches before the last ------------------------------------------------

PER_PROCESS = 2


def ddp_rank(rank, port, opt_path, root, out_dir):
    """One gloo rank: a step of 2 micro-batches on its share of 8 samples, counting the all-reduces."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(NPROC))
    torch.set_num_threads(1)
    opt, _ = parse_options(str(root), is_train=True, argv=['-opt', str(opt_path), '--launcher', 'pytorch'])
    model = build_model(opt)
    buckets = []

    def counting_allreduce(state, bucket):
        buckets.append(bucket.index())
        return allreduce_hook(None, bucket)

    ddp = model.net_g._orig_mod if opt['compile'] else model.net_g
    assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)  # compiled: torch.compile around DDP
    ddp.register_comm_hook(None, counting_allreduce)
    [batch] = batches(1, size=NPROC * 2 * PER_PROCESS)
    mine = {k: v.chunk(NPROC)[rank] for k, v in batch.items()}  # 4 samples: 2 micro-batches of 2
    first, last = ({k: v.chunk(2)[i] for k, v in mine.items()} for i in range(2))
    model.feed_data(first)
    model.accumulate_gradients()
    after_first = len(buckets)
    model.feed_data(last)
    model.optimize_parameters(1)
    torch.save({'after_first': after_first, 'after_step': len(buckets), 'grads': grads(model)},
               out_dir / f'rank{rank}.pt')
    close_dist()


@pytest.fixture(scope='module', params=[False, {'backend': 'aot_eager'}], ids=['eager', 'compiled'])
def ddp_accumulation(request, tiny_sr_data, tmp_path_factory):
    """Compiled: torch.compile around DDP (dynamo's DDPOptimizer; aot_eager traces forward and backward as
    inductor would, without code generation)."""
    work = tmp_path_factory.mktemp('ddp_accumulation')
    opt = model_options(tiny_sr_data, 'ddp', batch=PER_PROCESS, global_batch_size=NPROC * 2 * PER_PROCESS)
    opt['compile'] = request.param
    opt_path = write_yaml(work / 'ddp.yml', opt)
    start_ranks(ddp_rank, (free_port(), opt_path, work, work), NPROC)
    return SimpleNamespace(work=work, ranks=load_ranks(work))


@pytest.mark.slow
def test_ddp_accumulation_all_reduces_once_per_step_and_equals_the_global_batch(ddp_accumulation, tmp_path,
                                                                                tiny_sr_data):
    for rank in ddp_accumulation.ranks:
        assert rank['after_first'] == 0  # the first micro-batch's backward ran under no_sync
        assert rank['after_step'] > 0
    single = build(tmp_path, tiny_sr_data, 'single', batch=NPROC * 2 * PER_PROCESS)
    step(single, batches(1, size=NPROC * 2 * PER_PROCESS)[0], 1, 1)
    for rank in ddp_accumulation.ranks:
        assert_relatively_close(rank['grads'], grads(single))
