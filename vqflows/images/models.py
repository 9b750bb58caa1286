r"""VQ-Flows on images: a :class:`~vqflows.VQFlow` with a convolutional VQ autoencoder and
memory-bounded chart frames.

The library's model works on flattened images unchanged; two of its parts are swapped for ones
that scale to ``D = H·W`` of 64 (8×8 digits) to 784 (MNIST):

- the partition becomes an :class:`ImageVQAutoencoder` (a :class:`~vqflows.charts.VQAutoencoder`
  whose codebook placement works on a GPU and encodes in batches) built on
  :class:`~vqflows.images.ConvEncoder` / :class:`~vqflows.images.ConvDecoder` (``"conv"``) or on the
  library's MLP (``"mlp"``);
- the frames become :class:`ImageFrames`, numerically the same affine maps
  ``y = A_k (x − μ_k)`` as :class:`~vqflows.frames.ChartFrames`, but applied by one matrix product
  per chart instead of gathering a ``(D, D)`` matrix per row (``N·D²`` memory: 40 GB for 65,536
  rows of MNIST), fitted one chart at a time, and with the outlier trim scaled to ``D``.

A base flow and its VQ version built here share everything but ``charts``: ``charts=None`` gives
the plain flow behind one global whitening frame.

Letters: N images, D = H·W pixels, K charts, C code dimension.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from scipy.stats import chi2
from sklearn.cluster import KMeans
from torch import Tensor

from ..charts import VQAutoencoder
from ..checks import one_of, positive_int
from ..frames import ChartFrames
from ..model import VQFlow
from .encoders import ConvDecoder, ConvEncoder

__all__ = ["ImageFrames", "ImageVQAutoencoder", "ImageFlowConfig", "build_image_flow", "IMAGE_MODELS", "ENCODERS"]

#: Model names of the image study: base flows and their VQ versions.
IMAGE_MODELS = ("realnvp", "vq-realnvp", "maf", "vq-maf")
#: Encoder / decoder families of the VQ autoencoder.
ENCODERS = ("conv", "mlp")


class ImageFrames(ChartFrames):
    r"""Chart frames ``y = A_k (x − μ_k)`` for high-dimensional ``x``; same buffers and maths as
    :class:`~vqflows.frames.ChartFrames`.

    - :meth:`forward` / :meth:`inverse` sort rows by chart and apply each ``A_k`` once, so memory
      is ``O(M·D + K·D²)`` rather than ``O(M·D²)`` for ``M`` rows.
    - :meth:`fit` fits one chart at a time (``O(N·D)`` working memory instead of ``O(N·K·D)``), and
      once when every chart has the same members (a global frame shared by all charts).
    - The outlier trim defaults to the χ²₀.₉₉₉ quantile with ``D`` degrees of freedom: a whitened
      point has ``‖y‖² ≈ D`` on average, so the library's 3-D threshold of 16 would drop almost
      every image.

    Example:
        >>> frames = ImageFrames(charts=3, features=64)
        >>> x, k = torch.randn(10, 64), torch.randint(0, 3, (10,))
        >>> bool(torch.allclose(frames.inverse(frames(x, k), k), x))
        True
    """

    def __init__(self, charts: int, features: int) -> None:
        super().__init__(charts, features)
        #: whether the last fit gave every chart the same frame (then one product serves all rows)
        self.shared = charts == 1

    @torch.no_grad()
    def fit(self, x: Tensor, member: Tensor, *, similarity_dim: int | None = None, prior_count: float = 4.0,
            floor: float = 1e-6, trim: float | None = None, chunk: int | None = None) -> None:
        """Fit each chart's frame to its members, as :meth:`ChartFrames.fit` does.

        Arguments:
            x: points ``(N, D)``.
            member: chart membership ``(N, K)`` bool.
            similarity_dim, prior_count, floor: as in :meth:`ChartFrames.fit`.
            trim: squared Mahalanobis distance beyond which a member is left out of its chart's
                refit; ``None`` means ``χ²_D`` quantile 0.999.
            chunk: charts fitted together (default: as many as keep ``N·chunk·D`` near 2²⁵ values).
        """
        n, dim = x.shape
        K = member.shape[1]
        if member.shape != (n, self.shift.shape[0]):
            raise ValueError(f"member: expected shape ({n}, {self.shift.shape[0]}), got {tuple(member.shape)}")
        if trim is None:
            trim = float(chi2.ppf(0.999, dim))
        options = dict(similarity_dim=similarity_dim, prior_count=prior_count, floor=floor, trim=trim)
        if bool((member == member[:, :1]).all()):
            # one frame serves every chart: fit it once
            one = self._fit_charts(x, member[:, :1], options)
            for name, value in zip(("shift", "matrix", "inverse_matrix", "logdet"), one):
                getattr(self, name).copy_(value.expand_as(getattr(self, name)))
            self.shared = True
            return
        self.shared = K == 1
        chunk = chunk or max(1, (1 << 25) // max(1, n * dim))
        for start in range(0, K, chunk):
            part = self._fit_charts(x, member[:, start:start + chunk], options)
            for name, value in zip(("shift", "matrix", "inverse_matrix", "logdet"), part):
                getattr(self, name)[start:start + chunk].copy_(value)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.shared = self.shift.shape[0] == 1  # loaded frames may differ per chart

    def _fit_charts(self, x: Tensor, member: Tensor, options: dict) -> tuple[Tensor, ...]:
        # A chart's frame depends only on x and its own membership column, so fitting a slice of
        # columns in a smaller ChartFrames gives exactly the rows of the full fit.
        part = ChartFrames(member.shape[1], x.shape[1]).to(device=self.shift.device, dtype=self.shift.dtype)
        ChartFrames.fit(part, x, member, **options)
        return part.shift, part.matrix, part.inverse_matrix, part.logdet

    def _grouped(self, matrices: Tensor, v: Tensor, k: Tensor) -> Tensor:
        """``out_i = M_{k_i} v_i`` with one product per chart present: ``(K, D, D), (M, D), (M,) -> (M, D)``."""
        K = matrices.shape[0]
        if K == 1 or self.shared:
            return v @ matrices[0].T
        order = torch.argsort(k)
        counts = torch.bincount(k, minlength=K).tolist()
        blocks = v[order].split(counts)
        out = torch.cat([b @ matrices[j].T for j, b in enumerate(blocks)])
        return out[torch.argsort(order)]

    def forward(self, x: Tensor, k: Tensor) -> Tensor:
        """``y = A_k (x − μ_k)`` row by row: ``(M, D), (M,) -> (M, D)``."""
        return self._grouped(self.matrix, x - self.shift[k], k)

    def inverse(self, y: Tensor, k: Tensor) -> Tensor:
        """``x = μ_k + A_k^{-1} y`` row by row: ``(M, D), (M,) -> (M, D)``."""
        return self._grouped(self.inverse_matrix, y, k) + self.shift[k]

    def scale2(self, k: Tensor) -> Tensor:
        """Squared length scale ``1/|A_k|²`` of similarity frames, ``(M,)``."""
        return self.inverse_matrix[:, :, 0].square().sum(-1)[k]


class ImageVQAutoencoder(VQAutoencoder):
    """A :class:`~vqflows.charts.VQAutoencoder` whose codebook placement also runs on a GPU and on
    many images: encodings are computed in batches and moved to the CPU for k-means and for the
    seeded draws that restart unused codes."""

    @torch.no_grad()
    def _encode_all(self, x: Tensor, batch: int = 4096) -> Tensor:
        return torch.cat([self.encode(b) for b in x.split(batch)])

    @torch.no_grad()
    def _init_codebook(self, x: Tensor, seed: int) -> None:
        e = self._encode_all(x).double().cpu().numpy()
        km = KMeans(self.codes, n_init=1, random_state=seed).fit(e)
        self.codebook.copy_(torch.as_tensor(km.cluster_centers_, dtype=self.codebook.dtype))

    @torch.no_grad()
    def _restart_dead_codes(self, x: Tensor, gen: torch.Generator) -> None:
        """Move each unused code onto an encoding drawn with probability ∝ its squared distance to the codebook."""
        e = self._encode_all(x)
        for _ in range(self.codes):
            d2 = torch.cdist(e, self.codebook).square()
            counts = torch.bincount(d2.argmin(-1), minlength=self.codes)
            dead = (counts == 0).nonzero().flatten()
            if len(dead) == 0:
                return
            dmin = d2.min(-1).values.double().cpu()
            if float(dmin.sum()) <= 0:
                return  # fewer distinct encodings than codes
            pick = int(torch.multinomial(dmin / dmin.sum(), 1, generator=gen))
            self.codebook[dead[0]] = e[pick]


@dataclass
class ImageFlowConfig:
    """The architecture of one image model; a base flow and its VQ version differ only in ``charts``.

    Attributes:
        flow: ``"realnvp"`` or ``"maf"``.
        charts: ``K``, or ``None`` for the plain flow.
        latent: code dimension ``C`` of the VQ autoencoder.
        transforms: flow layers.
        hidden: conditioner widths of each layer.
        frames: one whitening frame per chart (``True``) or one global frame for all (``False``).
        encoder: ``"conv"`` or ``"mlp"`` VQ autoencoder.
        vq_channels: conv stages of the encoder (mirrored by the decoder); ``vq_hidden``: the MLP widths,
            or the fully connected width of the conv encoder / decoder (first entry).
    """

    flow: str = "maf"
    charts: int | None = 16
    latent: int = 8
    transforms: int = 5
    hidden: tuple[int, ...] = (256, 256)
    frames: bool = False
    encoder: str = "conv"
    vq_channels: tuple[int, ...] = (16, 32)
    vq_hidden: tuple[int, ...] = (128,)

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

    Example:
        >>> model = build_image_flow(ImageFlowConfig(flow="maf", charts=4, hidden=(32,)), (8, 8))
        >>> model.log_prob(torch.randn(3, 64)).shape
        torch.Size([3])
    """
    if not isinstance(config, ImageFlowConfig):
        raise ValueError(f"config: expected an ImageFlowConfig, got {type(config).__name__}")
    H, W = positive_int(shape[0], name="shape[0]"), positive_int(shape[1], name="shape[1]")
    D = H * W
    model = VQFlow(D, flow=config.flow, charts=config.charts, partition="vqae", latent=config.latent,
                   transforms=config.transforms, hidden_features=config.hidden, vq_hidden=config.vq_hidden,
                   frames=config.frames)
    if model.partition is not None:
        if config.encoder == "conv":
            width = config.vq_hidden[0]
            nets = dict(encoder=ConvEncoder((H, W), config.latent, channels=config.vq_channels, hidden=width),
                        decoder=ConvDecoder((H, W), config.latent, channels=tuple(reversed(config.vq_channels)),
                                            hidden=width))
        else:
            nets = dict(hidden=config.vq_hidden)
        model.partition = ImageVQAutoencoder(D, config.charts, config.latent, **nets)
    model.frames = ImageFrames(model.K, D)
    return model
