"""Charts of a run, drawn with matplotlib when it is installed (the `plot` extra)."""

from __future__ import annotations

from pathlib import Path

INSTALL_HINT = "pip install 'cifar-spec[plot]'"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def loss_curve(history: list[dict], path: Path) -> Path | None:
    """Write the per-epoch loss sums as a PNG; None (and no file) without matplotlib."""
    if not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg")  # no screen needed; chosen here, not at import time
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([row["epoch"] for row in history], [row["loss_sum"] for row in history], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("sum of batch losses")
    ax.set_title("Training loss per epoch")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
