"""HAT / HAT_iLN / DRCT / DRCT_iLN: released state-dict layouts, forward shapes for every task and
norm, the residual stream's dtype under autocast (with SwinIR), LN vs i-LN layouts, i-LN homogeneity, HAT's
relative-position indices and OCAB semantics."""

import basicsr_iln  # noqa: F401  (before basicsr)
import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from basicsr_iln.archs.drct_arch import DRCT, DRCT_iLN
from basicsr_iln.archs.hat_arch import HAT, HAT_iLN, OCAB, overlapping_relative_position_index
from basicsr_iln.archs.norms import NORM_TYPES, Affine, HolisticLayerNorm
from basicsr_iln.archs.swinir_arch import SwinIR_iLN
from basicsr_iln.archs.transformer_core import StageInputs, relative_position_index
from helpers import reference_layouts

ENTRIES = {k: v for k, v in reference_layouts().items() if k.startswith(('HAT', 'DRCT', 'iLN_'))}

TINY_HAT = dict(img_size=16, window_size=4, embed_dim=12, depths=[2], num_heads=[2], compress_ratio=3,
                squeeze_factor=4, mlp_ratio=2, drop_path_rate=0.)
TINY_DRCT = dict(img_size=16, window_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], gc=8, mlp_ratio=2,
                 drop_path_rate=0.)
TASKS = [(2, 'pixelshuffle'), (3, 'pixelshuffle'), (4, 'pixelshuffle'), (1, '')]


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _build(cls, **kwargs):
    torch.manual_seed(0)
    return cls(**kwargs).eval()


def _run(model, h, w, in_chans=3):
    x = torch.rand(1, in_chans, h, w)
    with torch.no_grad():
        return model(x)


# ---------------------------------------------------------------- (a) released layouts

@pytest.mark.parametrize('name', sorted(ENTRIES))
def test_released_state_dict_layout(name):
    entry = ENTRIES[name]
    types = [entry['type']] + (['HAT-iLN'] if entry['type'] == 'HAT_iLN' else [])
    for arch_type in types:
        with torch.device('meta'):
            model = ARCH_REGISTRY.get(arch_type)(**entry['kwargs'])
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        ref = entry['state_dict']
        assert set(shapes) == set(ref), (arch_type, sorted(set(shapes) ^ set(ref))[:10])
        assert {k: v for k, v in shapes.items() if ref[k] != v} == {}
        assert sum(p.numel() for p in model.parameters()) == entry['num_params']


def test_registry_and_kwargs():
    assert ARCH_REGISTRY.get('HAT') is HAT
    assert ARCH_REGISTRY.get('HAT_iLN') is HAT_iLN
    assert ARCH_REGISTRY.get('HAT-iLN') is HAT_iLN
    assert ARCH_REGISTRY.get('DRCT') is DRCT
    assert ARCH_REGISTRY.get('DRCT_iLN') is DRCT_iLN
    assert HAT(**TINY_HAT, upscale=1).norm_type == 'ln' and DRCT(**TINY_DRCT, upscale=1).norm_type == 'ln'
    hat_iln, drct_iln = HAT_iLN(**TINY_HAT, upscale=1), DRCT_iLN(**TINY_DRCT, upscale=1)
    assert hat_iln.norm_type == 'iln' and drct_iln.norm_type == 'iln'
    assert isinstance(hat_iln.patch_embed.norm, Affine) and isinstance(hat_iln.norm, Affine)
    assert isinstance(hat_iln.layers[0].residual_group.overlap_attn.norm2, HolisticLayerNorm)
    for cls, cfg in ((HAT, TINY_HAT), (HAT_iLN, TINY_HAT), (DRCT, TINY_DRCT), (DRCT_iLN, TINY_DRCT)):
        with pytest.raises(TypeError):
            cls(**cfg, upscale=1, not_a_kwarg=1)
    # every released kwarg (also the DRCT ones it ignores) plus our additions
    HAT(**TINY_HAT, in_chans=1, conv_scale=0.02, overlap_ratio=0.5, qkv_bias=False, qk_scale=None, drop_rate=0.,
        attn_drop_rate=0., ape=True, patch_norm=False, use_checkpoint=True, upscale=2, img_range=255.,
        upsampler='pixelshuffle', resi_connection='identity', patch_size=1, eps=1e-6, stdnorm=True)
    DRCT(**TINY_DRCT, upscale=1, compress_ratio=3, squeeze_factor=30, conv_scale=0.01, overlap_ratio=0.5,
         resi_connection='identity', use_checkpoint=True, stdnorm=True, eps=1e-6)
    with pytest.raises(ValueError):  # released heads rule: width 14, 6 heads -> 6 - 14 % 6 = 4 heads, not dividing 14
        DRCT(**{**TINY_DRCT, 'embed_dim': 14, 'num_heads': [6, 6]}, upscale=1)
    with pytest.raises(ValueError):  # shared window index needs the image to cover a window
        HAT(**{**TINY_HAT, 'img_size': 2}, upscale=1)


