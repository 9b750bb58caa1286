"""Convolutional encoder / decoder between flattened images and a small latent space.

A vector-quantised autoencoder partitions image space into charts by the code nearest to each
image's latent; these modules are its encoder ``(N, H·W) → (N, latent)`` and decoder
``(N, latent) → (N, H·W)``. Each of the ``len(channels)`` stages halves the spatial size with a
stride-2 3×3 convolution (rounding up: 28 → 14 → 7, 8 → 4 → 2); the decoder mirrors the stages
with transposed convolutions whose output padding restores the exact size, so any ``H × W`` works.

Letters: N images, D = H·W pixels.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..checks import positive_int

__all__ = ["ConvEncoder", "ConvDecoder"]


def _check_shape(shape) -> tuple[int, int]:
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) != 2:
        raise ValueError(f"shape: expected an image shape (H, W), got {shape!r}")
    return positive_int(shape[0], name="shape[0]"), positive_int(shape[1], name="shape[1]")


def _check_channels(channels) -> tuple[int, ...]:
    if isinstance(channels, int) or not hasattr(channels, "__len__") or len(channels) < 1:
        raise ValueError(f"channels: expected a non-empty tuple of channel counts, got {channels!r}")
    return tuple(positive_int(c, name="channels") for c in channels)


def _check_arguments(shape, latent, channels, hidden) -> tuple[tuple[int, int], int, tuple[int, ...], int]:
    """The checked ``shape``, ``latent``, ``channels`` and ``hidden`` of an encoder or a decoder."""
    return (_check_shape(shape), positive_int(latent, name="latent"), _check_channels(channels),
            positive_int(hidden, name="hidden", minimum=0))


def _sizes(n: int, stages: int) -> list[int]:
    """Spatial sizes after each stride-2 stage: ``n, ⌈n/2⌉, ⌈n/4⌉, …``."""
    sizes = [n]
    for _ in range(stages):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class ConvEncoder(nn.Module):
    """Images ``(*, H·W)`` → latents ``(*, latent)``.

    Arguments:
        shape: the image shape ``(H, W)``.
        latent: the latent dimension.
        channels: output channels of each stride-2 convolution stage.
        hidden: width of the fully connected layer before the latent (0 for none).

    Example:
        >>> import torch
        >>> enc = ConvEncoder(shape=(28, 28), latent=2)
        >>> enc(torch.rand(5, 784)).shape
        torch.Size([5, 2])
    """

    def __init__(self, shape: tuple[int, int] = (28, 28), latent: int = 2, *, channels: tuple[int, ...] = (16, 32),
                 hidden: int = 64):
        super().__init__()
        self.shape, self.latent, channels, hidden = _check_arguments(shape, latent, channels, hidden)
        layers: list[nn.Module] = []
        for c_in, c_out in zip((1, *channels[:-1]), channels):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.SiLU()]
        h, w = _sizes(self.shape[0], len(channels))[-1], _sizes(self.shape[1], len(channels))[-1]
        flat = channels[-1] * h * w
        layers.append(nn.Flatten())
        layers += [nn.Linear(flat, hidden), nn.SiLU(), nn.Linear(hidden, self.latent)] if hidden else \
                  [nn.Linear(flat, self.latent)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        H, W = self.shape
        if x.dim() < 1 or x.shape[-1] != H * W:
            raise ValueError(f"x: expected shape (N, {H * W}) for {H}×{W} images, got {tuple(x.shape)}")
        batch = x.shape[:-1]
        z = self.net(x.reshape(-1, 1, H, W))
        return z.reshape(*batch, self.latent)


class ConvDecoder(nn.Module):
    """Latents ``(*, latent)`` → images ``(*, H·W)``, the mirror of :class:`ConvEncoder` (unbounded outputs:
    pair with whatever representation the encoder saw, e.g. logit-space pixels).

    It takes the encoder's arguments, with ``channels`` the channels of the stages coarsest first (the
    encoder's reversed) and ``hidden`` the width of the fully connected layer after the latent (0 for none).

    Example:
        >>> import torch
        >>> dec = ConvDecoder(shape=(8, 8), latent=4)
        >>> dec(torch.randn(5, 4)).shape
        torch.Size([5, 64])
    """

    def __init__(self, shape: tuple[int, int] = (28, 28), latent: int = 2, *, channels: tuple[int, ...] = (32, 16),
                 hidden: int = 64):
        super().__init__()
        self.shape, self.latent, channels, hidden = _check_arguments(shape, latent, channels, hidden)
        stages = len(channels)
        hs, ws = _sizes(self.shape[0], stages)[::-1], _sizes(self.shape[1], stages)[::-1]
        flat = channels[0] * hs[0] * ws[0]
        layers: list[nn.Module] = [nn.Linear(self.latent, hidden), nn.SiLU(), nn.Linear(hidden, flat)] if hidden else \
                                  [nn.Linear(self.latent, flat)]
        layers += [nn.SiLU(), nn.Unflatten(1, (channels[0], hs[0], ws[0]))]
        for i, (c_in, c_out) in enumerate(zip(channels, (*channels[1:], 1))):
            # a stride-2 transposed 3×3 conv with padding 1 gives 2n − 1 (+ output_padding)
            pad = (hs[i + 1] - (2 * hs[i] - 1), ws[i + 1] - (2 * ws[i] - 1))
            layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad))
            if i < stages - 1:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() < 1 or z.shape[-1] != self.latent:
            raise ValueError(f"z: expected shape (N, {self.latent}), got {tuple(z.shape)}")
        H, W = self.shape
        batch = z.shape[:-1]
        x = self.net(z.reshape(-1, self.latent))
        return x.reshape(*batch, H * W)
