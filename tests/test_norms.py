"""The maths of the norm family: holistic statistics, homothety, homogeneity, batch independence."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import basicsr_iln  # noqa: F401
from basicsr_iln.archs.norms import (NORM_TYPES, Affine, HolisticLayerNorm, _CentredHolisticLayerNormFunction,
                                     _HolisticLayerNormFunction, build_branch_norm, build_stem_norm)
from basicsr_iln.archs.transformer_core import TransformerBlock

torch.manual_seed(0)


def tokens(b=3, length=64, c=16, scale=1.0):
    """Token sequences with per-token and per-channel structure, like features of an image."""
    return (torch.randn(b, length, c) * torch.rand(1, 1, c) * 4 + torch.randn(1, length, 1)) * scale


def test_ln_star_has_zero_mean_unit_variance_over_tokens_and_channels():
    y = HolisticLayerNorm(16, eps=1e-12)(tokens())
    mean, var = y.mean(dim=(1, 2)), y.var(dim=(1, 2), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(var, torch.ones(3), atol=1e-4, rtol=0)
    # ... but not per token, unlike LayerNorm: token differences survive.
    assert y.mean(dim=2).std() > 0.1


def test_ln_star_only_rescales_token_differences():
    """Homothety: y_i - y_j == (x_i - x_j) / sigma for every token pair (gamma=1, beta=0)."""
    x = tokens()
    norm = HolisticLayerNorm(16, eps=1e-12)
    y, sigma = norm.forward_with_scale(x)
    diff_x = x[:, :, None, :] - x[:, None, :, :]
    diff_y = y[:, :, None, :] - y[:, None, :, :]
    torch.testing.assert_close(diff_y * sigma[..., None], diff_x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sigma.flatten(), x.var(dim=(1, 2), unbiased=False).sqrt(), atol=1e-5, rtol=1e-5)


def test_per_token_layernorm_distorts_token_differences():
    x = tokens()
    y, _ = build_branch_norm('ln', 16)(x)
    ratios = (y[:, 1:] - y[:, :1]).norm(dim=-1) / (x[:, 1:] - x[:, :1]).norm(dim=-1)
    assert ratios.std() > 0.05  # different tokens are rescaled differently


def block(norm_type, eps=None, dim=16):
    torch.manual_seed(1)
    blk = TransformerBlock(dim, (8, 8), num_heads=2, window_size=4, shift_size=2, mlp_ratio=2, norm_type=norm_type,
                           norm_eps=eps)
    for p in blk.parameters():  # non-trivial affines and biases
        p.data.add_(0.1 * torch.randn_like(p))
    return blk.eval()


@pytest.mark.parametrize('a', [0.25, 3.7, 120.0])
def test_iln_block_is_positively_homogeneous(a):
    blk, x = block('iln', eps=1e-12), tokens(2, 64, 16)
    with torch.no_grad():
        torch.testing.assert_close(blk(a * x, (8, 8)), a * blk(x, (8, 8)), rtol=1e-4, atol=1e-5 * a)


def test_ln_block_is_not_homogeneous():
    blk, x = block('ln'), tokens(2, 64, 16)
    with torch.no_grad():
        gap = (blk(3.7 * x, (8, 8)) - 3.7 * blk(x, (8, 8))).abs().max()
    assert gap > 0.1


def test_iln_homogeneity_holds_up_to_eps():
    """With the default eps=1e-4 the identity is exact only for inputs whose variance dwarfs eps."""
    blk, x = block('iln'), tokens(2, 64, 16)
    with torch.no_grad():
        big = (blk(50 * x, (8, 8)) - 50 * blk(x, (8, 8))).abs().max() / (50 * blk(x, (8, 8))).abs().max()
        small = blk(1e-3 * x, (8, 8)) - 1e-3 * blk(x, (8, 8))
    assert big < 1e-4
    assert small.abs().max() > 1e-6  # eps dominates tiny inputs


@pytest.mark.parametrize('norm_type', ['iln', 'ln', 'ln_star', 'in', 'rms', 'layerscale'])
def test_sample_statistics_do_not_depend_on_the_batch(norm_type):
    blk, x = block(norm_type), tokens(3, 64, 16)
    with torch.no_grad():
        together = blk(x, (8, 8))
        alone = torch.cat([blk(x[i:i + 1], (8, 8)) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_batchnorm_couples_samples_in_training_mode():
    blk, x = block('bn').train(), tokens(3, 64, 16)
    with torch.no_grad():
        gap = (blk(x, (8, 8))[:1] - blk(x[:1], (8, 8))).abs().max()
    assert gap > 1e-3


def test_iln_statistics_are_float32_under_half_precision():
    """Features of magnitude 1e3 have variance 1e6, which overflows float16 (max 65504)."""
    norm = HolisticLayerNorm(16).half()
    x = tokens(scale=1e3).clamp(-6e4, 6e4).half()
    y, sigma = norm.forward_with_scale(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert sigma.dtype == torch.float32 and torch.isfinite(sigma).all() and sigma.min() > 255
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y, sigma = HolisticLayerNorm(16).forward_with_scale(tokens(scale=1e4).bfloat16())
    assert sigma.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize('grad', [False, True], ids=['inference', 'training'])
def test_iln_rescaling_under_fp16_autocast_keeps_a_std_above_the_fp16_range(grad):
    """Under autocast the std multiplies the branch in the stream's float32: a stream of std 1e5 (beyond float16's
    65504) gave NaN when the std was cast to the branch's float16. In backward the branch's float16 gradient is
    the std times the incoming one, which is the gradient scaler's to keep in range (here a loss scale of 1e-4,
    where the scaler would have backed off to)."""
    blk = block('iln')
    x = tokens(1, 64, 16, scale=1e5).requires_grad_(grad)
    with torch.set_grad_enabled(grad), torch.autocast('cpu', dtype=torch.float16):
        y = blk(x, (8, 8))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    if grad:
        (y.sum() * 1e-4).backward()
        assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in blk.parameters())


class FeatureMapPasses(TorchDispatchMode):
    """Names of the ops that read or write a tensor of ``numel`` elements (views excluded)."""

    def __init__(self, numel):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in [*(out if isinstance(out, (tuple, list)) else [out]), *args] if torch.is_tensor(t)]
        if not func.is_view and func is not torch.ops.aten.detach.default and any(
                t.numel() == self.numel for t in tensors):
            self.ops.append(func.overloadpacket.__name__)
        return out


def test_ln_star_off_the_cpu_runs_few_passes_and_no_layer_norm_kernel_over_whole_images():
    """CUDA's LayerNorm kernels give each normalised row one thread block; over (L, C) a row is a whole image.
    Off the CPU (here the meta device stands in for CUDA) LN* runs as device-wide reductions and elementwise
    passes: 3 over the feature map forward and 5 backward (autograd through the plain formula: 7 and 19)."""
    norm = HolisticLayerNorm(16)
    for device, uses_layer_norm in (('cpu', True), ('meta', False)):
        x = tokens().to(device).requires_grad_()
        with FeatureMapPasses(x.numel()) as forward:
            y, sigma = norm.to(device).forward_with_scale(x)
        grads = torch.ones_like(y), torch.ones_like(sigma)
        with FeatureMapPasses(x.numel()) as backward:
            torch.autograd.backward([y, sigma], grads)
        ops = forward.ops + backward.ops
        assert ('native_layer_norm' in ops) == uses_layer_norm, (device, ops)
        assert ('native_layer_norm_backward' in ops) == uses_layer_norm, (device, ops)
        if not uses_layer_norm:
            assert (len(forward.ops), len(backward.ops)) == (3, 5), ops
        with torch.no_grad(), FeatureMapPasses(x.numel()) as inference:
            norm.forward_with_scale(x)
        assert len(inference.ops) <= 3 and 'native_layer_norm' not in inference.ops[1:], inference.ops


@pytest.mark.parametrize('use_std', [True, False])
def test_ln_star_of_other_devices_has_exact_gradients(use_std):
    """The off-CPU function's hand-written backward against finite differences (float64), and its values and
    gradients against the CPU's function (float32), with and without a gradient for the std."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 10, 6, generator=gen) * 3 + 5).double().requires_grad_()
    gamma, beta = (torch.randn(6, generator=gen).double().requires_grad_() for _ in range(2))

    def outputs(function, *args):
        y, std = function.apply(*args, 1e-4)
        return (y, std) if use_std else y

    assert torch.autograd.gradcheck(lambda *a: outputs(_CentredHolisticLayerNormFunction, *a), (x, gamma, beta))
    results = []
    grad_y, grad_std = torch.randn(x.shape, generator=gen), torch.randn(2, 1, 1, generator=gen)
    for function in (_CentredHolisticLayerNormFunction, _HolisticLayerNormFunction):
        leaves = [t.detach().float().requires_grad_() for t in (x, gamma, beta)]
        y, std = function.apply(*leaves, 1e-4)
        torch.autograd.backward([y, std] if use_std else [y], [grad_y, grad_std] if use_std else [grad_y])
        results.append((y, std, *(t.grad for t in leaves)))
    for ours, cpu in zip(*results):
        torch.testing.assert_close(ours, cpu, rtol=1e-5, atol=1e-5)