# ---------------------------------------------------------------- (b) forward shapes

@pytest.mark.parametrize('norm_type', ['ln', 'iln'])
@pytest.mark.parametrize('cls,cfg', [(HAT, TINY_HAT), (DRCT, TINY_DRCT)], ids=['HAT', 'DRCT'])
def test_forward_shapes_all_tasks(cls, cfg, norm_type):
    for scale, upsampler in TASKS:
        model = _build(cls, **cfg, upscale=scale, upsampler=upsampler, norm_type=norm_type)
        y = _run(model, 10, 13)  # neither a multiple of the window (4): padded, then cropped
        assert y.shape == (1, 3, 10 * scale, 13 * scale)
        assert torch.isfinite(y).all()
    for upsampler in ('pixelshuffledirect', 'nearest+conv'):
        model = _build(cls, **cfg, upscale=4, upsampler=upsampler, norm_type=norm_type, in_chans=1)
        assert _run(model, 7, 9, in_chans=1).shape == (1, 1, 28, 36)


def test_forward_other_windows_and_overlaps():
    # window 8 (shifted blocks), and window 6 / overlap 0.5: an odd enlargement (9 = 6 + 3)
    for window, overlap, h, w in ((8, 0.5, 11, 9), (6, 0.5, 13, 7), (4, 0.25, 5, 6), (4, 0., 6, 5)):
        cfg = {**TINY_HAT, 'window_size': window, 'overlap_ratio': overlap}
        model = _build(HAT, **cfg, upscale=2, upsampler='pixelshuffle')
        assert _run(model, h, w).shape == (1, 3, 2 * h, 2 * w)
    model = _build(DRCT, **{**TINY_DRCT, 'window_size': 8}, upscale=2, upsampler='pixelshuffle')
    assert _run(model, 11, 9).shape == (1, 3, 22, 18)


@pytest.mark.parametrize('norm_type', NORM_TYPES)
def test_every_norm_type(norm_type):
    for cls, cfg in ((HAT, TINY_HAT), (DRCT, TINY_DRCT)):
        model = _build(cls, **cfg, upscale=2, upsampler='pixelshuffle', norm_type=norm_type)
        y = _run(model, 9, 6)
        assert y.shape == (1, 3, 18, 12) and torch.isfinite(y).all()


def _block_dtypes(model, x):
    """(input, output) dtypes of every block with a branch norm (Transformer blocks, HAT's OCAB) on ``x``."""
    seen = []
    hooks = [block.register_forward_hook(lambda _, args, out: seen.append((args[0].dtype, out.dtype)))
             for block in model.modules() if hasattr(block, 'norm1')]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize('norm_type', NORM_TYPES)
def test_residual_stream_is_float32_under_autocast_for_every_norm(norm_type):
    """CPU autocast runs LayerNorm in bfloat16, CUDA's in float32; the residual stream is float32 under autocast
    for every scheme on every device (``residual_stream``), so that schemes and devices compare at one precision.
    Without autocast a bfloat16 network stays bfloat16 (the precision study's cast copies)."""
    swinir = dict(img_size=16, window_size=4, depths=[1], num_heads=[2], embed_dim=16, mlp_ratio=2)
    for cls, cfg in ((SwinIR_iLN, swinir), (HAT, TINY_HAT), (DRCT, TINY_DRCT)):
        model = _build(cls, **cfg, upscale=2, upsampler='pixelshuffle', norm_type=norm_type)
        x = torch.rand(1, 3, 16, 16)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            autocast = _block_dtypes(model, x)
        assert autocast and set(autocast) == {(torch.float32, torch.float32)}, (cls.__name__, set(autocast))
        cast = _block_dtypes(model.bfloat16(), x.bfloat16())
        assert set(cast) == {(torch.bfloat16, torch.bfloat16)}, (cls.__name__, set(cast))


@pytest.mark.parametrize('cls,cfg', [(HAT_iLN, TINY_HAT), (DRCT_iLN, TINY_DRCT)], ids=['HAT', 'DRCT'])
def test_checkpointed_training_step(cls, cfg):
    """Activation checkpointing recomputes the blocks (i-LN's autograd functions included): same gradients."""
    x = torch.rand(2, 3, 8, 8)
    grads = []
    for use_checkpoint in (True, False):
        model = _build(cls, **cfg, upscale=2, upsampler='pixelshuffle', use_checkpoint=use_checkpoint).train()
        model(x).mean().backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    assert all(g is not None and torch.isfinite(g).all() for g in grads[0])
    for checkpointed, plain in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- (c) LN vs i-LN layouts

