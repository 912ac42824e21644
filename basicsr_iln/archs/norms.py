"""The normalisation family, chosen by name (``norm_type``) by every architecture.

Every normalisation acts on token sequences of shape (B, L, C) and exists in two roles:

* **branch** norms sit in front of a residual branch (``norm1``/``norm2`` of a Transformer block).
  Besides ``forward(x) -> y`` they implement ``forward_with_scale(x) -> (y, scale)``; the block
  computes ``x + scale * branch(y)`` (``scale`` is None for plain pre-norm). This one hook expresses
  i-LN's input-adaptive rescaling, the per-token ablation, LayerScale and ReZero alike.
* **stem** norms have no residual branch: the patch-embedding norm and the final norm after the body.

=============  =========================================================  =====================
norm_type      branch norm                                                 stem norm
=============  =========================================================  =====================
``ln``         per-token LayerNorm                                          LayerNorm
``iln``        LN* (holistic) + rescale by the input's sqrt(var + eps)      affine only
``ln_star``    LN* without rescaling (ablation)                             affine only
``ln_rescale`` per-token LN, branch rescaled by each token's std (ablation) LayerNorm
``in``         InstanceNorm: per channel over the tokens                    InstanceNorm
``bn``         BatchNorm over batch and tokens                              BatchNorm
``rms``        RMSNorm over channels                                        RMSNorm
``layerscale`` LayerNorm + learnable per-channel residual scale             LayerNorm
``rezero``     no norm, learnable scalar residual scale initialised to 0    none
``none``       no norm                                                      none
=============  =========================================================  =====================

The i-LN stems are affine-only, as in the official i-LN release (see ../shared/reference/README.md):
holistic normalisation there would discard the image's global scale before the body.

Statistics of the holistic and per-token variants are computed in float32, also under autocast
and for fp16/bf16 weights, because feature variances of ~1e6 or more overflow half precision.
"""
import torch
from torch import nn

# LayerScale (Touvron et al., CaiT) initial residual scale; small so each block starts near identity.
LAYER_SCALE_INIT = 1e-4
DEFAULT_ILN_EPS = 1e-4
_LAYER_NORM_BACKWARD = torch.ops.aten.native_layer_norm_backward.default


def _float_var_mean(x, dims):
    return torch.var_mean(x.float(), dim=dims, unbiased=False, keepdim=True)


class _BranchNormMixin:
    """``forward`` of a branch norm is ``forward_with_scale`` without the scale."""

    def forward(self, x):
        return self.forward_with_scale(x)[0]


class LayerNorm(nn.LayerNorm):
    """Per-token LayerNorm; keys ``weight``/``bias`` as in the released checkpoints."""

    def forward_with_scale(self, x):
        return super().forward(x), None


class TokenRescaledLayerNorm(_BranchNormMixin, nn.LayerNorm):
    """Per-token LayerNorm whose branch output is rescaled by each token's own std (ablation).

    Isolates the rescaling half of i-LN: every token keeps its magnitude, but tokens are still
    normalised one by one, so their relative geometry is distorted.
    """

    def forward_with_scale(self, x):
        std = torch.sqrt(_float_var_mean(x, -1)[0] + self.eps)
        return nn.LayerNorm.forward(self, x), std  # not super(): the mixin's forward calls back here


def _holistic_layer_norm(x, gamma, beta, eps, keep_x_hat=True):
    """``(y, std, x_hat, rstd)`` of LN* with a per-channel affine; no autograd (see the function below).

    Without ``keep_x_hat`` (inference) the affine overwrites x_hat: on CPU a second fresh feature-map
    allocation costs about as much as the normalisation itself (page faults), so x_hat is invalid then.
    """
    x_hat, _, rstd = torch.native_layer_norm(x, x.shape[1:], None, None, eps)
    y = torch.addcmul(beta.to(x.dtype), x_hat, gamma.to(x.dtype), out=None if keep_x_hat else x_hat)
    return y, rstd.reciprocal(), x_hat, rstd


