"""Attention blocks written the way segmentation libraries write them (smp's MAnet position attention,
Segformer's Mix Transformer), for tests/test_attention.py."""
import torch
import torch.nn.functional as F
from torch import nn


class PositionAttention(nn.Module):
    """smp MAnet's PABBlock: attention of every position to every other, a softmax jointly over all
    ``(HW)^2`` pairs (``sp_map.view(batch, -1)``), and ``(N, HW, C).reshape(N, C, H, W)`` without the transpose
    back (channels and positions mix by ``H * W``)."""

    def __init__(self, channels=4, inner=3):
        super().__init__()
        self.channels = channels
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.top_conv = nn.Conv2d(channels, inner, 1)
        self.center_conv = nn.Conv2d(channels, inner, 1)
        self.bottom_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.map_softmax = nn.Softmax(dim=1)
        self.out_conv = nn.Conv2d(channels, 2, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        batch_size, _, height, width = x.shape
        x_top = self.top_conv(x).flatten(2)
        x_center = self.center_conv(x).flatten(2).transpose(1, 2)
        x_bottom = self.bottom_conv(x).flatten(2).transpose(1, 2)
        sp_map = torch.matmul(x_center, x_top)
        sp_map = self.map_softmax(sp_map.view(batch_size, -1))
        sp_map = sp_map.view(batch_size, height * width, height * width)
        sp_map = torch.matmul(sp_map, x_bottom)
        sp_map = sp_map.reshape(batch_size, self.channels, height, width)
        return self.out_conv(x + sp_map)


class LayerNorm2d(nn.LayerNorm):
    """smp's mix_transformer LayerNorm: over the channels of a 4-D map through a view to tokens."""

    def forward(self, x):
        if x.ndim == 4:
            batch_size, channels, height, width = x.shape
            x = x.view(batch_size, channels, -1).transpose(1, 2)
            x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
            return x.transpose(1, 2).view(batch_size, channels, height, width)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class EfficientAttention(nn.Module):
    """Segformer's attention with spatial reduction ``sr``: keys and values from a strided conv of the map."""

    def __init__(self, dim, heads, sr):
        super().__init__()
        self.heads, self.scale, self.sr_ratio = heads, (dim // heads) ** -0.5, sr
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, stride=sr)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, height, width):
        batch_size, N, C = x.shape
        q = self.q(x).reshape(batch_size, N, self.heads, C // self.heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x_ = x.permute(0, 2, 1).reshape(batch_size, C, height, width)
            x_ = self.sr(x_).reshape(batch_size, C, -1).permute(0, 2, 1)
            x_ = self.norm(x_)
        else:
            x_ = x
        kv = self.kv(x_).reshape(batch_size, -1, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(batch_size, N, C)
        return self.proj(x)


class DWConv(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, height, width):
        batch_size, _, channels = x.shape
        x = x.transpose(1, 2).view(batch_size, channels, height, width)
        return self.dwconv(x).flatten(2).transpose(1, 2)


class MixBlock(nn.Module):
    def __init__(self, dim, heads, sr):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientAttention(dim, heads, sr)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.dwconv = DWConv(2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        batch_size, _, height, width = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm1(x), height, width)
        x = x + self.fc2(F.gelu(self.dwconv(self.fc1(self.norm2(x)), height, width)))
        return x.transpose(1, 2).view(batch_size, -1, height, width)


class MiniSegformer(nn.Module):
    """Overlapping patch embedding, two Mix Transformer blocks (``sr`` 2 and 1), a stage-end norm through
    ``reshape(B, H, W, -1).permute(0, 3, 1, 2)``, and a conv head."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 3, stride=2, padding=1)
        self.embed_norm = LayerNorm2d(dim)
        self.block1 = MixBlock(dim, heads, sr=2)
        self.block2 = MixBlock(dim, heads, sr=1)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Conv2d(dim, 3, 1)

    def forward(self, x):
        x = self.embed_norm(self.embed(x))
        x = self.block2(self.block1(x))
        batch_size, _, height, width = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        x = x.reshape(batch_size, height, width, -1).permute(0, 3, 1, 2)
        return self.head(x)
