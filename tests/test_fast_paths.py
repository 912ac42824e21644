"""The speed-motivated code paths compute the same function as the plain formulas they replace:
i-LN's one-kernel normalisation + std, the explicit CPU training attention, row-major token layout, the
shift mask kept for img_size, the stored relative-position bias of compiled graphs, CUDA's padded head dims,
the channels_last pixel shuffle of compiled CPU graphs."""
import pytest
import torch
import torch.nn.functional as F

from basicsr_iln.archs.chunking import chunked_inference
from basicsr_iln.archs.drct_arch import DRCT
from basicsr_iln.archs.hat_arch import HAT, overlapping_relative_position_index
from basicsr_iln.archs.norms import HolisticLayerNorm, _HolisticLayerNormFunction
from basicsr_iln.archs.swinir_arch import SwinIR_iLN
from basicsr_iln.archs.transformer_core import (FUSED_HEAD_DIM_MULTIPLE, ChannelsLastPixelShuffle,
                                                _explicit_biased_attention, _folded_attention, biased_attention,
                                                relative_position_index, shifted_window_mask,
                                                stored_relative_position_bias)
from helpers import in_fork
from test_chunked_inference import ARCHS


def reference_holistic(norm, x):
    """The textbook i-LN: LayerNorm over (L, C), per-channel affine, std from a separate var_mean."""
    var, _ = torch.var_mean(x, dim=(1, 2), unbiased=False, keepdim=True)
    return F.layer_norm(x, x.shape[1:], eps=norm.eps) * norm.gamma + norm.beta, torch.sqrt(var + norm.eps)


