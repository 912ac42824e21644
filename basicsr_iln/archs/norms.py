"""The normalisation family, chosen by name (``norm_type``) by every architecture.

Every normalisation acts on token sequences of shape (B, L, C) and exists in two roles:

* **branch** norms sit in front of a residual branch (``norm1``/``norm2`` of a Transformer block).
  Their ``forward(x)`` returns ``(y, scale)``; the block computes ``x + scale * branch(y)``
  (``scale`` is None for plain pre-norm). This one hook expresses i-LN's input-adaptive rescaling,
  the per-token ablation, LayerScale and ReZero alike. Blocks call the module itself, so forward
  hooks (the dynamics analysis, profilers) see every norm.
* **stem** norms have no residual branch: the patch-embedding norm and the final norm after the body.
  Their ``forward(x)`` returns ``y``.

A layer class serves both roles: it implements ``forward_with_scale(x) -> (y, scale)`` and inherits
``forward`` from ``FamilyNorm``, which returns the pair when ``NormScheme.build_branch`` built the
layer and ``y`` alone otherwise (a plain attribute: state-dict keys are the released ones).

=============  =========================================================  =====================
norm_type      branch norm                                                 stem norm
=============  =========================================================  =====================
``ln``         per-token LayerNorm                                          LayerNorm
``iln``        LN* (holistic) + rescale by the input's sqrt(var + eps)      affine only
``ln_star``    LN* without rescaling (ablation)                             LN*
``ln_rescale`` per-token LN, branch rescaled by each token's std (ablation) affine only
``in``         InstanceNorm: per channel over the tokens                    InstanceNorm
``bn``         BatchNorm over batch and tokens                              BatchNorm
``rms``        RMSNorm over channels                                        RMSNorm
``layerscale`` LayerNorm + learnable per-channel residual scale             LayerNorm
``rezero``     no norm, learnable scalar residual scale initialised to 0    none
``none``       no norm                                                      none
=============  =========================================================  =====================

Stems follow one rule from the branch design (``NormScheme``): a scheme that rescales each branch by
its norm input's std gets affine-only stems (norm and rescale cancel; the official i-LN release's
choice, see ../shared/reference/README.md), every other scheme its normalisation. So each ablation
removes one component of i-LN everywhere, stems included.

Statistics of the holistic and per-token variants are computed in float32, also under autocast
and for fp16/bf16 weights, because feature variances of ~1e6 or more overflow half precision.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from basicsr_iln.utils.dist import differentiable_all_reduce, is_dist

# LayerScale (Touvron et al., CaiT) initial residual scale; small so each block starts near identity.
LAYER_SCALE_INIT = 1e-4
DEFAULT_ILN_EPS = 1e-4
_LAYER_NORM_BACKWARD = torch.ops.aten.native_layer_norm_backward.default


def _float_var_mean(x, dims):
    return torch.var_mean(x.float(), dim=dims, unbiased=False, keepdim=True)


_is_exporting = getattr(torch.compiler, 'is_exporting', lambda: False)  # torch >= 2.7


def recording_graph():
    """True while torch.jit.trace (and with it the TorchScript ONNX exporter) or torch.export records
    the network. The eager fast paths below cannot be recorded: custom autograd functions, ``out=``
    into a live tensor, and a size list taken from the input (frozen to the recorded size)."""
    return torch.jit.is_tracing() or _is_exporting()


def plain_ops():
    """True while a graph is recorded or compiled: i-LN then runs as plain differentiable ops. A recorder cannot
    hold its custom autograd functions, and torch.compile's inductor fuses the plain ops but not the functions
    (compiled HAT i-LN / LN training step 1.049 with the functions, 0.991 with plain ops: docs/benchmarks.md)."""
    return recording_graph() or torch.compiler.is_compiling()


def multiply_add(shift, x, factor):
    """``shift + x * factor``: one ``addcmul`` eagerly; separate ops in a recorded graph, where the ONNX
    exporter would give addcmul's unit ``value`` the type float32 and so promote half-precision graphs."""
    if recording_graph():
        return shift + x * factor
    return torch.addcmul(shift, x, factor)


