"""Small networks that are not in the zoo, for tests/test_export.py: `--model own_network:tiny` and friends."""
import torch.nn as nn


def tiny() -> nn.Module:
    """A 2-conv CNN for 1x32x32 inputs and 10 classes (BN, ReLU, max-pool, linear head)."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 10))


def no_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


class _Conv1dHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv1d(4, 10, 1)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean(3)).mean(2)


def conv1d() -> nn.Module:
    return _Conv1dHead()


def raises() -> nn.Module:
    raise RuntimeError("out of coffee")


def not_a_module():
    return "a string"
