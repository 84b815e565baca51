"""``tinycnn@fmnist4``: a small CNN whose trained weights ship with the package (tinycnn.pt, a state_dict)."""
from pathlib import Path

import torch.nn as nn

from zsqbench.spine.hookspecs import hookimpl
from zsqbench.teacher.zoo import ModelSpec

WEIGHTS = Path(__file__).with_name("tinycnn.pt")


class Block(nn.Sequential):
    def __init__(self, cin, cout, stride):
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyCNN(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("b1", Block(1, 16, 1))
        self.features.add_module("b2", Block(16, 32, 2))
        self.features.add_module("b3", Block(32, 32, 2))
        self.features.add_module("final_pool", nn.AdaptiveAvgPool2d(1))
        self.output = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.output(self.features(x).flatten(1))


@hookimpl
def zsqbench_register(registry):
    registry.add_model(ModelSpec("tinycnn", "fmnist4", TinyCNN, block_types=("Block",), weights_file=WEIGHTS,
                                 notes="3-block CNN trained on fmnist4 by the plugin's author"))