class FamilyNorm:
    """``forward`` of every norm of the family, from its ``forward_with_scale``: ``(y, scale)`` for a
    branch norm (``residual_branch``, set by ``NormScheme.build_branch``), ``y`` for a stem norm."""
    residual_branch = False

    def forward(self, x):
        y, scale = self.forward_with_scale(x)
        return (y, scale) if self.residual_branch else y


class LayerNorm(FamilyNorm, nn.LayerNorm):
    """Per-token LayerNorm; keys ``weight``/``bias`` as in the released checkpoints."""

    def forward_with_scale(self, x):
        return nn.LayerNorm.forward(self, x), None  # not super(): FamilyNorm's forward calls back here


class TokenRescaledLayerNorm(FamilyNorm, nn.LayerNorm):
    """Per-token LayerNorm whose branch output is rescaled by each token's own std (ablation).

    Isolates the rescaling half of i-LN: every token keeps its magnitude, but tokens are still
    normalised one by one, so their relative geometry is distorted.
    """

    def forward_with_scale(self, x):
        std = torch.sqrt(_float_var_mean(x, -1)[0] + self.eps)
        return nn.LayerNorm.forward(self, x), std


def _holistic_layer_norm(x, gamma, beta, eps, keep_x_hat=True):
    """``(y, std, x_hat, rstd)`` of LN* with a per-channel affine; no autograd (see the function below).

    Without ``keep_x_hat`` (inference) the affine overwrites x_hat: on CPU a second fresh feature-map
    allocation costs about as much as the normalisation itself (page faults), so x_hat is invalid then.
    """
    x_hat, _, rstd = torch.native_layer_norm(x, x.shape[1:], None, None, eps)
    y = torch.addcmul(beta.to(x.dtype), x_hat, gamma.to(x.dtype), out=None if keep_x_hat else x_hat)
    return y, rstd.reciprocal(), x_hat, rstd


def _plain_holistic_layer_norm(x, gamma, beta, eps):
    """``(y, std)`` of LN* from plain differentiable ops, for recorded and compiled graphs (see ``plain_ops``)."""
    var, mean = torch.var_mean(x, dim=tuple(range(1, x.dim())), unbiased=False, keepdim=True)  # one pass, not two
    rstd = torch.rsqrt(var + eps)
    return (x - mean) * rstd * gamma.to(x.dtype) + beta.to(x.dtype), rstd.reciprocal()


def _normalized_layer_norm_backward(grad, x_hat, weight, output_mask):
    """LayerNorm's backward kernel over all but dim 0 of ``x_hat``, an input that is already
    normalised (mean 0 and rstd 1 are passed as its statistics). ``weight`` doubles as the bias
    argument, which the kernel reads only to know that a bias gradient is wanted."""
    stats = (x_hat.shape[0], ) + (1, ) * (x_hat.dim() - 1)
    return _LAYER_NORM_BACKWARD(grad, x_hat, x_hat.shape[1:], x_hat.new_zeros(stats), x_hat.new_ones(stats), weight,
                                weight, output_mask)


def _forward_keeping(ctx, norm, x, gamma, beta, eps):
    """``(y, std)`` of ``norm`` (a ``(y, std, kept, rstd)`` function), keeping its feature map, rstd and gamma."""
    y, std, kept, rstd = norm(x, gamma, beta, eps)
    ctx.save_for_backward(kept, rstd, gamma)
    return y, std


def _kept(ctx, dtype):
    """What ``_forward_keeping`` kept, gamma in the gradient's dtype."""
    kept, rstd, gamma = ctx.saved_tensors
    return kept, rstd, gamma.to(dtype)


