"""The papers' model sizes, built on the ``meta`` device (shapes only, nothing allocated),
for ``qshampoo memory``. Architectures follow the standard CIFAR variants and the LLaMA-130M
configuration used by Paper A (hidden 768, 12 layers, 12 heads, MLP 2048, vocab 32000)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def vgg19_cifar(num_classes: int = 100) -> nn.Module:
    cfg = [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, num_classes))


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
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


def resnet34_cifar(num_classes: int = 100) -> nn.Module:
    layers, c = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)], 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(_Basic(c, width, stride if i == 0 else 1))
            c = width
    return nn.Sequential(*layers, nn.Linear(512, num_classes))


def _transformer_block(dim: int, hidden: int, norm: type, bias: bool) -> nn.Module:
    return nn.ModuleDict(
        {
            "norm1": norm(dim),
            "qkv": nn.Linear(dim, 3 * dim, bias=bias),
            "proj": nn.Linear(dim, dim, bias=bias),
            "norm2": norm(dim),
            "fc1": nn.Linear(dim, hidden, bias=bias),
            "fc2": nn.Linear(hidden, dim, bias=bias),
        }
    )


def vit_small_cifar(num_classes: int = 100) -> nn.Module:
    dim, depth, patch, tokens = 384, 12, 4, (32 // 4) ** 2 + 1
    m = nn.Module()
    m.patch = nn.Conv2d(3, dim, patch, patch)
    m.cls = nn.Parameter(torch.zeros(1, 1, dim))
    m.pos = nn.Parameter(torch.zeros(1, tokens, dim))
    m.blocks = nn.ModuleList(
        _transformer_block(dim, 4 * dim, nn.LayerNorm, True) for _ in range(depth)
    )
    m.norm = nn.LayerNorm(dim)
    m.head = nn.Linear(dim, num_classes)
    return m


class _LlamaBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.attn_norm = nn.RMSNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.mlp_norm = nn.RMSNorm(dim)
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)


def llama_130m(vocab: int = 32000) -> nn.Module:
    dim, hidden, depth = 768, 2048, 12
    m = nn.Module()
    m.embed = nn.Embedding(vocab, dim)
    m.layers = nn.ModuleList(_LlamaBlock(dim, hidden) for _ in range(depth))
    m.norm = nn.RMSNorm(dim)
    m.lm_head = nn.Linear(dim, vocab, bias=False)
    return m


#: name -> (builder, the paper's rows from algorithm.md: {optimizer: (metric, total MB)})
PAPER_MODELS: dict[str, tuple[Callable[[], nn.Module], str, dict[str, float]]] = {
    "vgg19-cifar100": (
        vgg19_cifar,
        "sgd",
        {"base": 597, "shampoo": 1065, "naive": 662, "cholesky_ef": 662},
    ),
    "resnet34-cifar100": (resnet34_cifar, "sgd", {}),
    "vit-small-cifar100": (
        vit_small_cifar,
        "adamw",
        {"base": 2930, "shampoo": 3449, "naive": 3002, "cholesky_ef": 3002},
    ),
    "llama-130m": (llama_130m, "adamw", {"base": 45900, "shampoo": 48200, "cholesky_ef": 46200}),
}


def meta_shapes(builder: Callable[[], nn.Module]) -> list[tuple[int, ...]]:
    """Parameter shapes of the model, built on the meta device."""
    with torch.device("meta"):
        model = builder()
    return [tuple(p.shape) for p in model.parameters()]
