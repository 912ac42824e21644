"""BatchNorm (``norm_type: bn``): the EMA network carries averaged running statistics, so validation and
testing do not normalise with identity statistics; under DDP (2 gloo processes) ``train.sync_bn``
gives every rank the statistics and gradients of one process on the concatenated batch."""
import os
from types import SimpleNamespace

import pytest
import torch

from basicsr_iln.archs.norms import BatchNorm  # basicsr_iln before basicsr (see compat.py)
from basicsr_iln.train import build_model
from basicsr_iln.utils.dist import close_dist
from basicsr_iln.utils.errors import ConfigError
from basicsr_iln.utils.network_config import build_network_checked
from basicsr_iln.utils.options import parse_options
from helpers import run_cli, start_ranks, tiny_train_options, write_yaml
from test_distributed import BATCH, NPROC, first_step, free_port, load_ranks

CHANNELS = 6


def bn_options(data, name, **train):
    opt = tiny_train_options(data, name, norm_type='bn', drop_path_rate=0.0)
    opt['train'].update(train)
    return opt


def bn_model(data, root, **train):
    opt, _ = parse_options(str(root), is_train=True, argv=['-opt', str(write_yaml(root / 'train.yml',
                                                                                  bn_options(data, 'bn', **train)))])
    return build_model(opt)


def batch_norm_buffers(state):
    return {k: v for k, v in state.items() if 'running_' in k or 'num_batches_tracked' in k}


def test_ema_averages_parameters_and_batch_norm_statistics(tiny_sr_data, tmp_path):
    model = bn_model(tiny_sr_data, tmp_path)
    net, ema, decay = model.get_bare_model(model.net_g), model.net_g_ema, 0.75
    expected = {k: v.double() for k, v in ema.state_dict().items() if v.is_floating_point()}
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for step in range(1, 4):
            net(torch.rand(2, 3, 16, 16, generator=gen) * step)  # training mode: the running statistics move
            for p in net.parameters():
                p.add_(0.01 * step)
            model.model_ema(decay)
            for k, v in net.state_dict().items():
                if v.is_floating_point():
                    expected[k] = decay * expected[k] + (1 - decay) * v.double()
    state = ema.state_dict()
    buffers = batch_norm_buffers(state)
    assert buffers and not any(torch.equal(v, torch.ones_like(v)) for k, v in buffers.items() if 'running_var' in k)
    for k, value in expected.items():
        torch.testing.assert_close(state[k].double(), value, rtol=1e-6, atol=1e-7, msg=k)
    assert all(int(v) == 3 for k, v in buffers.items() if 'num_batches_tracked' in k)  # copied, not averaged

    model.model_ema(0)
    for k, value in net.state_dict().items():
        assert torch.equal(state[k], value), k


def test_sync_bn_option_must_be_a_bool(tiny_sr_data, tmp_path):
    with pytest.raises(ConfigError, match=r"option 'train.sync_bn' must be true or false, got 'yes' \(str\)"):
        bn_model(tiny_sr_data, tmp_path, sync_bn='yes')


@pytest.mark.slow
def test_trained_ema_network_is_evaluated_with_its_batch_statistics(tiny_sr_data, tmp_path):
    opt = bn_options(tiny_sr_data, 'bn_cli', ema_decay=0.5)  # a short memory, so 4 iterations move the statistics
    result = run_cli('train', write_yaml(tmp_path / 'train.yml', opt), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / 'experiments' / 'bn_cli' / 'models' / 'net_g_latest.pth', weights_only=True)
    trained, averaged = batch_norm_buffers(ckpt['params']), batch_norm_buffers(ckpt['params_ema'])
    assert averaged.keys() == trained.keys() and averaged
    for k, value in averaged.items():
        if 'num_batches_tracked' in k:
            assert int(value) == int(trained[k]) == opt['train']['total_iter']
            continue
        # Running statistics grow about linearly from 0/1 over 4 steps (momentum 0.1); their EMA of decay 0.5
        # is then ~3/4 of the way from the identity statistics to the trained network's, never at 0/1.
        identity = torch.ones_like(value) if 'running_var' in k else torch.zeros_like(value)
        assert (value - trained[k]).norm() < 0.5 * (identity - trained[k]).norm(), k

    ema = build_network_checked(opt['network_g']).eval()
    ema.load_state_dict(ckpt['params_ema'])
    identity_stats = build_network_checked(opt['network_g']).eval()
    identity_stats.load_state_dict(ckpt['params_ema'])
    for module in identity_stats.modules():
        if isinstance(module, BatchNorm):
            module.reset_running_stats()
    lq = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ema(lq) - identity_stats(lq)).abs().max() > 1e-2