class _HolisticLayerNormFunction(torch.autograd.Function):
    """``(LN*(x) * gamma + beta, sqrt(var + eps))`` with mean and biased var over all but dim 0.

    Why a custom function: LN* plus the std must cost as few passes over the feature map as possible
    (each is memory-bound; see docs/benchmarks.md). One ``native_layer_norm`` (no affine) gives x_hat
    and, in its saved statistics, the std for free (``torch.var_mean`` costs several times the whole
    normalisation on CPU). The affine is one per-channel multiply-add, never broadcast to (L, C).

    Backward reuses LayerNorm's kernel twice, on the saved x_hat instead of x:
    * over (L, C) with mean 0 and rstd 1, fed ``grad_y * gamma * rstd``: the kernel is linear in its
      incoming gradient, so this equals LayerNorm's backward on x, without recomputing x_hat;
    * over rows of C channels with mean 0 and rstd 1, asking only for the affine gradients: one fused
      pass for sum(grad_y * x_hat) and sum(grad_y) per channel (a multiply and two sums otherwise).
    Then d sqrt(var + eps) / dx = x_hat / N adds the std's gradient.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        return _forward_keeping(ctx, _holistic_layer_norm, x, gamma, beta, eps)

    @staticmethod
    def backward(ctx, grad_y, grad_std):  # unused outputs get zero gradients (materialize_grads)
        x_hat, rstd, gamma = _kept(ctx, grad_y.dtype)
        grad_x = _normalized_layer_norm_backward(grad_y * (gamma * rstd), x_hat, None, [True, False, False])[0]
        grad_x.addcmul_(x_hat, grad_std / (x_hat.numel() // x_hat.shape[0]))
        grad_gamma = grad_beta = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            channels = x_hat.shape[-1]
            _, grad_gamma, grad_beta = _normalized_layer_norm_backward(
                grad_y.reshape(-1, channels), x_hat.view(-1, channels), gamma, [False, True, True])
        return grad_x, grad_gamma, grad_beta, None


def _centred_holistic_layer_norm(x, gamma, beta, eps):
    """``(y, std, centred, rstd)`` of LN* + affine from one reduction over each sample (var_mean) and two
    elementwise passes, ``y = (x - mean) * (gamma * rstd) + beta``; no autograd."""
    var, mean = torch.var_mean(x, dim=tuple(range(1, x.dim())), unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    centred = x - mean
    return torch.addcmul(beta.to(x.dtype), centred, gamma.to(x.dtype) * rstd), rstd.reciprocal(), centred, rstd


class _CentredHolisticLayerNormFunction(torch.autograd.Function):
    """``(LN*(x) * gamma + beta, sqrt(var + eps))`` for devices other than the CPU, where LayerNorm's kernels,
    which give each normalised row one thread block, would run a whole image in one block.

    Every op here is a reduction that torch spreads over the whole device or an elementwise pass: 3 passes over
    the feature map forward and 5 backward, where autograd through the plain formula takes 7 and 19 (counted
    at torch's dispatcher by tests/test_norms.py), and few small ops (each a kernel launch on a GPU). Backward
    keeps ``x - mean`` and needs from it only the per-(sample, channel) sums S1 = sum_tokens(grad_y) and
    S2 = sum_tokens(grad_y * (x - mean)): the gradient of LN* is ``grad_y * gamma * rstd`` plus per-sample
    multiples of ``x - mean`` and of 1, and the std's gradient, x_hat / N, adds to the first multiple.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        return _forward_keeping(ctx, _centred_holistic_layer_norm, x, gamma, beta, eps)

    @staticmethod
    def backward(ctx, grad_y, grad_std):  # unused outputs get zero gradients (materialize_grads)
        centred, rstd, gamma = _kept(ctx, grad_y.dtype)
        batch, channels, count = centred.shape[0], centred.shape[-1], centred.numel() // centred.shape[0]
        # Per-sample, per-channel sums (B, C): S1 = sum(grad_y), S2 = sum(grad_y * (x - mean)) over the tokens.
        dims = tuple(range(1, centred.dim() - 1))
        sum_grad = grad_y.sum(dim=dims).view(batch, channels)
        sum_grad_centred = (grad_y * centred).sum(dim=dims).view(batch, channels)
        # Per-sample means over (L, C) of grad_x_hat = grad_y * gamma, and of grad_x_hat * (x - mean), negated.
        weights = (gamma * (-1.0 / count)).view(channels, 1)
        lead = (batch, ) + (1, ) * (centred.dim() - 1)
        neg_mean_grad, neg_mean_grad_centred = (torch.mm(s, weights).view(lead) for s in (sum_grad, sum_grad_centred))
        # grad_x = rstd * (grad_x_hat - mean(grad_x_hat) - x_hat * mean(grad_x_hat * x_hat)) + grad_std * x_hat / N
        grad_x = torch.addcmul(rstd * neg_mean_grad, grad_y, gamma * rstd)
        grad_x.addcmul_(centred, torch.addcmul(grad_std * (rstd / count), rstd.pow(3), neg_mean_grad_centred))
        grad_gamma = torch.mm(rstd.view(1, batch), sum_grad_centred).view(channels)  # sum over samples of S2 * rstd
        return grad_x, grad_gamma, sum_grad.sum(dim=0), None


class HolisticLayerNorm(FamilyNorm, nn.Module):
    """LN*: one mean and one biased variance per sample over all tokens and channels, then a
    per-channel affine. With ``rescale`` (i-LN) the branch output is multiplied by sqrt(var + eps)
    of this norm's input, which makes ``x + scale * f(LN*(x))`` positively homogeneous in ``x``.

    Keys ``gamma``/``beta`` as in the official i-LN release.
    """
    image_wide_statistics = True  # a crop of the image gets other statistics: tiling is not exact

    def __init__(self, dim, eps=DEFAULT_ILN_EPS, rescale=True):
        super().__init__()
        self.eps = eps
        self.rescale = rescale
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward_with_scale(self, x):
        args = x.float(), self.gamma, self.beta, self.eps
        on_cpu = x.device.type == 'cpu'  # elsewhere not LayerNorm's kernels: see _CentredHolisticLayerNormFunction
        if plain_ops():
            y, std = _plain_holistic_layer_norm(*args)
        elif torch.is_grad_enabled():
            y, std = (_HolisticLayerNormFunction if on_cpu else _CentredHolisticLayerNormFunction).apply(*args)
        elif on_cpu:  # inference: the autograd.Function machinery alone costs ~3% of a small network's forward
            y, std = _holistic_layer_norm(*args, keep_x_hat=False)[:2]
        else:
            y, std = _centred_holistic_layer_norm(*args)[:2]
        return y.to(x.dtype), std if self.rescale else None

    def extra_repr(self):
        return f'{self.gamma.numel()}, eps={self.eps}, rescale={self.rescale}'


class Affine(nn.Module):
    """Per-channel gamma/beta without normalisation: the i-LN stem norm."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return multiply_add(self.beta, x, self.gamma)


class InstanceNorm(FamilyNorm, nn.Module):
    """Per sample and per channel over the tokens, then a per-channel affine."""
    image_wide_statistics = True

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward_with_scale(self, x):
        var, mean = _float_var_mean(x, 1)
        y = ((x.float() - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)
        return y * self.weight + self.bias, None


class BatchNorm(FamilyNorm, nn.BatchNorm1d):
    """BatchNorm1d over batch and tokens for (B, L, C) sequences (running statistics at test).

    Once ``synchronize``-d, its training statistics under torch.distributed are those of all processes'
    samples together, as with torch's SyncBatchNorm, which refuses CPU tensors (this project also
    trains DDP on CPU with gloo). ``sync`` is a plain attribute: checkpoint keys are unchanged.
    """
    sync = False

    @classmethod
    def synchronize(cls, net):
        """Make every BatchNorm in ``net`` synchronise its training statistics; returns how many."""
        norms = [module for module in net.modules() if isinstance(module, cls)]
        for norm in norms:
            norm.sync = True
        return len(norms)

    def forward_with_scale(self, x):
        if self.sync and self.training and is_dist():
            return self._synchronized_forward(x), None
        return nn.BatchNorm1d.forward(self, x.transpose(1, 2)).transpose(1, 2), None

    def _synchronized_forward(self, x):
        """One differentiable all-reduce of per-channel (sum, sum of squares) and the count, in float64.

        The local sums come from two-pass statistics (``var_mean``) and are combined in float64, so the
        global variance does not lose the digits that float32 sums of squares would (large means).
        """
        channels = x.shape[-1]
        var, mean = (t.double() for t in torch.var_mean(x.float().reshape(-1, channels), dim=0, unbiased=False))
        local = torch.cat([mean, var + mean * mean, mean.new_ones(1)]) * (x.numel() // channels)
        totals = differentiable_all_reduce(local)
        total_count = totals[-1]
        mean = totals[:channels] / total_count
        var = totals[channels:-1] / total_count - mean * mean
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * (total_count / (total_count - 1)))
        scale = torch.rsqrt(var + self.eps).float()
        shift = -mean.float() * scale
        if self.affine:
            scale, shift = scale * self.weight, torch.addcmul(self.bias, shift, self.weight)
        return torch.addcmul(shift.to(x.dtype), x, scale.to(x.dtype))

    def _update_running_stats(self, mean, unbiased_var):
        """As BatchNorm1d: momentum, or the cumulative average when ``momentum`` is None."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