NORM_RENAME = {'weight': 'gamma', 'bias': 'beta'}


def _ln_keys_as_iln(shapes):
    renamed = {}
    for key, shape in shapes.items():
        module, _, param = key.rpartition('.')
        if module.rpartition('.')[2] in ('norm', 'norm1', 'norm2') and param in NORM_RENAME:
            key = f'{module}.{NORM_RENAME[param]}'
        renamed[key] = shape
    return renamed


@pytest.mark.parametrize('cls,cfg', [(HAT, TINY_HAT), (DRCT, TINY_DRCT)], ids=['HAT', 'DRCT'])
def test_ln_and_iln_layouts_differ_only_in_norm_names(cls, cfg):
    shapes = {}
    for norm_type in ('ln', 'iln'):
        model = cls(**cfg, upscale=2, upsampler='pixelshuffle', norm_type=norm_type)
        shapes[norm_type] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    changed = set(shapes['ln']) - set(shapes['iln'])
    assert changed and all(k.rpartition('.')[0].endswith(('norm', 'norm1', 'norm2')) for k in changed)
    assert _ln_keys_as_iln(shapes['ln']) == shapes['iln']


def test_reference_iln_and_baseline_differ_only_in_norm_names():
    iln = ENTRIES['iLN_HAT-mini_iLN_SRx4']['state_dict']
    baseline = ENTRIES['iLN_HAT-mini_baseline_SRx4']['state_dict']
    assert _ln_keys_as_iln(baseline) == iln


# ---------------------------------------------------------------- (d) i-LN homogeneity

A = 3.7


def _homogeneity_error(fn, x):
    y, ya = fn(x), fn(A * x)
    return ((ya - A * y).abs().max() / (A * y).abs().max()).item()


def _tiny_double(cls, cfg, norm_type):
    torch.manual_seed(0)
    model = cls(**cfg, upscale=2, upsampler='pixelshuffle', norm_type=norm_type, eps=1e-12)
    for m in model.modules():  # larger branches than at init, so that LN's missing rescaling shows
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.3)
    return model.double().eval()


def _zero_conv_biases(module):
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            nn.init.zeros_(m.bias)


@pytest.mark.parametrize('norm_type,homogeneous', [('iln', True), ('ln', False)])
def test_hat_blocks_homogeneity(norm_type, homogeneous):
    model = _tiny_double(HAT, {**TINY_HAT, 'img_size': 8}, norm_type)  # 8 > window 4: block 1 is shifted
    x_size = (8, 8)
    x = torch.randn(2, 64, 12, dtype=torch.float64) * 5 + 2
    stage = model.stage_inputs(x_size, x.device)
    group = model.layers[0].residual_group
    with torch.no_grad():
        errors = [_homogeneity_error(lambda t, b=b: b(t, x_size, stage), x)
                  for b in (*group.blocks, group.overlap_attn)]
        _zero_conv_biases(model)  # the RHAG/body convs are affine: with biases, no network is homogeneous
        errors.append(_homogeneity_error(lambda t: model.forward_features(t), torch.randn(2, 12, 8, 8).double()))
    if homogeneous:
        assert max(errors) < 1e-5, errors  # norm statistics are float32 (norms.py), also for float64 input
    else:
        assert min(errors) > 1e-2, errors


@pytest.mark.parametrize('norm_type,homogeneous', [('iln', True), ('ln', False)])
def test_drct_rdg_homogeneity(norm_type, homogeneous):
    model = _tiny_double(DRCT, {**TINY_DRCT, 'img_size': 8}, norm_type)
    x_size = (8, 8)
    rdg = model.layers[0]
    stage = model.stage_inputs(x_size, 'cpu')
    with torch.no_grad():
        swin = [getattr(rdg, f'swin{k}') for k in (1, 2)]
        errors = [_homogeneity_error(lambda t, b=b: b(t, x_size, stage), torch.randn(2, 64, b.dim).double() + 1)
                   for b in swin]
        _zero_conv_biases(model)  # the 1x1 adjust convs' biases are the only non-homogeneous part of an RDG
        errors.append(_homogeneity_error(lambda t: rdg(t, x_size, stage), torch.randn(2, 64, 16).double() * 3))
        errors.append(_homogeneity_error(lambda t: model.forward_features(t), torch.randn(2, 16, 8, 8).double()))
    if homogeneous:
        assert max(errors) < 1e-5, errors  # norm statistics are float32 (norms.py), also for float64 input
    else:
        assert min(errors) > 1e-2, errors


# ---------------------------------------------------------------- (e) relative-position indices, OCAB