def test_residual_scales_of_the_ablations_and_scalings():
    x = tokens()
    _, token_std = build_branch_norm('ln_rescale', 16).forward_with_scale(x)
    # eps of the i-LN family (the ablation changes i-LN's holistic statistics only)
    torch.testing.assert_close(token_std.squeeze(-1), (x.var(-1, unbiased=False) + 1e-4).sqrt())
    assert build_branch_norm('ln_star', 16).forward_with_scale(x)[1] is None
    assert build_branch_norm('ln', 16).forward_with_scale(x)[1] is None
    assert torch.all(build_branch_norm('layerscale', 16).forward_with_scale(x)[1] == 1e-4)
    y, alpha = build_branch_norm('rezero', 16).forward_with_scale(x)
    assert y is x and alpha.item() == 0.0


@pytest.mark.parametrize('norm_type', NORM_TYPES)
def test_branch_norms_return_their_scale_through_module_calls(norm_type):
    """Blocks call branch norms as modules, so forward hooks (analysis, profilers) see them; stems give y."""
    branch, stem = build_branch_norm(norm_type, 16), build_stem_norm(norm_type, 16)
    seen = []
    branch.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = tokens()
    y, scale = branch(x)
    assert len(seen) == 1 and seen[0] is x
    torch.testing.assert_close(y, branch.forward_with_scale(x)[0])
    assert (scale is None) == (branch.forward_with_scale(x)[1] is None)
    assert isinstance(stem(x), torch.Tensor)


def test_rezero_block_starts_as_identity():
    blk = TransformerBlock(16, (8, 8), 2, window_size=4, norm_type='rezero')
    x = tokens(2, 64, 16)
    torch.testing.assert_close(blk(x, (8, 8)), x)


def test_iln_stems_are_affine_only_with_official_key_names():
    stem = build_stem_norm('iln', 16)
    assert isinstance(stem, Affine) and set(stem.state_dict()) == {'gamma', 'beta'}
    assert set(build_branch_norm('iln', 16).state_dict()) == {'gamma', 'beta'}
    assert set(build_branch_norm('ln', 16).state_dict()) == {'weight', 'bias'}
    x = tokens()
    torch.testing.assert_close(stem(x), x)  # identity at initialisation: the image's scale is kept


@pytest.mark.parametrize('norm_type', NORM_TYPES)
def test_every_norm_type_trains_a_block(norm_type):
    blk = block(norm_type).train()
    x = tokens(2, 64, 16).requires_grad_()
    out = blk(x, (8, 8))
    out.square().mean().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in blk.parameters())


def test_unknown_norm_type_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown norm_type 'layernorm'.*ln, iln, ln_star"):
        build_branch_norm('layernorm', 16)
