"""CUDA: the GPU path computes what the CPU path computes (skipped without CUDA; run by scripts/device_check.sh).

What only CUDA exercises: SDPA's fused kernels with the additive bias (with a gradient for it), bf16/fp16
autocast of whole training steps, the chunked inference on GPU memory, training steps without host syncs, and
the side-stream copy of ``prefetch_mode: cuda``.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from basicsr_iln.archs.chunking import chunked_inference
from basicsr_iln.archs.transformer_core import _explicit_biased_attention, biased_attention
from basicsr_iln.utils.inference import restore
from basicsr_iln.utils.memory_format import to_memory_format
from test_chunked_inference import ARCHS

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
CUDA = torch.device('cuda')


@pytest.fixture
def no_tf32():
    """fp32 matmuls and convolutions in fp32, not TF32: matmuls are so by default, but cuDNN convolutions use
    TF32 unless ``torch.backends.cudnn.allow_tf32`` is False. Both flags are restored afterwards."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.parametrize('norm_type', ['ln', 'iln'])
@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_cuda_forward_equals_cpu(arch, norm_type, no_tf32):
    torch.manual_seed(0)
    net, x = ARCHS[arch](norm_type).eval(), torch.rand(2, 3, 37, 51)
    on_cpu = restore(net, x)
    on_gpu = restore(net.to(CUDA), x.to(CUDA)).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, atol=2e-4, rtol=0)  # fp32 against fp32 (no_tf32)


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_channels_last_on_cuda_gives_the_default_layouts_output_and_gradients(arch, no_tf32):
    """Option channels_last hands cuDNN NHWC weights and images: other kernels, the same values."""
    torch.manual_seed(0)
    nets = [ARCHS[arch]('iln', drop_path_rate=0.).to(CUDA).train() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    to_memory_format(nets[1], True)
    lq = torch.rand(2, 3, 16, 16, device=CUDA)
    outputs, grads = [], []
    for net, layout in zip(nets, (torch.contiguous_format, torch.channels_last)):
        out = net(lq.contiguous(memory_format=layout))
        out.square().mean().backward()
        outputs.append(out.detach())
        grads.append([p.grad for p in net.parameters()])
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-4, rtol=1e-4)
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_cuda_chunked_equals_one_piece(arch):
    torch.manual_seed(0)
    net, x = ARCHS[arch]('iln').eval().to(CUDA), torch.rand(2, 3, 37, 51, device=CUDA)
    whole = restore(net, x, max_chunk_tokens=0)
    torch.testing.assert_close(restore(net, x, max_chunk_tokens=100), whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize('head_dim', [8, 30])  # 30: the released SwinIR / HAT heads (180 channels, 6 heads)
def test_fused_attention_gradient_of_the_bias_equals_the_explicit_formula(head_dim, no_tf32):
    """On CUDA the fused (memory-efficient) kernel is used in training too, also for head dims it cannot take
    unpadded (SDPA is restricted to it here: it raises if the kernel cannot run); its gradient for the learned
    bias must match."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(8, 2, 16, head_dim, device=CUDA, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, 16, 16, device=CUDA, requires_grad=True)
    mask = torch.zeros(4, 16, 16, device=CUDA).masked_fill(torch.rand(4, 16, 16, device=CUDA) > 0.7, -100.0)
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        fused = biased_attention(q, k, v, bias, mask)
    explicit = _explicit_biased_attention(q, k, v, bias, mask, 0.0, None)
    torch.testing.assert_close(fused, explicit, atol=1e-4, rtol=1e-4)
    grads = [torch.autograd.grad(out.square().sum(), (q, k, v, bias)) for out in (fused, explicit)]
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_autocast_training_step_is_finite_and_close_to_fp32(arch, dtype):
    torch.manual_seed(0)
    # No drop-path: in train mode each forward would draw its own masks, and the fp32 reference below would
    # differ from the autocast forward by more than precision.
    net = ARCHS[arch]('iln', drop_path_rate=0.).to(CUDA).train()
    lq, gt = torch.rand(2, 3, 16, 16, device=CUDA), torch.rand(2, 3, 32, 32, device=CUDA)
    with torch.autocast('cuda', dtype=dtype):
        loss = F.l1_loss(net(lq).float(), gt)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    with torch.no_grad():
        reference = F.l1_loss(net(lq), gt)
    assert abs(float(loss) - float(reference)) < 0.02


def test_chunked_inference_bounds_cuda_memory():
    torch.manual_seed(0)
    net, x = ARCHS['SwinIR']('iln').eval().to(CUDA), torch.rand(1, 3, 256, 256, device=CUDA)
    peaks = {}
    for budget in (0, 256):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad(), chunked_inference(budget or None):
            net(x)
        torch.cuda.synchronize()
        peaks[budget] = torch.cuda.max_memory_allocated() - base
    assert peaks[256] < peaks[0]


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
def test_a_training_step_never_syncs_with_the_host(tiny_sr_data, tmp_path, precision):
    """CUDA's sync debug mode raises on any synchronizing call (``.item()``, a blocking copy to the host, a
    tensor read as a Python number): the whole step (forward, backward, checks, clipping, fused Adam, EMA) has
    none, including a step with a NaN gradient, which is skipped on the device and reported with the log, and
    the copy of a page-locked batch (``pin_memory: true``) to the GPU."""
    from basicsr.models import build_model
    from basicsr_iln.utils.options import parse_options
    from helpers import tiny_train_options, write_yaml

    opt = tiny_train_options(tiny_sr_data, 'nosync')
    opt['num_gpu'] = 1
    opt['train'].update(precision=precision, grad_clip_norm=1e-2)
    opt, _ = parse_options(str(tmp_path), is_train=True, argv=['-opt', str(write_yaml(tmp_path / 'n.yml', opt))])
    model = build_model(opt)
    gen = torch.Generator().manual_seed(0)
    data = {'lq': torch.rand(2, 3, 16, 16, generator=gen).pin_memory(),
            'gt': torch.rand(2, 3, 32, 32, generator=gen).pin_memory()}
    weight = model.get_bare_model(model.net_g).conv_first.weight
    for it, hook in ((1, None), (2, weight.register_hook(lambda grad: grad * float('nan')))):
        torch.cuda.set_sync_debug_mode('error')
        try:
            model.feed_data(data)
            model.optimize_parameters(it)
        finally:
            torch.cuda.set_sync_debug_mode('default')
        if hook is not None:
            hook.remove()
    log = model.get_current_log()
    assert model.nonfinite_streak == 1 and math.isnan(log['grad_norm'])
    assert all(torch.isfinite(p).all() for p in model.get_bare_model(model.net_g).parameters())


def test_side_stream_copies_hand_the_loaders_batches_to_the_current_stream():
    """``prefetch_mode: cuda``: every batch of a pinned loader arrives on the GPU equal to the loader's, the copy
    does not sync with the host, and the memory belongs to the stream that reads it (a kernel queued right
    after on that stream sees the copied values)."""
    from torch.utils.data import DataLoader, TensorDataset

    from basicsr_iln.data.prefetch import SideStreamCopy, epoch_batches

    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(images), batch_size=2, pin_memory=True,
                        collate_fn=lambda items: {'lq': torch.stack([i[0] for i in items]), 'name': 'batch'})
    pinned = list(loader)  # pinned by the loader, outside the checked region
    busy = torch.randn(2048, 2048, device=CUDA)
    copy = SideStreamCopy(CUDA)
    sums = []
    torch.cuda.set_sync_debug_mode('error')
    try:
        for batch in epoch_batches(pinned, len(pinned), copy):
            busy = busy @ busy / 2048  # keeps the current stream busy while the next copy runs beside it
            assert batch['lq'].device.type == 'cuda' and batch['name'] == 'batch'
            sums.append(batch['lq'].sum())
    finally:
        torch.cuda.set_sync_debug_mode('default')
    expected = [b['lq'].sum() for b in pinned]
    assert torch.allclose(torch.stack(sums).cpu(), torch.stack(expected), rtol=1e-5)
