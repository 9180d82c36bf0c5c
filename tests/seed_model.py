"""The hand-written MobileNetV2 of the article the project started from (a Chinese tutorial's PyTorch model), comments translated.

Kept verbatim in structure: an expand conv even at t = 1, ReLU6(inplace=True), the shortcut flag ``is_res``,
layers held in a plain list *and* an nn.Sequential, and a 1x1 conv classifier.
"""
import torch
from torch import nn


class ConvBNRelu(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=0, groups=1, activation=True):
        super(ConvBNRelu, self).__init__()
        if padding == 'same':
            padding = (kernel_size - 1) // 2
        self.layers = [nn.Conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                                 stride=stride, padding=padding, groups=groups, bias=False)]
        self.layers.append(nn.BatchNorm2d(out_channels))
        if activation:
            self.layers.append(nn.ReLU6(inplace=True))
        self.layers2 = nn.Sequential(*self.layers)

    def forward(self, x):
        return self.layers2(x)


class InvertedResidualBlock(nn.Module):
    def __init__(self, in_channels, t, c, s):
        super(InvertedResidualBlock, self).__init__()
        self.exp = ConvBNRelu(in_channels=in_channels, out_channels=in_channels * t, kernel_size=1, stride=1)
        self.depthwise = ConvBNRelu(in_channels=in_channels * t, out_channels=in_channels * t, kernel_size=3,
                                    stride=s, padding=1, groups=in_channels * t)
        self.pointwise = ConvBNRelu(in_channels=in_channels * t, out_channels=c, kernel_size=1, activation=False)
        self.is_res = in_channels == c and s == 1

    def forward(self, x):
        identity = x
        x = self.exp(x)
        x = self.depthwise(x)
        x = self.pointwise(x)
        if self.is_res:
            x = identity + x
        return x


class BottleneckLayer(nn.Module):
    def __init__(self, in_channels, t, c, n, s):
        super(BottleneckLayer, self).__init__()
        self.stack = nn.Sequential(
            InvertedResidualBlock(in_channels, t, c, s),
            *(InvertedResidualBlock(c, t, c, 1) for _ in range(n - 1))
        )

    def forward(self, x):
        return self.stack(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=1000):
        super(MobileNetV2, self).__init__()
        self.c1 = ConvBNRelu(in_channels=3, out_channels=32, kernel_size=3, stride=2, padding=1)
        self.bottleneck1 = BottleneckLayer(32, 1, 16, 1, 1)
        self.bottleneck2 = BottleneckLayer(16, 6, 24, 2, 2)
        self.bottleneck3 = BottleneckLayer(24, 6, 32, 3, 2)
        self.bottleneck4 = BottleneckLayer(32, 6, 64, 4, 2)
        self.bottleneck5 = BottleneckLayer(64, 6, 96, 3, 1)
        self.bottleneck6 = BottleneckLayer(96, 6, 160, 3, 2)
        self.bottleneck7 = BottleneckLayer(160, 6, 320, 1, 1)
        self.c2 = ConvBNRelu(320, 1280, 1)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.c3 = nn.Conv2d(in_channels=1280, out_channels=num_classes, kernel_size=1)

    def forward(self, x):
        x = self.c1(x)
        x = self.bottleneck1(x)
        x = self.bottleneck2(x)
        x = self.bottleneck3(x)
        x = self.bottleneck4(x)
        x = self.bottleneck5(x)
        x = self.bottleneck6(x)
        x = self.bottleneck7(x)
        x = self.c2(x)
        x = self.avg_pool(x)
        x = self.c3(x)
        return x.view(x.size(0), -1)
