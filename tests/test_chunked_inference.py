"""Full-image inference in chunks (basicsr_iln/archs/chunking.py): the same output as one piece, for every
architecture and norm, in a fraction of the memory."""
import json
import os

import pytest
import torch

from basicsr_iln.archs.chunking import chunk_budget, chunked_inference, window_chunks
from basicsr_iln.archs.drct_arch import DRCT
from basicsr_iln.archs.hat_arch import HAT
from basicsr_iln.archs.swinir_arch import SwinIR_iLN
from basicsr_iln.utils.inference import restore
from helpers import REPO, run_python

TINY = dict(upscale=2, img_size=16, window_size=8, embed_dim=24, num_heads=[2], mlp_ratio=2, upsampler='pixelshuffle')
ARCHS = {  # ARCHS[arch](norm, **kwargs): a tiny network; kwargs are further constructor arguments or override TINY's
    'SwinIR': lambda norm, **kw: SwinIR_iLN(depths=[2], norm_type=norm, **{**TINY, **kw}),
    'HAT': lambda norm, **kw: HAT(depths=[2], norm_type=norm, compress_ratio=3, squeeze_factor=8,  # + OCAB
                                  **{**TINY, **kw}),
    'DRCT': lambda norm, **kw: DRCT(depths=[1], norm_type=norm, gc=8, **{**TINY, **kw}),  # dense blocks, growing width
}


@pytest.mark.parametrize('norm_type', ['ln', 'iln'])
@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_chunked_forward_equals_one_piece(arch, norm_type):
    """Two images of a size that needs padding (37x51 -> 40x56): chunks of one window and one token, of a
    few windows, and of more than one image all give the one-piece output."""
    torch.manual_seed(0)
    net, x = ARCHS[arch](norm_type).eval(), torch.rand(2, 3, 37, 51)
    whole = restore(net, x, max_chunk_tokens=0)
    for max_tokens in (1, 200, 3000):
        torch.testing.assert_close(restore(net, x, max_chunk_tokens=max_tokens), whole, atol=1e-5, rtol=0)


def test_window_chunks_cover_every_window_once_with_its_mask_rows():
    for images, windows, per_chunk in [(1, 7, 3), (3, 7, 3), (3, 7, 7), (3, 7, 15), (2, 5, 1), (4, 6, 100)]:
        seen = []
        for start, stop, mask_start, mask_stop in window_chunks(images, windows, per_chunk):
            assert 0 < stop - start <= max(per_chunk, 1)
            assert mask_stop - mask_start == min(stop - start, windows)
            seen += [(i // windows, i % windows, mask_start + (i - start) % windows) for i in range(start, stop)]
        assert [(image, window) for image, window, _ in seen] == [(i, w) for i in range(images) for w in range(windows)]
        assert all(window == mask_row for _, window, mask_row in seen)  # each window meets its own mask row


def test_training_is_never_chunked():
    """Autograd would keep every chunk: with gradients on, the budget is ignored."""
    with chunked_inference(8):
        assert chunk_budget() is None
        with torch.no_grad():
            assert chunk_budget() == 8
    assert chunk_budget() is None


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match='positive integer'):
        with chunked_inference(-3):
            pass


@pytest.mark.slow
def test_chunked_peak_memory_is_a_fraction_of_one_piece():
    """Measured by the large-image benchmark (torch's CPU allocations recorded by the profiler): a window-16
    SwinIR with 8 heads on a 192x192 input, where one-piece attention needs hundreds of MB (measured 661 MB
    one piece, 91 MB in chunks of 512 tokens, bound 161 MB)."""
    cmd = [REPO / 'scripts' / 'benchmark_large_image.py', '--archs', 'SwinIR', '--norms', 'iln',
           '--lr-size', '192', '192', '--embed-dim', '32', '--depths', '2', '--heads', '8', '--window', '16',
           '--modes', 'unchunked', 'chunked', '--max-chunk-tokens', '512', '--json']
    result = run_python(cmd, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row['mode']: row for row in json.loads(result.stdout.splitlines()[-1])}
    assert rows['chunked']['max_abs_diff'] <= 1e-5
    assert rows['unchunked']['peak_mb'] > 4 * rows['chunked']['peak_mb'], rows
    assert rows['chunked']['peak_mb'] <= rows['chunked']['bound_mb'], rows