def _normalized_layer_norm_backward(grad, x_hat, weight, output_mask):
    """LayerNorm's backward kernel over all but dim 0 of ``x_hat``, an input that is already
    normalised (mean 0 and rstd 1 are passed as its statistics). ``weight`` doubles as the bias
    argument, which the kernel reads only to know that a bias gradient is wanted."""
    stats = (x_hat.shape[0], ) + (1, ) * (x_hat.dim() - 1)
    return _LAYER_NORM_BACKWARD(grad, x_hat, x_hat.shape[1:], x_hat.new_zeros(stats), x_hat.new_ones(stats), weight,
                                weight, output_mask)


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
        y, std, x_hat, rstd = _holistic_layer_norm(x, gamma, beta, eps)
        ctx.save_for_backward(x_hat, rstd, gamma)
        return y, std

    @staticmethod
    def backward(ctx, grad_y, grad_std):  # unused outputs get zero gradients (materialize_grads)
        x_hat, rstd, gamma = ctx.saved_tensors
        gamma = gamma.to(grad_y.dtype)
        grad_x = _normalized_layer_norm_backward(grad_y * (gamma * rstd), x_hat, None, [True, False, False])[0]
        grad_x.addcmul_(x_hat, grad_std / (x_hat.numel() // x_hat.shape[0]))
        grad_gamma = grad_beta = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            channels = x_hat.shape[-1]
            _, grad_gamma, grad_beta = _normalized_layer_norm_backward(
                grad_y.reshape(-1, channels), x_hat.view(-1, channels), gamma, [False, True, True])
        return grad_x, grad_gamma, grad_beta, None


class HolisticLayerNorm(_BranchNormMixin, nn.Module):
    """LN*: one mean and one biased variance per sample over all tokens and channels, then a
    per-channel affine. With ``rescale`` (i-LN) the branch output is multiplied by sqrt(var + eps)
    of this norm's input, which makes ``x + scale * f(LN*(x))`` positively homogeneous in ``x``.

    Keys ``gamma``/``beta`` as in the official i-LN release.
    """

    def __init__(self, dim, eps=DEFAULT_ILN_EPS, rescale=True):
        super().__init__()
        self.eps = eps
        self.rescale = rescale
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward_with_scale(self, x):
        args = x.float(), self.gamma, self.beta, self.eps
        if torch.is_grad_enabled():
            y, std = _HolisticLayerNormFunction.apply(*args)
        else:  # inference: the autograd.Function machinery alone costs ~3% of a small network's forward
            y, std = _holistic_layer_norm(*args, keep_x_hat=False)[:2]
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
        return torch.addcmul(self.beta, x, self.gamma)


class InstanceNorm(_BranchNormMixin, nn.Module):
    """Per sample and per channel over the tokens, then a per-channel affine."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward_with_scale(self, x):
        var, mean = _float_var_mean(x, 1)
        y = ((x.float() - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)
        return y * self.weight + self.bias, None


class BatchNorm(_BranchNormMixin, nn.BatchNorm1d):
    """BatchNorm1d over batch and tokens for (B, L, C) sequences (running statistics at test)."""

    def forward_with_scale(self, x):
        return nn.BatchNorm1d.forward(self, x.transpose(1, 2)).transpose(1, 2), None  # not the mixin's forward


class RMSNorm(nn.RMSNorm):

    def forward_with_scale(self, x):
        return super().forward(x), None


class LayerScaleNorm(LayerNorm):
    """LayerNorm followed, on the residual branch, by a learnable per-channel scale."""

    def __init__(self, dim, init=LAYER_SCALE_INIT):
        super().__init__(dim)
        self.layer_scale = nn.Parameter(torch.full((dim, ), init))

    def forward_with_scale(self, x):
        return nn.LayerNorm.forward(self, x), self.layer_scale


class ReZero(_BranchNormMixin, nn.Module):
    """No normalisation; the residual branch is scaled by a scalar initialised to 0."""

    def __init__(self, dim):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward_with_scale(self, x):
        return x, self.alpha


class Identity(_BranchNormMixin, nn.Module):

    def __init__(self, dim=None):
        super().__init__()

    def forward_with_scale(self, x):
        return x, None


def _holistic(rescale):
    return lambda dim, eps: HolisticLayerNorm(dim, eps=DEFAULT_ILN_EPS if eps is None else eps, rescale=rescale)


def _with_eps(cls):
    return lambda dim, eps: cls(dim) if eps is None else cls(dim, eps=eps)


# norm_type -> (branch factory, stem factory); factories take (dim, eps) with eps=None for the default.
_NORMS = {
    'ln': (_with_eps(LayerNorm), _with_eps(LayerNorm)),
    'iln': (_holistic(True), lambda dim, eps: Affine(dim)),
    'ln_star': (_holistic(False), lambda dim, eps: Affine(dim)),
    'ln_rescale': (_with_eps(TokenRescaledLayerNorm), _with_eps(LayerNorm)),
    'in': (_with_eps(InstanceNorm), _with_eps(InstanceNorm)),
    'bn': (_with_eps(BatchNorm), _with_eps(BatchNorm)),
    'rms': (_with_eps(RMSNorm), _with_eps(RMSNorm)),
    'layerscale': (lambda dim, eps: LayerScaleNorm(dim), _with_eps(LayerNorm)),
    'rezero': (lambda dim, eps: ReZero(dim), lambda dim, eps: Identity()),
    'none': (lambda dim, eps: Identity(), lambda dim, eps: Identity()),
}
NORM_TYPES = tuple(_NORMS)


def check_norm_type(norm_type):
    if norm_type not in _NORMS:
        raise ValueError(f"Unknown norm_type '{norm_type}'. Valid norm types: {', '.join(NORM_TYPES)}.")
    return norm_type


def build_branch_norm(norm_type, dim, eps=None):
    """Norm in front of a residual branch; has ``forward_with_scale``. ``eps=None``: the type's default."""
    return _NORMS[check_norm_type(norm_type)][0](dim, eps)


def build_stem_norm(norm_type, dim, eps=None):
    """Norm without a residual branch (patch embedding, final norm)."""
    return _NORMS[check_norm_type(norm_type)][1](dim, eps)


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
    """``shortcut + scale * branch_out``; ``scale`` from ``forward_with_scale`` (None means 1)."""
    if scale is None:
        return shortcut + branch_out
    scale = scale.to(branch_out.dtype)
    if torch.is_grad_enabled():  # without autograd the function's machinery would be pure overhead
        return _ScaledResidualFunction.apply(shortcut, branch_out, scale)
    return torch.addcmul(shortcut, branch_out, scale)
