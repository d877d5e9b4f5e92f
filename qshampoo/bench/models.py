"""The harness's models: small enough for a 2-core CPU, big enough that Shampoo's factors are
larger than ``min_quant_numel`` (order >= 64) and so really stored in 4 bits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Fully connected classifier: ``inputs -> hidden... -> classes`` with ReLU."""

    def __init__(self, inputs: int = 64, hidden: tuple[int, ...] = (128, 128), classes: int = 10):
        super().__init__()
        sizes = (inputs, *hidden)
        self.hidden = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.out = nn.Linear(sizes[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.out(x)


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BN layers with an identity (or 1x1 conv) shortcut, as in ResNet-18/34."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-style CNN for 28x28x1 images.

    A stride-2 3x3 stem (28 -> 14), one residual block per stage with the width doubling and the
    resolution halving from stage to stage, global average pooling and a linear classifier. With
    ``width=32, stages=2`` it has 77k parameters; its conv weights give Shampoo factors of order
    32..576 (a conv ``(out, in, 3, 3)`` is preconditioned as ``out x 9*in``).
    """

    def __init__(self, width: int = 32, stages: int = 2, classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks, cin = [], width
        for s in range(stages):
            cout = width * 2**s
            blocks.append(ResidualBlock(cin, cout, stride=1 if s == 0 else 2))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.head(h.mean(dim=(2, 3)))


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharGPT(nn.Module):
    """A nanoGPT-style decoder-only transformer over characters (pre-LayerNorm, learned
    positions, GELU MLP, no dropout, untied output head)."""

    def __init__(
        self, vocab: int, block: int = 64, dim: int = 128, layers: int = 2, heads: int = 4
    ):
        super().__init__()
        self.block = block
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(block, dim)
        self.layers = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith(("attn.proj.weight", "out.weight")):
                nn.init.normal_(p, 0.0, 0.02 / (2 * layers) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.block:
            raise ValueError(f"sequence of {t} tokens is longer than the block size {self.block}")
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln(h))