def synced_layer_step(x, probe, sync):
    """Two training steps of a BatchNorm on ``x`` (one rank's slice), then the backward of ``(y * probe).sum()``."""
    torch.manual_seed(0)
    bn = BatchNorm(CHANNELS)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    if sync:
        BatchNorm.synchronize(bn)
    x = x.clone().requires_grad_()
    bn(x * 0.5)
    y = bn(x)
    (y * probe).sum().backward()
    return {'y': y.detach(), 'x_grad': x.grad, 'weight_grad': bn.weight.grad, 'bias_grad': bn.bias.grad,
            **bn.state_dict()}


def layer_batch():
    """(x, probe) of the whole batch: (NPROC * BATCH, L, C) tokens with a large mean."""
    gen = torch.Generator().manual_seed(1)
    shape = (NPROC * BATCH, 10, CHANNELS)
    return torch.randn(shape, generator=gen) * 3 + 20, torch.randn(shape, generator=gen)


def spawned_rank(rank, port, opt_path, root, out_dir):
    """One DDP rank (gloo): the IRModel's first step on its slice of the batch (the CLI's option parsing and
    model build, so ``train.sync_bn`` at its default), then bare BatchNorm layers with and without sync."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(NPROC))
    torch.set_num_threads(1)
    part = slice(rank * BATCH, (rank + 1) * BATCH)
    model, _, grads = first_step(opt_path, root, part, '--launcher', 'pytorch')
    x, probe = layer_batch()
    torch.save({'grads': grads, 'buffers': batch_norm_buffers(model.get_bare_model(model.net_g).state_dict()),
                'layer': {sync: synced_layer_step(x[part], probe[part], sync) for sync in (True, False)}},
               out_dir / f'rank{rank}.pt')
    close_dist()


@pytest.fixture(scope='module')
def spawned(tiny_sr_data, tmp_path_factory):
    work = tmp_path_factory.mktemp('sync_bn')
    opt_path = write_yaml(work / 'train.yml', bn_options(tiny_sr_data, 'sync_bn'))
    start_ranks(spawned_rank, (free_port(), opt_path, work, work), NPROC)
    return SimpleNamespace(work=work, opt_path=opt_path, ranks=load_ranks(work))


@pytest.mark.slow
def test_synced_batch_norm_equals_one_process_on_the_whole_batch(spawned):
    x, probe = layer_batch()
    whole = synced_layer_step(x, probe, sync=False)  # no process group here: plain BatchNorm1d
    parts = [slice(r * BATCH, (r + 1) * BATCH) for r in range(NPROC)]
    for rank, part in zip(spawned.ranks, parts):
        synced = rank['layer'][True]
        for name in ('y', 'x_grad'):
            torch.testing.assert_close(synced[name], whole[name][part], rtol=1e-5, atol=1e-5, msg=name)
        for name in ('running_mean', 'running_var', 'num_batches_tracked'):
            torch.testing.assert_close(synced[name], whole[name], rtol=1e-5, atol=1e-5, msg=name)
    for name in ('weight_grad', 'bias_grad'):  # affine gradients are per rank until DDP sums them
        torch.testing.assert_close(sum(r['layer'][True][name] for r in spawned.ranks), whole[name], rtol=1e-5,
                                   atol=1e-5, msg=name)
    local = spawned.ranks[0]['layer'][False]
    assert not torch.allclose(local['y'], whole['y'][parts[0]], atol=1e-3)
    assert not torch.allclose(local['running_var'], whole['running_var'], atol=1e-3)


@pytest.mark.slow
def test_ddp_with_sync_bn_equals_one_process_on_the_double_batch(spawned):
    model, _, full = first_step(spawned.opt_path, spawned.work, slice(0, NPROC * BATCH))
    buffers = batch_norm_buffers(model.get_bare_model(model.net_g).state_dict())
    for rank in spawned.ranks:
        for name, grad in rank['grads'].items():
            torch.testing.assert_close(grad, full[name], rtol=1e-4, atol=1e-7, msg=name)
        for name, value in rank['buffers'].items():
            torch.testing.assert_close(value, buffers[name], rtol=1e-5, atol=1e-6, msg=name)
