"""Matplotlib figures used across the notebooks: image grids and curves."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

__all__ = ["image_grid", "interactive", "plot_curves", "show_images"]


def image_grid(images: torch.Tensor | Sequence[torch.Tensor], nrow: int = 8, padding: int = 2,
               normalize: bool = False) -> torch.Tensor:
    """Tile ``(N, C, H, W)`` images into one ``(H', W', C)`` array for ``imshow`` (``C`` is 1 or 3)."""
    from torchvision.utils import make_grid
    x = torch.stack(list(images)) if not torch.is_tensor(images) else images
    x = x.detach().float().cpu()
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(x.shape)}")
    grid = make_grid(x, nrow=nrow, padding=padding, normalize=normalize, pad_value=1.0)
    grid = grid.clamp(0, 1).permute(1, 2, 0)
    return grid[..., :1] if x.shape[1] == 1 else grid


def show_images(images: torch.Tensor | Sequence[torch.Tensor], titles: Sequence[str] | None = None,
                ncols: int = 8, size: float = 1.4, cmap: str = "gray", suptitle: str | None = None):
    """Show images ``(N, C, H, W)`` in a grid of subplots with optional per-image titles; returns the figure."""
    x = [im.detach().float().cpu() for im in images]
    n = len(x)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.3 if suptitle else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, im) in enumerate(zip(axes.flat, x)):
        im = im.clamp(0, 1)
        ax.imshow((im[0] if im.shape[0] == 1 else im.permute(1, 2, 0)).numpy(), cmap=cmap, vmin=0, vmax=1)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_curves(curves: Mapping[str, Sequence[float]], xlabel: str = "iteration", ylabel: str = "",
                title: str | None = None, ax=None, logy: bool = False, x: Sequence[float] | None = None):
    """Plot named curves on one axis (created if ``ax`` is None); returns the axis."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for name, ys in curves.items():
        ax.plot(list(x) if x is not None else range(len(ys)), list(ys), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def interactive(draw, **controls):
    """Show the figure ``draw(**values)`` under ipywidgets ``controls`` (name -> widget) and redraw it on change.

    ``draw`` returns a matplotlib figure. The figure is updated through an IPython display handle rather than drawn
    inside an ``Output`` widget (what ``ipywidgets.interact`` does): headless executors such as papermill can stall on
    ``Output`` widgets (jupyter/nbclient#312), and a stored notebook then shows the default figure.
    """
    import ipywidgets as widgets
    from IPython.display import display

    def render():
        fig = draw(**{name: w.value for name, w in controls.items()})
        plt.close(fig)
        return fig

    handle = display(render(), display_id=True)
    for w in controls.values():
        w.observe(lambda _change: handle.update(render()), "value")
    display(widgets.HBox(list(controls.values())))
    return handle
