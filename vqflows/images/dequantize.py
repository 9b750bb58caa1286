r"""Uniform dequantisation and the logit transform for images of integer levels.

A flow models a density on ``R^D``; images are integer levels ``k ∈ {0, …, L−1}^D``. Following
RealNVP (Dinh et al., 2017) and MAF (Papamakarios et al., 2017):

.. math::
    x = (k + u) / L, \quad u \sim U(0, 1)^D, \qquad
    s = \alpha + (1 - 2\alpha)\,x, \qquad y = \operatorname{logit}(s) = \log s - \log(1 - s).

The map ``x ↦ y`` is elementwise, so

.. math::
    \log|\det \partial y / \partial x| = \sum_i \log(1 - 2\alpha) - \log s_i - \log(1 - s_i).

Since ``x`` is uniform on the cell ``[k, k+1)/L`` of volume ``L^{-D}``, Jensen's inequality gives
the dequantisation lower bound (Theis et al., 2016)

.. math::
    \log P(k) \ge \mathbb{E}_u[\log p_y(y) + \log|\det \partial y/\partial x|] - D \log L,

and :func:`bits_per_dim` turns the right-hand side into bits per dimension,
``−(log p_y + logdet − D log L) / (D log 2)``.

``α`` keeps ``s`` away from 0 and 1 where the logit diverges. The default ``α = 10^{-6}`` is the
value MAF used on MNIST (the setting the VQ-Flows MNIST experiment builds on); RealNVP used
``α = 0.05`` on natural images, which compresses the range of ``y`` to ``±2.94``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..checks import positive_int

__all__ = ["LogitDequantization", "bits_per_dim"]


class LogitDequantization:
    r"""Uniform dequantisation followed by the logit transform (see the module docstring).

    Arguments:
        levels: the number of intensity levels ``L`` (``>= 2``).
        alpha: the boundary margin ``α ∈ [0, 1/2)``; default ``10^{-6}`` as in MAF on MNIST,
            ``0.05`` reproduces RealNVP.

    Example:
        >>> import torch
        >>> deq = LogitDequantization(levels=17)
        >>> k = torch.randint(0, 17, (5, 64))
        >>> y, logdet = deq.forward(k, torch.Generator().manual_seed(0))
        >>> bool((deq.inverse(y) == k).all())
        True
    """

    def __init__(self, levels: int, *, alpha: float = 1e-6):
        self.levels = positive_int(levels, name="levels", minimum=2)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha: expected a number in [0, 0.5), got {alpha!r}")
        if alpha == 0.0:
            # with α = 0 a draw u = 0 at level 0 maps to y = −∞; forbid it rather than emit infinities
            raise ValueError("alpha: expected a number in (0, 0.5) (0 makes y infinite at the cube's faces), got 0")
        self.alpha = float(alpha)

    def __repr__(self) -> str:
        return f"LogitDequantization(levels={self.levels}, alpha={self.alpha:g})"

    def dequantize(self, levels: Tensor, generator: torch.Generator | None = None,
                   dtype: torch.dtype | None = None) -> Tensor:
        """``(N, D)`` integer levels → ``x = (k + u)/L ∈ [0, 1)``, ``(N, D)``, with ``u ~ U(0, 1)``."""
        k = self._check_levels(levels)
        dtype = dtype or torch.get_default_dtype()
        u = torch.rand(k.shape, generator=generator, dtype=dtype, device=k.device)
        return (k.to(dtype) + u) / self.levels

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The logit map on the unit cube: ``(N, D) → (y (N, D), log|det ∂y/∂x| (N,))``."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
            got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected a floating tensor of shape (N, D), got {got}")
        a = self.alpha
        s = a + (1 - 2 * a) * x
        log_s, log_1ms = torch.log(s), torch.log1p(-s)
        y = log_s - log_1ms
        logdet = (math.log1p(-2 * a) - log_s - log_1ms).sum(dim=-1)
        return y, logdet

    def forward(self, levels: Tensor, generator: torch.Generator | None = None, *,
                dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Dequantise and logit-transform: ``(N, D)`` levels → ``(y (N, D), logdet (N,))``.

        ``logdet`` is ``log|det ∂y/∂x|`` for ``x = (k + u)/L`` on the unit cube, to be passed
        with the flow's ``log p_y(y)`` to :func:`bits_per_dim`.

        Arguments:
            levels: integer-valued tensor with entries in ``{0, …, L−1}``.
            generator: source of the uniform noise ``u`` (seeded runs are reproducible).
            dtype: floating dtype of ``y`` (default: torch's default dtype).
        """
        return self.transform(self.dequantize(levels, generator, dtype))

    __call__ = forward

    def to_unit(self, y: Tensor) -> Tensor:
        """Inverse logit: ``y ↦ x = (σ(y) − α)/(1 − 2α)``, clamped to ``[0, 1]``; shape kept."""
        if not isinstance(y, Tensor) or not y.is_floating_point():
            raise ValueError(f"y: expected a floating tensor, got {type(y).__name__}"
                             f"{' ' + str(y.dtype) if isinstance(y, Tensor) else ''}")
        if torch.isnan(y).any():
            raise ValueError(f"y: expected no NaN, got {int(torch.isnan(y).sum())} NaN value(s)")
        return ((torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)).clamp(0.0, 1.0)

    def inverse(self, y: Tensor) -> Tensor:
        """Quantise back to levels: ``k = ⌊L·x⌋`` clipped to ``{0, …, L−1}``, as ``torch.int64``.

        ``⌊·⌋`` sends the whole cell ``[k, k+1)/L`` that dequantisation spreads ``k`` over back to
        ``k``, so ``inverse(forward(k)) == k``; samples of ``y`` outside the cube's image are clipped
        to the nearest level. ``±inf`` is accepted (it maps to ``0`` / ``L−1``).
        """
        x = self.to_unit(y)
        return torch.floor(x * self.levels).clamp_(0, self.levels - 1).to(torch.int64)

    def _check_levels(self, levels) -> Tensor:
        if isinstance(levels, np.ndarray):
            levels = torch.from_numpy(levels)
        if not isinstance(levels, Tensor):
            raise ValueError(f"levels: expected an integer tensor of shape (N, D), got {type(levels).__name__}")
        if levels.dim() != 2:
            raise ValueError(f"levels: expected shape (N, D), got {tuple(levels.shape)}")
        if levels.is_floating_point():
            if not torch.isfinite(levels).all() or (levels != torch.round(levels)).any():
                raise ValueError("levels: expected integer values, got non-integer floats")
        elif levels.dtype == torch.bool or levels.is_complex():
            raise ValueError(f"levels: expected an integer tensor, got dtype {levels.dtype}")
        if levels.numel() and (levels.min() < 0 or levels.max() > self.levels - 1):
            raise ValueError(f"levels: expected values in 0..{self.levels - 1}, "
                             f"got range {int(levels.min())}..{int(levels.max())}")
        return levels


