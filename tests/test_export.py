"""Exported and traced networks are right at every input size: ONNX through onnxruntime, torch.jit.trace and
torch.export, for SwinIR, HAT and DRCT with LN and i-LN; and the basicsr-iln-export CLI end to end."""
import io
import warnings

import basicsr_iln  # noqa: F401  (before basicsr)
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
import yaml
from basicsr.archs.swinir_arch import SwinTransformerBlock
from basicsr.utils.registry import ARCH_REGISTRY

from basicsr_iln import export as export_cli
from basicsr_iln.archs.transformer_core import RestorationTransformer, shifted_window_mask
from basicsr_iln.utils import export as export_lib
from basicsr_iln.utils.export import FP32_TOLERANCE, check_sizes, export_checked, rejected_path
from helpers import in_fork, main_error_line

TINY = {
    'SwinIR_iLN': dict(embed_dim=12, depths=[2], num_heads=[2]),
    'HAT': dict(embed_dim=12, depths=[2], num_heads=[2], compress_ratio=3, squeeze_factor=4),
    'DRCT': dict(embed_dim=12, depths=[1], num_heads=[2], gc=4),
}
COMMON = dict(img_size=16, window_size=4, mlp_ratio=2, upscale=2, upsampler='pixelshuffle', drop_path_rate=0.)
# (batch, height, width): the export size, another window multiple, sizes that are not (window 4), and one
# smaller than a window (padded by replication instead of reflection).
SIZES = [(1, 16, 16), (2, 12, 24), (1, 13, 18), (1, 3, 6)]


pytestmark = pytest.mark.usefixtures('one_torch_thread')  # onnxruntime's session follows torch's count


def tiny_net(arch, norm_type):
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get(arch)(**COMMON, **TINY[arch], norm_type=norm_type).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def outputs(net, size):
    batch, h, w = size
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    with torch.no_grad():
        return x, net(x)


@pytest.mark.parametrize('norm_type', ['ln', 'iln'])
@pytest.mark.parametrize('arch', sorted(TINY))
def test_onnx_round_trip_at_every_size(arch, norm_type, tmp_path):
    net = tiny_net(arch, norm_type)
    path = tmp_path / 'net.onnx'
    with warnings.catch_warnings():
        warnings.simplefilter('error', torch.jit.TracerWarning)  # no size-dependent Python branch is recorded
        diffs = export_checked(net, str(path), sizes=SIZES)
    assert [size for size, _ in diffs] == SIZES
    assert max(diff for _, diff in diffs) <= FP32_TOLERANCE, diffs
    assert path.is_file() and not list(tmp_path.glob('.tmp_*'))


@pytest.mark.parametrize('arch', sorted(TINY))
def test_fp16_onnx_round_trip(arch, tmp_path):
    net = tiny_net(arch, 'iln')
    diffs = export_checked(net, str(tmp_path / 'net.onnx'), fp16=True, sizes=SIZES[1:3])
    assert max(diff for _, diff in diffs) <= export_lib.FP16_TOLERANCE, diffs
    session = onnxruntime.InferenceSession(str(tmp_path / 'net.onnx'), providers=['CPUExecutionProvider'])
    assert session.get_inputs()[0].type == 'tensor(float16)' and session.get_outputs()[0].type == 'tensor(float16)'


@pytest.mark.parametrize('norm_type', ['ln', 'iln'])
@pytest.mark.parametrize('arch', sorted(TINY))
def test_traced_network_is_right_at_other_sizes(arch, norm_type):
    """Traced with gradients on (the default), saved and reloaded; checked at sizes it was not traced at."""
    net = tiny_net(arch, norm_type)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit is deprecated
        warnings.simplefilter('error', torch.jit.TracerWarning)
        traced = torch.jit.trace(net, torch.rand(1, 3, 16, 16))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)  # a graph with Python autograd functions in it could not be saved
        buffer.seek(0)
        traced = torch.jit.load(buffer)
    for size in SIZES[1:]:
        x, expected = outputs(net, size)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), expected, rtol=0, atol=1e-5)


def test_torch_export_of_iln():
    """torch.export (the base of torch's dynamo ONNX exporter) records i-LN's plain-op path. In a fork
    (helpers.in_fork): torch.export would leave this test process unable to fork autograd."""
    in_fork(_exported_equals_eager)


