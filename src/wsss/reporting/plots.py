"""What every figure of the toolkit shares: percent axes, the legend above the plot, and
an atomic PNG write. Matplotlib is imported by the caller's function, never at import."""

from __future__ import annotations

import os

from wsss.core.atomic import atomic_path


def finish_percent_axes(ax, ylabel: str, legend_columns: int, legend_size: int = 8) -> None:  # noqa: ANN001
    """A 0-100 % y axis with a grid, and the legend in a row above the axes."""
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.legend(
        fontsize=legend_size,
        ncol=legend_columns,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        frameon=False,
    )
    ax.grid(axis="y", alpha=0.3)


def save_figure(fig, out: str | os.PathLike[str]) -> None:  # noqa: ANN001
    """Write ``fig`` as a PNG (110 dpi, tight layout) atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