def bits_per_dim(log_prob_y: Tensor | float, logdet: Tensor | float, D: int, L: int) -> Tensor:
    r"""Bits per dimension of the discrete data from a model's log-density of ``y``.

    .. math:: \text{bpd} = -\frac{\log p_y(y) + \log|\det \partial y/\partial x| - D \log L}{D \log 2}

    This is an upper bound on ``−log₂ P(k) / D`` in expectation over the dequantisation noise
    (the module docstring derives it). Shapes of ``log_prob_y`` and ``logdet`` broadcast, e.g.
    ``(N,)`` each → ``(N,)``; average the result over points for a dataset's bits/dim.

    Arguments:
        log_prob_y: ``log p_y(y)`` in nats.
        logdet: ``log|det ∂y/∂x|`` from :meth:`LogitDequantization.forward`.
        D: the number of dimensions (pixels).
        L: the number of levels per pixel.
    """
    D = positive_int(D, name="D")
    L = positive_int(L, name="L", minimum=2)
    log_prob_y = torch.as_tensor(log_prob_y)
    logdet = torch.as_tensor(logdet, dtype=log_prob_y.dtype if log_prob_y.is_floating_point() else None)
    try:
        total = log_prob_y + logdet
    except RuntimeError as e:
        raise ValueError(f"log_prob_y, logdet: expected broadcastable shapes, got "
                         f"{tuple(log_prob_y.shape)} and {tuple(logdet.shape)}") from e
    return -(total - D * math.log(L)) / (D * math.log(2.0))
