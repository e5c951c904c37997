"""Charts of a run, drawn with matplotlib when it is installed (the `plot` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cifar_spec.files import write_atomically

INSTALL_HINT = "pip install 'cifar-spec[plot]'"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def loss_curve(
    history: list[dict], path: Path, reference: Sequence[float] | None = None
) -> Path | None:
    """Write the per-epoch loss sums as a PNG, with `reference`'s (a published run's sums,
    epoch 1 first) beside them; None (and no file) without matplotlib."""
    if not have_matplotlib():
        return None
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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("sum of batch losses")
    ax.set_title("Training loss per epoch")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path