class RMSNorm(FamilyNorm, nn.RMSNorm):

    def forward_with_scale(self, x):
        if recording_graph():  # ONNX has an RMS norm operator from opset 23 only: spell it out
            eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
            rms = torch.rsqrt(x.float().square().mean(dim=-1, keepdim=True) + eps)
            return (x.float() * rms).to(x.dtype) * self.weight, None
        return nn.RMSNorm.forward(self, x), None


class LayerScaleNorm(LayerNorm):
    """LayerNorm followed, on the residual branch, by a learnable per-channel scale."""

    def __init__(self, dim, init=LAYER_SCALE_INIT):
        super().__init__(dim)
        self.layer_scale = nn.Parameter(torch.full((dim, ), init))

    def forward_with_scale(self, x):
        return nn.LayerNorm.forward(self, x), self.layer_scale


class ReZero(FamilyNorm, nn.Module):
    """No normalisation; the residual branch is scaled by a scalar initialised to 0."""

    def __init__(self, dim):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward_with_scale(self, x):
        return x, self.alpha


class Identity(FamilyNorm, nn.Module):

    def __init__(self, dim=None):
        super().__init__()

    def forward_with_scale(self, x):
        return x, None


def _holistic(rescale):
    return lambda dim, eps: HolisticLayerNorm(dim, eps=eps, rescale=rescale)


