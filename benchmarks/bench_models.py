"""Larger benchmark models built in torch (random init, no download) and exported to ONNX.

- ``rescnn``: a residual CNN (widths 16-32-64, BatchNorm) on 8x8 single-channel images, the
  shape of the issue's measurement (sklearn digits-like inputs);
- ``resnet18w``: ResNet-18's stage widths (64-128-256-512, two basic blocks each) on 32x32 RGB;
- ``mobilenet``: a MobileNet-style stack of depthwise-separable blocks on 32x32 RGB.

BatchNorm running statistics are randomised so the exporter's folding is not a no-op. The legacy
exporter (``dynamo=False``) folds BatchNorm into the convolutions, as a chip stores them; the
dynamo exporter would keep it, which ONNX Runtime folds the same way when it optimises.
Labels are the clean model's own arg-max (accuracy 1.0 at sigma 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _torch():
    import torch
    from torch import nn

    return torch, nn


def _randomise_batchnorm(model, seed: int) -> None:
    torch, nn = _torch()
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(c, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(c, generator=generator))


def _basic_block(cin: int, cout: int, stride: int):
    torch, nn = _torch()

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.short(x))

    return Block()


def residual_cnn(widths: tuple[int, ...], channels: int, blocks: int = 1):
    """Stem conv, ``blocks`` basic blocks per width (stride 2 between widths), pool, linear."""
    _, nn = _torch()
    layers = [nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0])]
    layers.append(nn.ReLU())
    cin = widths[0]
    for i, width in enumerate(widths):
        for b in range(blocks):
            layers.append(_basic_block(cin, width, 2 if (i > 0 and b == 0) else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


def mobilenet_style(channels: int = 3):
    """Depthwise-separable blocks (3x3 depthwise + 1x1 pointwise, BatchNorm, ReLU6)."""
    _, nn = _torch()

    def separable(cin: int, cout: int, stride: int):
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
            nn.BatchNorm2d(cin),
            nn.ReLU6(),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(),
        )

    plan = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2)]
    layers = [nn.Conv2d(channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    layers += [separable(a, b, s) for a, b, s in plan]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10)]
    return nn.Sequential(*layers)


#: name -> (builder, input shape without batch, images)
SPECS = {
    "rescnn": (lambda: residual_cnn((16, 32, 64), 1), (1, 8, 8), 2000),
    "resnet18w": (lambda: residual_cnn((64, 128, 256, 512), 3, blocks=2), (3, 32, 32), 64),
    "mobilenet": (mobilenet_style, (3, 32, 32), 256),
}


def build(name: str, folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Export model ``name`` to ``folder/name.onnx`` and make its data (x, labels)."""
    torch, _ = _torch()
    builder, shape, images = SPECS[name]
    torch.manual_seed(0)
    model = builder().eval()
    _randomise_batchnorm(model, 1)
    x = np.random.default_rng(0).normal(0, 1, (images, *shape)).astype(np.float32)
    path = folder / f"{name}.onnx"
    if not path.exists():
        torch.onnx.export(
            model,
            (torch.from_numpy(x[:2]),),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    return path, x, y