def _exported_equals_eager():
    net = tiny_net('SwinIR_iLN', 'iln')
    x, expected = outputs(net, SIZES[2])
    exported = torch.export.export(net, (x, ))
    torch.testing.assert_close(exported.module()(x), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize('window,shift', [(4, 2), (7, 3), (8, 4), (8, 1)])
def test_shift_mask_equals_the_released_one(window, shift):
    block = SwinTransformerBlock(dim=4, input_resolution=(2 * window, 2 * window), num_heads=1,
                                 window_size=window, shift_size=shift)
    for x_size in [(window, window), (2 * window, 3 * window), (5 * window, window)]:
        assert torch.equal(shifted_window_mask(x_size, window, shift), block.calculate_mask(x_size))


class WindowPad(torch.nn.Module):
    pad_to_window = RestorationTransformer.pad_to_window

    def __init__(self, window_size):
        super().__init__()
        self.window_size = window_size

    def forward(self, x):
        return self.pad_to_window(x)


def reference_pad(x, window):
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % window, -w % window
    return F.pad(x, (0, pad_w, 0, pad_h), 'reflect' if pad_h < h and pad_w < w else 'replicate')


def test_window_pad_equals_f_pad_eagerly_and_traced():
    """Reflect where both sides can be reflected, else replicate; a traced pad chooses per input."""
    pad = WindowPad(8)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        traced = torch.jit.trace(pad, torch.rand(1, 3, 16, 16))
    for h in (1, 3, 5, 8, 9, 16, 17):
        for w in (2, 8, 13):
            x = torch.rand(2, 3, h, w)
            expected = reference_pad(x, 8)
            assert torch.equal(pad(x), expected) and torch.equal(traced(x), expected), (h, w)


def test_check_sizes_include_a_non_window_multiple():
    for window in (2, 4, 7, 8, 16):
        (_, h1, w1), (batch, h2, w2) = check_sizes(window)
        assert h1 % window == 0 == w1 % window and h2 % window and w2 % window and batch > 1


def cli_args(tmp_path, norm_type='iln'):
    """--arch / --arch-opt / -c of a saved tiny SwinIR."""
    net = tiny_net('SwinIR_iLN', norm_type)
    checkpoint = tmp_path / 'net.pth'
    torch.save({'params': net.state_dict()}, checkpoint)
    arch_opt = yaml.safe_dump({**COMMON, **TINY['SwinIR_iLN'], 'norm_type': norm_type}, default_flow_style=True)
    return net, ['--arch', 'SwinIR_iLN', '--arch-opt', arch_opt, '-c', str(checkpoint)]


def test_export_cli_end_to_end(tmp_path, capsys):
    net, args = cli_args(tmp_path)
    out = tmp_path / 'models' / 'net.onnx'
    export_cli.main([*args, '--onnx', str(out)])
    printed = capsys.readouterr().out
    assert 'ONNX opset 17, fp32' in printed and '1x8x12' in printed and '2x9x11' in printed
    session = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    x, expected = outputs(net, (3, 10, 7))  # a batch and size the check did not use
    got = torch.from_numpy(session.run(None, {'input': x.numpy()})[0])
    torch.testing.assert_close(got, expected, rtol=0, atol=FP32_TOLERANCE)


def test_released_checkpoint_exported_to_safetensors_needs_nothing_else(tmp_path):
    """A config-less checkpoint given with --arch: the safetensors file records that network, so -c alone
    rebuilds it afterwards (here: the export itself, to ONNX, from the safetensors file)."""
    net, args = cli_args(tmp_path)
    weights = tmp_path / 'net.safetensors'
    export_cli.main([*args, '--safetensors', str(weights)])
    out = tmp_path / 'net.onnx'
    export_cli.main(['-c', str(weights), '--onnx', str(out)])
    session = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    x, expected = outputs(net, (1, 9, 13))
    got = torch.from_numpy(session.run(None, {'input': x.numpy()})[0])
    torch.testing.assert_close(got, expected, rtol=0, atol=FP32_TOLERANCE)


def test_export_cli_refuses_a_model_that_fails_its_check(tmp_path, capsys, monkeypatch):
    _, args = cli_args(tmp_path)
    monkeypatch.setattr(export_lib, 'FP32_TOLERANCE', -1.0)  # every diff is too large
    out = tmp_path / 'net.onnx'
    with pytest.raises(SystemExit) as exc:
        export_cli.main([*args, '--onnx', str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: the ONNX model disagrees with PyTorch at input 1x8x12 (fp32)') and '\n' not in err
    assert not out.exists() and (tmp_path / 'net.rejected.onnx').is_file()
    assert rejected_path(str(out)) in err


@pytest.mark.parametrize('extra,message', [
    (['--onnx', 'net.pth'], "--onnx must name a .onnx file, got 'net.pth'"),
    ([], 'nothing to write: give --onnx FILE.onnx and/or --safetensors'),
    (['--safetensors', 'net.pth'], "--safetensors must name a .safetensors file, got 'net.pth'"),
    (['--onnx', 'net.onnx', '--arch-opt', yaml.safe_dump({**COMMON, **TINY['SwinIR_iLN'], 'embed_dim': 24})],
     'does not fit the network SwinIR_iLN'),
])
def test_export_cli_bad_input_is_one_line(tmp_path, capsys, monkeypatch, extra, message):
    _, args = cli_args(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert message in main_error_line(export_cli.main, [*args, *extra], capsys)  # the last --arch-opt counts
    assert not list(tmp_path.glob('*.onnx'))