def _with_eps(cls):
    return lambda dim, eps: cls(dim) if eps is None else cls(dim, eps=eps)


def _without_eps(cls):
    return lambda dim, eps: cls(dim)


@dataclass(frozen=True)
class NormScheme:
    """What one ``norm_type`` means, defined once: the architectures, the analysis, the option generator,
    the tables and the tests all read this record.

    The stem rule: a stem norm has no residual branch, so it is the scheme's normalisation followed
    directly by the scheme's residual rescaling. Where that rescaling is the norm input's own std
    (``rescales_by_input_std``: i-LN, per-token rescaled LN), normalising and rescaling cancel up to
    the mean shift, which leaves the per-channel affine: the official i-LN release's ``Affine`` stems.
    Learned residual scales (LayerScale, ReZero) scale branches only: their stems are the normalisation.
    """
    label: str
    branch: Callable  # (dim, eps) -> a FamilyNorm for the residual branches
    normalisation: Callable  # (dim, eps) -> the normalisation alone: the stem unless the rule cancels it
    rescales_by_input_std: bool = False
    default_eps: Optional[float] = None  # None: the layer's own default
    stdnorm: bool = False  # the input handling the scheme is trained with (i-LN: as the official release)

    def resolve_eps(self, eps):
        """``eps`` as the norms use it: None is the scheme's default (still None where the layer has its own)."""
        return self.default_eps if eps is None else eps

    def build_branch(self, dim, eps=None):
        norm = self.branch(dim, self.resolve_eps(eps))
        norm.residual_branch = True
        return norm

    def build_stem(self, dim, eps=None):
        if self.rescales_by_input_std:
            return Affine(dim)
        return self.normalisation(dim, self.resolve_eps(eps))