def _check_offset_index(index, query_win, key_win, table_size):
    """Brute force: equal (key - query) offsets <-> equal table rows; all rows used; index in range."""
    assert index.shape == (query_win**2, key_win**2) and index.dtype == torch.int64
    assert -table_size <= int(index.min()) and int(index.max()) < table_size
    rows = {}
    for a in range(query_win**2):
        qi, qj = divmod(a, query_win)
        for b in range(key_win**2):
            ki, kj = divmod(b, key_win)
            rows.setdefault((ki - qi, kj - qj), set()).add(int(index[a, b]) % table_size)
    assert all(len(r) == 1 for r in rows.values())  # an offset always reads the same row
    distinct = {next(iter(r)) for r in rows.values()}
    assert len(distinct) == len(rows) == table_size  # distinct offsets read distinct rows, every row is used


@pytest.mark.parametrize('window', [1, 4, 7, 16])
def test_sa_relative_position_index(window):
    _check_offset_index(relative_position_index(window), window, window, (2 * window - 1)**2)
    model = HAT(**{**TINY_HAT, 'window_size': 4}, upscale=1)
    assert torch.equal(model.relative_position_index_SA, relative_position_index(4))


@pytest.mark.parametrize('window,ratio', [(4, 0.5), (6, 0.5), (7, 0.5), (8, 0.25), (16, 0.5), (4, 0.)])
def test_oca_relative_position_index(window, ratio):
    ext = int(window * ratio) + window
    index = overlapping_relative_position_index(window, ext)
    span = window + ext - 1
    _check_offset_index(index, window, ext, span**2)
    # the released formula at the first query/key pair: offset 0 shifted by ws - ows + 1 on both axes
    assert int(index[0, 0]) == (window - ext + 1) * span + (window - ext + 1)
    model = HAT(**{**TINY_HAT, 'img_size': max(16, window), 'window_size': window, 'overlap_ratio': ratio}, upscale=1)
    assert torch.equal(model.relative_position_index_OCA, index)
    assert model.layers[0].residual_group.overlap_attn.relative_position_bias_table.shape[0] == span**2


def _naive_ocab(m, x, x_size):
    """Loop-over-windows OCAB (LN variant): zero-padded enlarged key windows, explicit softmax."""
    h, w = x_size
    b, _, c = x.shape
    ws, ows, heads = m.window_size, m.overlap_win_size, m.num_heads
    d, span, pad = c // heads, ws + ows - 1, (ows - ws) // 2
    q, k, v = m.qkv(m.norm1(x)[0]).view(b, h, w, 3, c).unbind(3)
    kp = torch.zeros(b, h + ows - ws, w + ows - ws, c, dtype=x.dtype)
    vp = kp.clone()
    kp[:, pad:pad + h, pad:pad + w], vp[:, pad:pad + h, pad:pad + w] = k, v
    bias = torch.empty(heads, ws * ws, ows * ows, dtype=x.dtype)
    for a in range(ws * ws):
        for e in range(ows * ows):
            di, dj = e // ows - a // ws + ws - ows + 1, e % ows - a % ws + ws - ows + 1
            bias[:, a, e] = m.relative_position_bias_table[(di * span + dj) % span**2]
    out = torch.empty(b, h, w, c, dtype=x.dtype)
    for i in range(0, h, ws):
        for j in range(0, w, ws):
            qw = q[:, i:i + ws, j:j + ws].reshape(b, ws * ws, heads, d)
            kw = kp[:, i:i + ows, j:j + ows].reshape(b, ows * ows, heads, d)
            vw = vp[:, i:i + ows, j:j + ows].reshape(b, ows * ows, heads, d)
            attn = (torch.einsum('bqhd,bkhd->bhqk', qw, kw) * m.scale + bias).softmax(-1)
            out[:, i:i + ws, j:j + ws] = torch.einsum('bhqk,bkhd->bqhd', attn, vw).reshape(b, ws, ws, c)
    x = x + m.proj(out.reshape(b, h * w, c))
    return x + m.mlp(m.norm2(x)[0])


@pytest.mark.parametrize('window,ratio,size', [(4, 0.5, (8, 12)), (4, 0.25, (8, 4)), (6, 0.5, (12, 6))])
def test_ocab_matches_naive_windows(window, ratio, size):
    torch.manual_seed(0)
    m = OCAB(12, (16, 16), window, ratio, num_heads=3, mlp_ratio=2).double().eval()
    with torch.no_grad():
        m.relative_position_bias_table.normal_()  # make the bias matter
        x = torch.randn(2, size[0] * size[1], 12, dtype=torch.float64)
        rpi = overlapping_relative_position_index(window, m.overlap_win_size)
        torch.testing.assert_close(m(x, size, StageInputs(rpi_oca=rpi)), _naive_ocab(m, x, size))
        torch.testing.assert_close(m(x, size), _naive_ocab(m, x, size))  # index built on the fly
