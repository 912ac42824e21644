"""Option ``channels_last``: the networks, their inputs and nothing else change layout; gradients, checkpoints and
resumed optimizer states mean what they mean in the default layout."""
from pathlib import Path

import basicsr_iln  # noqa: F401  (before basicsr)
import pytest
import torch

from basicsr_iln.utils.errors import ConfigError
from basicsr_iln.utils.memory_format import match_state_layouts
from helpers import start_ranks, tiny_train_options, write_yaml
from test_distributed import BATCH, NPROC, first_step, free_port, load_ranks, spawned_rank
from test_training_steps import assert_relatively_close, batches, grads, step, weights
from test_training_steps import build as build_training_model


def build(tmp_path, data, name, channels_last):
    """test_training_steps' model, with top-level option ``channels_last`` (a YAML value) set through --force_yml."""
    return build_training_model(tmp_path, data, name, '--force_yml', f'channels_last={channels_last}')


def conv_weights(net):
    return {name: p for name, p in net.named_parameters() if p.dim() == 4}


def test_the_networks_and_their_inputs_are_laid_out_channels_last(tiny_sr_data, tmp_path):
    model = build(tmp_path, tiny_sr_data, 'nhwc', channels_last=True)
    for net in (model.get_bare_model(model.net_g), model.net_g_ema):
        weights_4d = conv_weights(net)
        assert weights_4d and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                                  for p in weights_4d.values())
    model.feed_data(batches(1)[0])
    assert model.lq.is_contiguous(memory_format=torch.channels_last) and model.gt.is_contiguous()
    default = build(tmp_path, tiny_sr_data, 'nchw', channels_last=False)
    assert all(p.is_contiguous() for p in conv_weights(default.get_bare_model(default.net_g)).values())


def test_gradients_equal_those_of_the_default_layout(tiny_sr_data, tmp_path):
    """Same seed, same batch: only the convolutions' summation order may differ."""
    models = [build(tmp_path, tiny_sr_data, f'grads_{cl}', channels_last=cl) for cl in (False, True)]
    batch = batches(1)[0]
    for model in models:
        model.feed_data(batch)
        model.accumulate_gradients()
    expected, actual = (grads(model) for model in models)
    assert_relatively_close(actual, expected)
    laid_out = {n: g for n, g in actual.items() if g.dim() == 4}
    assert laid_out and all(g.is_contiguous(memory_format=torch.channels_last) for g in laid_out.values())


@pytest.mark.slow
def test_ddp_in_channels_last_all_reduces_the_gradients_of_the_default_layout(tiny_sr_data, tmp_path):
    """2 gloo ranks in channels_last, each on half the batch: DDP's buckets hold the gradients of a single
    process on the whole batch in the default layout."""
    opt = tiny_train_options(tiny_sr_data, 'ddp_nhwc', drop_path_rate=0.0)  # no random drop-path draws per rank
    nhwc = write_yaml(tmp_path / 'nhwc.yml', dict(opt, channels_last=True))
    default = write_yaml(tmp_path / 'default.yml', dict(opt, name='single_nchw'))
    empty = tmp_path / 'no_checkpoints'
    empty.mkdir()
    start_ranks(spawned_rank, (free_port(), nhwc, tmp_path, [empty] * NPROC, tmp_path), NPROC)
    _, _, full = first_step(default, tmp_path, slice(0, NPROC * BATCH))
    for rank in load_ranks(tmp_path):
        assert rank['grads'].keys() == full.keys()
        assert all(g.is_contiguous(memory_format=torch.channels_last) for g in rank['grads'].values() if g.dim() == 4)
        for name, grad in rank['grads'].items():
            torch.testing.assert_close(grad, full[name], rtol=1e-4, atol=1e-7, msg=name)


def test_checkpoints_are_written_contiguous_and_load_into_either_layout(tiny_sr_data, tmp_path):
    model = build(tmp_path, tiny_sr_data, 'saved_nhwc', channels_last=True)
    step(model, batches(1)[0], 1, 1)
    model.save_network([model.net_g, model.net_g_ema], 'net_g', 1, param_key=['params', 'params_ema'])
    saved = torch.load(Path(model.opt['path']['models']) / 'net_g_1.pth', weights_only=True)
    assert all(t.is_contiguous() for key in ('params', 'params_ema') for t in saved[key].values())
    default = build(tmp_path, tiny_sr_data, 'loaded_nchw', channels_last=False)
    net = default.get_bare_model(default.net_g)
    net.load_state_dict(saved['params'])
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), model.get_bare_model(model.net_g).eval()(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('saved_channels_last', [False, True])
def test_a_state_resumed_in_the_other_layout_continues_as_in_its_own(tiny_sr_data, tmp_path, saved_channels_last):
    """Adam's moments from a run in one layout, resumed with ``channels_last`` switched, are laid out as their
    parameters before the first step: torch's fused Adam combines parameter, gradient and moments as flat
    memory, so moments in the other layout would update each weight with another weight's statistics."""
    data = batches(3)
    first = build(tmp_path, tiny_sr_data, f'first_{saved_channels_last}', channels_last=saved_channels_last)
    for it, batch in enumerate(data[:2], 1):
        step(first, batch, 1, it)
    first.save_training_state(0, 2)
    state = torch.load(Path(first.opt['path']['training_states']) / '2.state', weights_only=False)
    resumed = build(tmp_path, tiny_sr_data, f'resumed_{saved_channels_last}', channels_last=not saved_channels_last)
    resumed.get_bare_model(resumed.net_g).load_state_dict(first.get_bare_model(first.net_g).state_dict())
    resumed.resume_training(state)
    for model in (first, resumed):
        step(model, data[2], 1, 3)
    assert_relatively_close(weights(resumed), weights(first))


def test_match_state_layouts_relays_only_the_moments_in_another_layout():
    conv, linear = torch.nn.Conv2d(2, 3, 3), torch.nn.Linear(2, 2)
    params = list(conv.parameters()) + list(linear.parameters())
    optimizer = torch.optim.Adam(params, fused=True)
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    conv.to(memory_format=torch.channels_last)  # as a network built with the option would be laid out
    assert match_state_layouts(optimizer) == 2  # exp_avg and exp_avg_sq of the 4-D weight; step is a scalar
    state = optimizer.state[conv.weight]
    assert all(state[k].stride() == conv.weight.stride() for k in ('exp_avg', 'exp_avg_sq'))
    torch.testing.assert_close(state['exp_avg'], torch.full_like(conv.weight, 0.1))
    assert match_state_layouts(optimizer) == 0


def test_channels_last_must_be_a_boolean(tiny_sr_data, tmp_path):
    with pytest.raises(ConfigError, match="option 'channels_last' must be true or false, got 'yes'"):
        build(tmp_path, tiny_sr_data, 'bad', channels_last="'yes'")