NORM_SCHEMES = {
    'ln': NormScheme('LayerNorm, as released', _with_eps(LayerNorm), _with_eps(LayerNorm)),
    'iln': NormScheme('i-LN', _holistic(True), _holistic(False), rescales_by_input_std=True,
                      default_eps=DEFAULT_ILN_EPS, stdnorm=True),
    'ln_star': NormScheme('LN* without rescaling (i-LN ablation)', _holistic(False), _holistic(False),
                          default_eps=DEFAULT_ILN_EPS, stdnorm=True),
    'ln_rescale': NormScheme('per-token LN + rescaling (i-LN ablation)', _with_eps(TokenRescaledLayerNorm),
                             _with_eps(LayerNorm), rescales_by_input_std=True, default_eps=DEFAULT_ILN_EPS,
                             stdnorm=True),
    'in': NormScheme('InstanceNorm', _with_eps(InstanceNorm), _with_eps(InstanceNorm)),
    'bn': NormScheme('BatchNorm', _with_eps(BatchNorm), _with_eps(BatchNorm)),
    'rms': NormScheme('RMSNorm', _with_eps(RMSNorm), _with_eps(RMSNorm)),
    'layerscale': NormScheme('LayerNorm + LayerScale', _without_eps(LayerScaleNorm), _with_eps(LayerNorm)),
    'rezero': NormScheme('ReZero (no norm)', _without_eps(ReZero), _without_eps(Identity)),
    'none': NormScheme('no normalisation', _without_eps(Identity), _without_eps(Identity)),
}
NORM_TYPES = tuple(NORM_SCHEMES)


def norm_scheme(norm_type):
    if norm_type not in NORM_SCHEMES:
        raise ValueError(f"Unknown norm_type '{norm_type}'. Valid norm types: {', '.join(NORM_TYPES)}.")
    return NORM_SCHEMES[norm_type]


def check_norm_type(norm_type):
    norm_scheme(norm_type)
    return norm_type


def resolve_stdnorm(norm_type, stdnorm):
    """``stdnorm`` as the network uses it: None is the scheme's input handling (i-LN: divide by the DIV2K
    std, as the official release, whose checkpoints give wrong outputs without it)."""
    if stdnorm is not None and not isinstance(stdnorm, bool):
        raise ValueError(f"stdnorm must be true, false or null (the norm scheme's default), got {stdnorm!r}.")
    return norm_scheme(norm_type).stdnorm if stdnorm is None else stdnorm


def build_branch_norm(norm_type, dim, eps=None):
    """Norm in front of a residual branch, called as ``y, scale = norm(x)``. ``eps=None``: the scheme's default."""
    return norm_scheme(norm_type).build_branch(dim, eps)


def build_stem_norm(norm_type, dim, eps=None):
    """Norm without a residual branch (patch embedding, final norm), by the stem rule of ``NormScheme``."""
    return norm_scheme(norm_type).build_stem(dim, eps)


class _ScaledResidualFunction(torch.autograd.Function):
    """``shortcut + branch * scale`` (scale broadcastable to branch) in one ``addcmul``.

    Why not autograd's own ``addcmul``: its backward multiplies the branch by the (unit) ``value``
    before the product with the incoming gradient, one more pass over the feature map per residual.
    """

    @staticmethod
    def forward(ctx, shortcut, branch, scale):
        ctx.save_for_backward(branch, scale)
        return torch.addcmul(shortcut, branch, scale)

    @staticmethod
    def backward(ctx, grad):
        branch, scale = ctx.saved_tensors
        grad_scale = (grad * branch).sum_to_size(scale.shape) if ctx.needs_input_grad[2] else None
        return grad, grad * scale, grad_scale


def residual_add(shortcut, branch_out, scale):
    """``shortcut + scale * branch_out``; ``scale`` from the branch norm (None means 1), in the sum's dtype: under
    autocast the float32 stream's, so that a std is neither rounded to half precision nor, above 65504, overflows
    float16 (a half-precision network keeps its own dtype)."""
    if scale is None:
        return shortcut + branch_out
    scale = scale.to(torch.promote_types(shortcut.dtype, branch_out.dtype))
    # Without autograd the function's machinery would be pure overhead; a graph recorder cannot hold it.
    if torch.is_grad_enabled() and not plain_ops():
        return _ScaledResidualFunction.apply(shortcut, branch_out, scale)
    return multiply_add(shortcut, branch_out, scale)
