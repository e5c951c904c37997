"""Charts of a run, drawn with matplotlib when it is installed (the `plot` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cifar_spec.files import write_atomically

if TYPE_CHECKING:  # matplotlib is an extra: imported where a chart is drawn
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'cifar-spec[plot]'"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def loss_figure(history: list[dict], reference: Sequence[float] | None = None) -> Figure:
    """The per-epoch loss sums, with `reference`'s (a published run's sums, epoch 1 first)
    beside them; its x axis ticks at whole epochs only, however few ran."""
    import matplotlib

    matplotlib.use("Agg")  # no screen needed; chosen here, not at import time
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row["loss_sum"] for row in history], marker="o", label="this run")
    if reference:
        shown = reference[: max(epochs)]
        ax.plot(
            range(1, len(shown) + 1),
            shown,
            linestyle="--",
            marker="x",
            color="grey",
            label="the tutorial's run on real CIFAR-10 (published)",
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("epoch")
    # Half an epoch of margin each side: matplotlib's own limits around one or two points
    # leave too little room for two whole numbers, and its locator then ticks at fractions.
    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_ylabel("sum of batch losses")
    ax.set_title("Training loss per epoch")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def loss_curve(
    history: list[dict], path: Path, reference: Sequence[float] | None = None
) -> Path | None:
    """Write `loss_figure` as a PNG at `path`; None (and no file) without matplotlib."""
    if not have_matplotlib():
        return None
    from matplotlib import pyplot as plt

    fig = loss_figure(history, reference)
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path
