"""What every benchmark figure shares: labelled, gridded axes and a tight PNG written at one resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def finish_axes(ax: Any, title: str, xlabel: str, ylabel: str, *, log_x: bool = False, title_size: int = 9,
                legend_size: int = 6, legend_loc: str = "lower right") -> None:
    """Title, labels, light grid and a legend, lower right by default (PSNR curves rise towards the upper right)."""
    if log_x:
        ax.set_xscale("log")
    ax.set_title(title, fontsize=title_size)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, loc=legend_loc)


def save_figure(fig: Any, out: Path) -> Path:
    """Write ``fig`` to ``out`` at 110 dpi and release it (figures pile up memory in long benchmark runs)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
