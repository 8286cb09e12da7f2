"""The short convolution equals torch's depthwise Conv1d and streams token by token."""

import torch

from mcrnn.layers.conv import ShortConvolution


def test_matches_depthwise_conv1d_and_streams():
    torch.manual_seed(0)
    conv = ShortConvolution(6, kernel_size=4).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64, requires_grad=True)
    y, state = conv(x)
    padded = torch.nn.functional.pad(x.transpose(1, 2), (3, 0))
    expected = torch.nn.functional.silu(conv.conv(padded)).transpose(1, 2)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-12)
    (grad,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)
    assert grad.abs().sum() > 0
    outputs, running = [], None
    for t in range(9):
        out, running = conv(x[:, t : t + 1], running)
        outputs.append(out)
    torch.testing.assert_close(torch.cat(outputs, 1), y, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(running, state)