@pytest.mark.parametrize('rescale', [True, False])
def test_holistic_norm_matches_the_reference_formula_with_gradients(rescale):
    torch.manual_seed(0)
    norm = HolisticLayerNorm(16, rescale=rescale)
    with torch.no_grad():
        norm.gamma.add_(0.3 * torch.randn(16))
        norm.beta.add_(0.3 * torch.randn(16))
    x = torch.randn(3, 40, 16) * torch.rand(1, 1, 16) * 5 + 2
    grad_y, grad_std = torch.randn(3, 40, 16), torch.randn(3, 1, 1)
    results = []
    for forward in (norm.forward_with_scale, lambda v: reference_holistic(norm, v)):
        leaf = x.clone().requires_grad_()
        norm.zero_grad()
        y, std = forward(leaf)
        # ln_star (no rescale) returns no std, so the std's gradient must not reach x.
        outputs, grads = ([y, std], [grad_y, grad_std]) if rescale else ([y], [grad_y])
        torch.autograd.backward(outputs, grads)
        results.append((y, std if rescale else None, leaf.grad, norm.gamma.grad, norm.beta.grad))
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_holistic_function_gradcheck():
    torch.manual_seed(0)
    x = (torch.randn(2, 6, 5, dtype=torch.float64) * 3 + 1).requires_grad_()
    gamma, beta = (torch.randn(5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda *a: _HolisticLayerNormFunction.apply(*a, 1e-4), (x, gamma, beta))


def test_holistic_norm_inference_path_and_frozen_affine_match_the_reference():
    """Without autograd the norm skips the autograd.Function; with a frozen affine and a
    non-contiguous incoming gradient (as after a transpose) x's gradient is still exact."""
    torch.manual_seed(0)
    norm = HolisticLayerNorm(16)
    with torch.no_grad():
        norm.gamma.add_(0.3 * torch.randn(16))
    x = torch.randn(3, 40, 16) * 4 + 1
    with torch.no_grad():
        for ours, ref in zip(norm.forward_with_scale(x), reference_holistic(norm, x)):
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    norm.requires_grad_(False)
    grad_y = torch.randn(3, 16, 40).transpose(1, 2)
    grads = []
    for forward in (norm.forward_with_scale, lambda v: reference_holistic(norm, v)):
        leaf = x.clone().requires_grad_()
        y, std = forward(leaf)
        torch.autograd.backward([y, std], [grad_y, torch.randn(3, 1, 1, generator=torch.Generator().manual_seed(1))])
        grads.append(leaf.grad)
    torch.testing.assert_close(*grads, rtol=1e-5, atol=1e-5)


def fused_attention(q, k, v, bias, mask):
    """torch's SDPA with the per-window mask expanded, as biased_attention builds it for inference."""
    attn_mask = (bias[None] if mask is None else
                 (bias[None] + mask[:, None]).repeat(q.shape[0] // mask.shape[0], 1, 1, 1))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


@pytest.mark.parametrize('with_mask', [True, False])
def test_explicit_training_attention_matches_fused_attention(with_mask):
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 2, 16, 8) for _ in range(3))  # 2 images x 3 windows
    bias = torch.randn(2, 16, 16)
    mask = torch.zeros(3, 16, 16).masked_fill(torch.rand(3, 16, 16) > 0.7, -100.0) if with_mask else None
    results = []
    for attention in (lambda *a: _explicit_biased_attention(*a, 0.0, None), fused_attention):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
        out = attention(*leaves, mask)
        # randn_like: no generator before torch 2.6
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
        results.append([out] + [t.grad for t in leaves])
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_training_on_cpu_takes_the_explicit_attention_and_inference_the_fused_one(monkeypatch):
    calls = []
    monkeypatch.setattr('basicsr_iln.archs.transformer_core._explicit_biased_attention',
                        lambda *a: calls.append('explicit') or _explicit_biased_attention(*a))
    q = k = v = torch.randn(2, 2, 16, 8)
    bias = torch.randn(2, 16, 16, requires_grad=True)
    biased_attention(q, k, v, bias)
    with torch.no_grad():
        biased_attention(q, k, v, bias)
    assert calls == ['explicit']


@pytest.mark.parametrize('norm_type', ['iln', 'ln', 'none'])
def test_token_stream_stays_row_major(norm_type):
    """Affine-only or absent stem norms must not hand the transposed PatchEmbed view to the body."""
    net = SwinIR_iLN(img_size=16, window_size=4, depths=[2, 2], embed_dim=12, num_heads=[2, 2], mlp_ratio=2, upscale=2,
                     upsampler='pixelshuffle', norm_type=norm_type)
    seen = []
    for layer in net.layers:
        layer.register_forward_hook(lambda module, args, out: seen.append(out.is_contiguous()))
    net(torch.rand(1, 3, 16, 16))
    assert seen == [True, True]


@pytest.mark.parametrize('arch', ['SwinIR', 'HAT', 'DRCT'])
def test_kept_shift_mask_is_the_computed_one_and_used_at_its_size_only(arch):
    """At ``img_size`` the networks use the shift mask kept at construction instead of computing it; the
    output is the same, and at other sizes the mask is computed for that size."""
    kwargs = dict(img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2, upscale=2,
                  upsampler='pixelshuffle', norm_type='iln')
    torch.manual_seed(0)
    net = {'SwinIR': SwinIR_iLN, 'HAT': lambda **kw: HAT(squeeze_factor=4, **kw), 'DRCT': DRCT}[arch](**kwargs).eval()
    kept = net.shift_mask((16, 16), 'cpu')
    assert kept is net.kept_shift_mask and torch.equal(kept, shifted_window_mask((16, 16), 4, 2))
    assert 'kept_shift_mask' not in net.state_dict()  # the released layouts have no such key
    other = net.shift_mask((8, 12), 'cpu')
    assert other.shape == (6, 16, 16) and torch.equal(other, shifted_window_mask((8, 12), 4, 2))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        with_kept = net(x)
        net.keep_shift_mask((8, 8))  # another size kept (a training patch): 16 x 16 computes its mask
        assert net.shift_mask((8, 8), 'cpu') is net.kept_shift_mask
        assert torch.equal(net(x), with_kept)
        net.keep_shift_mask((6, 7))  # inputs of 6 x 7 are padded to 8 x 8
        assert net.kept_mask_size == (8, 8) and torch.equal(net(x), with_kept)


@pytest.mark.slow
@pytest.mark.parametrize('arch', ['SwinIR', 'HAT', 'DRCT'])
def test_compiled_iln_network_gives_the_eager_values_and_gradients(arch):
    """Under torch.compile i-LN runs as plain differentiable ops (which inductor fuses) instead of its custom
    autograd functions, and the bias gathers are the stored-bias op (HAT's OCAB index has negative entries);
    ``aot_eager`` traces forward and backward as inductor would, without code generation.
    In a fork (helpers.in_fork): compiled autograd would leave this test process unable to fork autograd."""
    in_fork(lambda: _compiled_equals_eager(arch, 'iln'))


@pytest.mark.slow
@pytest.mark.parametrize('norm_type', ['ln', 'iln'])
@pytest.mark.parametrize('arch', ['SwinIR', 'HAT', 'DRCT'])
def test_compiled_network_under_bf16_autocast_gives_the_eager_values(arch, norm_type):
    """Under CPU bf16 autocast the compiled graph keeps the float32 residual stream too (``residual_stream``, which
    dynamo must trace, not fold away). LN: the same outputs as eager; i-LN: as close as its plain ops and its
    functions allow, which round differently in float32 before the next bf16 product (outputs up to 7e-5 relative
    here; a stream left in bf16 by either side moves LN's outputs by 9e-4). Gradients: within bf16's reach (with
    the perturbed affine parameters DRCT i-LN's differ by up to 8e-3 relative); float32: the test above."""
    in_fork(lambda: _compiled_equals_eager(arch, norm_type, torch.bfloat16))


def _compiled_equals_eager(arch, norm_type, autocast_dtype=None):
    kwargs = dict(img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2, upscale=2,
                  upsampler='pixelshuffle', norm_type=norm_type, drop_path_rate=0.0)
    torch.manual_seed(0)
    net = {'SwinIR': SwinIR_iLN, 'HAT': lambda **kw: HAT(squeeze_factor=4, **kw), 'DRCT': DRCT}[arch](**kwargs)
    with torch.no_grad():  # affine parameters away from their initial 1 and 0, so that each one matters
        for name, param in net.named_parameters():
            if name.endswith(('gamma', 'beta')):
                param.add_(0.3 * torch.randn_like(param))
    x, target = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    results = []
    for run in (net, torch.compile(net, backend='aot_eager', dynamic=False)):
        net.zero_grad()
        with torch.autocast('cpu', dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            out = run(x)
        F.l1_loss(out.float(), target).backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    (eager, eager_grads), (compiled, compiled_grads) = results
    if autocast_dtype is None:
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
        for name, grad in eager_grads.items():
            torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        return
    assert (compiled - eager).norm() <= 2e-4 * eager.norm()
    for name, grad in eager_grads.items():
        assert (compiled_grads[name] - grad).norm() <= 2e-2 * grad.norm() + 1e-9, name


@pytest.mark.slow
def test_compiled_graphs_gather_the_bias_with_the_stored_bias_op():
    """The op passes torch's custom-op checks (schema, fake tensor, autograd registration, AOT dispatch) for
    SwinIR's index and HAT's overlapping one, and a compiled block calls it instead of inlining the gather.
    In a fork (helpers.in_fork), as the compiled tests above."""
    in_fork(_stored_bias_op_checks)


def _stored_bias_op_checks():
    torch.manual_seed(0)
    for index, entries in ((relative_position_index(4), 7 * 7), (overlapping_relative_position_index(4, 6), 9 * 9)):
        table = torch.randn(entries, 3, requires_grad=True)
        torch.library.opcheck(stored_relative_position_bias, (table, index, *index.shape))
        reference = table[index.view(-1)].view(*index.shape, 3).permute(2, 0, 1)
        grad = torch.randn_like(reference)
        stored = stored_relative_position_bias(table, index, *index.shape)
        torch.testing.assert_close(stored, reference)
        expected, = torch.autograd.grad(reference, table, grad)
        torch.testing.assert_close(torch.autograd.grad(stored, table, grad)[0], expected)

    graph_ops = []

    def recording_backend(gm, example_inputs):
        graph_ops.extend(node.target for node in gm.graph.nodes)
        return gm

    net = SwinIR_iLN(img_size=8, window_size=4, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2, upscale=2,
                     upsampler='pixelshuffle')
    torch.compile(net, backend=recording_backend, dynamic=False)(torch.rand(1, 3, 8, 8))
    assert graph_ops.count(torch.ops.basicsr_iln.relative_position_bias.default) == 2  # one per block


@pytest.mark.parametrize('factor', [2, 3])
def test_pixel_shuffle_is_laid_out_channels_last_under_compile_with_the_same_values_and_gradient(factor):
    """Compiled on CPU, the shuffle's output is channels_last (what lets inductor gather it in runs and hand it
    to the next convolution as it is), with F.pixel_shuffle's values and input gradient; eagerly it is
    F.pixel_shuffle, NCHW. In a fork (helpers.in_fork): a compiled forward in grad mode."""
    in_fork(lambda: _pixel_shuffle_checks(factor))


def _pixel_shuffle_checks(factor):
    torch.manual_seed(0)
    x = torch.randn(2, 3 * factor**2, 5, 4, requires_grad=True)
    grad = torch.randn(2, 3, 5 * factor, 4 * factor)
    expected = F.pixel_shuffle(x, factor)
    expected_grad, = torch.autograd.grad(expected, x, grad)
    shuffle = ChannelsLastPixelShuffle(factor)
    eager = shuffle(x)
    assert eager.is_contiguous() and torch.equal(eager, expected)
    compiled = torch.compile(shuffle, backend='aot_eager', dynamic=False)(x)
    assert compiled.is_contiguous(memory_format=torch.channels_last) and not compiled.is_contiguous()
    assert torch.equal(compiled, expected)
    assert torch.equal(torch.autograd.grad(compiled, x, grad)[0], expected_grad)


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_every_pixel_shuffle_upsampler_shuffles_channels_last_and_keeps_the_released_keys(arch):
    """x2, x3, x4 (two shuffles) and the one-step upsampler of each network: each shuffle is
    ChannelsLastPixelShuffle, which has no parameters, so the upsampler's state-dict keys are BasicSR's (the
    released checkpoints' keys)."""
    for upscale, upsampler, keys in ((2, 'pixelshuffle', ['0.bias', '0.weight']),
                                     (3, 'pixelshuffle', ['0.bias', '0.weight']),
                                     (4, 'pixelshuffle', ['0.bias', '0.weight', '2.bias', '2.weight']),
                                     (3, 'pixelshuffledirect', ['0.bias', '0.weight'])):
        net = ARCHS[arch]('iln', upscale=upscale, upsampler=upsampler)
        shuffles = [m for m in net.upsample.modules() if isinstance(m, torch.nn.PixelShuffle)]
        assert shuffles and all(type(m) is ChannelsLastPixelShuffle for m in shuffles), (upscale, upsampler)
        assert sorted(net.upsample.state_dict()) == keys


@pytest.mark.parametrize('windows', [1, 3])
@pytest.mark.parametrize('head_dim', [30, 12, 16])
def test_folded_attention_equals_the_explicit_one_with_gradients(head_dim, windows):
    """The windows folded into heads and the zero-padded head dim (CUDA's fused kernels need a multiple of 8;
    16 is not padded) change nothing: values and the gradients of q, k, v and the learned bias are those of the
    explicit attention, with and without a shift mask. The bias is laid out as the networks gather it, heads
    innermost."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2 * windows, 3, 16, head_dim, generator=gen, requires_grad=True) for _ in range(3))
    gathered = torch.randn(16, 16, 3, generator=gen, requires_grad=True)
    bias = gathered.permute(2, 0, 1)
    mask = torch.randn(windows, 16, 16, generator=gen) if windows > 1 else None
    grad = torch.randn(2 * windows, 3, 16, head_dim, generator=gen)
    results = []
    for attention in (_explicit_biased_attention, _folded_attention):
        out = attention(q, k, v, bias, mask, 0.0, None)
        results.append((out, torch.autograd.grad(out, (q, k, v, gathered), grad)))
    (reference, reference_grads), (padded, padded_grads) = results
    torch.testing.assert_close(padded, reference)
    for got, expected in zip(padded_grads, reference_grads):
        torch.testing.assert_close(got, expected)


def test_attention_off_the_cpu_pads_unaligned_head_dims_only_and_folds_windows_into_heads(monkeypatch):
    """On CUDA (the meta device stands in) a head dim of 30 reaches SDPA padded to 32; the CPU keeps 30, and an
    aligned head dim is never padded. Off the CPU the windows are heads and the bias + mask is stored once for
    both images, not once per image."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, *args, **kwargs):
        seen.append((q.shape[-1], tuple(kwargs['attn_mask'].shape)))
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', recording_sdpa)
    for device, head_dim in (('meta', 30), ('cpu', 30), ('meta', 16)):
        q = torch.randn(4, 3, 16, head_dim, device=device)  # 2 images x 2 windows
        bias, mask = torch.zeros(3, 16, 16, device=device), torch.zeros(2, 16, 16, device=device)
        with torch.no_grad():
            assert biased_attention(q, q, q, bias, mask).shape == q.shape
    assert seen == [(32, (1, 6, 16, 16)), (30, (4, 3, 16, 16)), (16, (1, 6, 16, 16))] and FUSED_HEAD_DIM_MULTIPLE == 8



@pytest.mark.parametrize('norm_type', ['ln', 'iln'])
@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_every_arch_runs_the_branches_cuda_takes(arch, norm_type):
    """The meta device takes CUDA's branches (heads padded and windows folded into heads, i-LN's off-CPU
    function) with the layouts the networks really produce (a gathered bias, q, k, v permuted out of one
    projection): a training step and an inference of each network run there, also in chunks of windows, so a
    layout only those branches meet fails here rather than first on a GPU. Their values on CUDA:
    tests/test_cuda.py."""
    net = ARCHS[arch](norm_type).to('meta')
    x = torch.randn(2, 3, 24, 20, device='meta')  # padded to a multiple of the window inside
    out = net.train()(x)
    out.mean().backward()
    assert out.shape == (2, 3, 48, 40)
    assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():
        assert net.eval()(x).shape == out.shape
        for budget in (64, 100, 600):  # one window, parts of an image, whole images: the folded mask's slices
            with chunked_inference(budget):
                assert net(x).shape == out.shape
