r"""VQ-Flows on images: a :class:`~vqflows.VQFlow` composed with a convolutional VQ autoencoder.

The library's model works on flattened images unchanged (its frames apply one matrix product per
chart when ``D`` is large, and fit a few charts at a time); the partition is the library's
:class:`~vqflows.charts.VQAutoencoder` (chunked passes, codebook placement on any device) built on :class:`~vqflows.images.ConvEncoder` /
:class:`~vqflows.images.ConvDecoder` (``"conv"``) or on the library's MLP (``"mlp"``). The presets
``image-realnvp``, ``image-vq-realnvp``, ``image-maf`` and ``image-vq-maf`` build them.

A base flow and its VQ version built here share everything but ``charts``: ``charts=None`` gives
the plain flow behind one global whitening frame.

Letters: N images, D = H·W pixels, K charts, C code dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from .. import presets
from ..charts import VQAutoencoder
from ..checks import one_of, positive_int
from ..flows import ZukoFlow
from ..model import VQFlow
from .encoders import ConvDecoder, ConvEncoder

__all__ = ["ImageArchitecture", "ImageFlowConfig", "build_image_flow", "IMAGE_MODELS", "ENCODERS",
           "image_realnvp", "image_vq_realnvp", "image_maf", "image_vq_maf"]

#: Model names of the image study: base flows and their VQ versions.
IMAGE_MODELS = ("realnvp", "vq-realnvp", "maf", "vq-maf")
#: Encoder / decoder families of the VQ autoencoder.
ENCODERS = ("conv", "mlp")


#: Image frames leave out of a chart's refit the members beyond the χ²_D 0.999 quantile.
IMAGE_TRIM_LEVEL = 0.999


@dataclass
class ImageArchitecture:
    """The network of an image model apart from its flow and ``charts``, with the digits study's defaults;
    :class:`ImageFlowConfig` and :class:`~vqflows.images.StudyConfig` hold these settings.

    Attributes:
        latent: code dimension ``C`` of the VQ autoencoder.
        transforms: flow layers.
        hidden: conditioner widths of each layer.
        frames: one whitening frame per chart (``True``) or one global frame for all (``False``).
        encoder: ``"conv"`` or ``"mlp"`` VQ autoencoder.
        vq_channels: conv stages of the encoder (mirrored by the decoder); ``vq_hidden``: the MLP widths,
            or the fully connected width of the conv encoder / decoder (first entry).
    """

    latent: int = 8
    transforms: int = 5
    hidden: tuple[int, ...] = (256, 256)
    frames: bool = False
    encoder: str = "conv"
    vq_channels: tuple[int, ...] = (16, 32)
    vq_hidden: tuple[int, ...] = (128,)

    def architecture(self) -> dict[str, Any]:
        """The settings of :class:`ImageArchitecture`, by name."""
        return {f.name: getattr(self, f.name) for f in fields(ImageArchitecture)}


@dataclass
class ImageFlowConfig(ImageArchitecture):
    """The architecture of one image model; a base flow and its VQ version differ only in ``charts``.

    Attributes:
        flow: ``"realnvp"`` or ``"maf"``.
        charts: ``K``, or ``None`` for the plain flow.

    The other settings are those of :class:`ImageArchitecture`.
    """

    flow: str = "maf"
    charts: int | None = 16

    def __post_init__(self) -> None:
        one_of(self.flow, ("realnvp", "maf"), name="flow")
        one_of(self.encoder, ENCODERS, name="encoder")
        if self.charts is not None:
            positive_int(self.charts, name="charts", minimum=2)
        positive_int(self.latent, name="latent")
        positive_int(self.transforms, name="transforms")
        self.hidden = tuple(positive_int(h, name="hidden") for h in self.hidden)
        self.vq_channels = tuple(positive_int(c, name="vq_channels") for c in self.vq_channels)
        self.vq_hidden = tuple(positive_int(h, name="vq_hidden") for h in self.vq_hidden)
        if not self.hidden or not self.vq_hidden or not self.vq_channels:
            raise ValueError(f"hidden, vq_channels, vq_hidden: expected non-empty tuples, got "
                             f"{self.hidden!r}, {self.vq_channels!r}, {self.vq_hidden!r}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def build_image_flow(config: ImageFlowConfig, shape: tuple[int, int]) -> VQFlow:
    """A :class:`~vqflows.VQFlow` on flattened ``H×W`` images (``D = H·W``) for ``config``.

    The VQ autoencoder (when ``config.charts``) sees the logit-space pixels, standardised per
    pixel; with ``encoder="conv"`` it reshapes them to ``H×W`` and uses stride-2 convolutions.
    The model remembers its preset (``image-maf``, ``image-vq-maf``, ...) so that it can be saved
    and loaded.

    Example:
        >>> model = build_image_flow(ImageFlowConfig(flow="maf", charts=4, hidden=(32,)), (8, 8))
        >>> model.log_prob(torch.randn(3, 64)).shape, model.spec["preset"]
        (torch.Size([3]), 'image-vq-maf')
    """
    if not isinstance(config, ImageFlowConfig):
        raise ValueError(f"config: expected an ImageFlowConfig, got {type(config).__name__}")
    name = f"image-{'vq-' if config.charts else ''}{config.flow}"
    args = config.to_dict()
    del args["flow"]
    if not config.charts:
        del args["charts"]
    return presets.create(name, shape=list(shape), **args)


def _image_flow(flow: str, charts: int | None, shape: Sequence[int], **options: Any) -> VQFlow:
    config = ImageFlowConfig(flow=flow, charts=charts, **options)
    if not (isinstance(shape, (list, tuple)) and len(shape) == 2):
        raise ValueError(f"shape: expected (H, W), got {shape!r}")
    H, W = positive_int(shape[0], name="shape[0]"), positive_int(shape[1], name="shape[1]")
    D = H * W
    partition = None
    if config.charts:
        if config.encoder == "conv":
            width = config.vq_hidden[0]
            nets = dict(encoder=ConvEncoder((H, W), config.latent, channels=config.vq_channels, hidden=width),
                        decoder=ConvDecoder((H, W), config.latent, channels=tuple(reversed(config.vq_channels)),
                                            hidden=width))
        else:
            nets = dict(hidden=config.vq_hidden)
        partition = VQAutoencoder(D, config.charts, config.latent, **nets)
    flow = ZukoFlow(config.flow, D, partition.latent if partition is not None else 0,
                    transforms=config.transforms, hidden_features=config.hidden)
    return VQFlow(flow, partition, local_frames=config.frames, trim=IMAGE_TRIM_LEVEL)


def image_realnvp(shape: Sequence[int], **options: Any) -> VQFlow:
    """Plain RealNVP on flattened images (one global whitening frame); options of :class:`ImageFlowConfig`."""
    return _image_flow("realnvp", None, shape, **options)


def image_vq_realnvp(shape: Sequence[int], charts: int = 16, **options: Any) -> VQFlow:
    """VQ-RealNVP on flattened images with a VQ autoencoder of ``charts`` codes; options of :class:`ImageFlowConfig`."""
    return _image_flow("realnvp", charts, shape, **options)


def image_maf(shape: Sequence[int], **options: Any) -> VQFlow:
    """Plain MAF on flattened images (one global whitening frame); options of :class:`ImageFlowConfig`."""
    return _image_flow("maf", None, shape, **options)


def image_vq_maf(shape: Sequence[int], charts: int = 16, **options: Any) -> VQFlow:
    """VQ-MAF on flattened images with a VQ autoencoder of ``charts`` codes; options of :class:`ImageFlowConfig`."""
    return _image_flow("maf", charts, shape, **options)
