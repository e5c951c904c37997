"""The benchmarks' chart: images/s by variant and batch size, drawn with matplotlib when it is
installed (the `plot` extra), as `make run` ends."""

from __future__ import annotations

from pathlib import Path

from cifar_spec.files import write_atomically
from cifar_spec.plot import have_matplotlib


def throughput_chart(rows: list[dict], path: Path) -> Path | None:
    """Images/s by variant and batch size, one panel per device, the roofline dashed."""
    if not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    devices = sorted({r["device"] for r in rows})
    fig, axes = plt.subplots(1, len(devices), figsize=(7 * len(devices), 4.5), squeeze=False)
    for ax, device in zip(axes[0], devices):
        mine = [r for r in rows if r["device"] == device]
        batches = sorted({r["batch"] for r in mine})
        for variant in sorted({r["variant"] for r in mine}):
            points = sorted(
                (r["batch"], r["images_per_s"]) for r in mine if r["variant"] == variant
            )
            ax.plot(*zip(*points), marker="o", label=variant)
        for dtype, style in (("float32", "--"), ("tfloat32", "-."), ("bfloat16", ":")):
            peaks = [
                r["peak_flops"] / r["train_flops_per_image"]
                for r in mine
                if r["peak_dtype"] == dtype
            ]
            if peaks:
                ax.axhline(
                    max(peaks),
                    color="grey",
                    linestyle=style,
                    label=f"roofline ({dtype} matmul peak)",
                )
        ax.set(
            xscale="log",
            yscale="log",
            xticks=batches,
            xlabel="batch size",
            ylabel="images/s",
            title=f"Training step throughput, {device}",
        )
        ax.set_xticklabels([str(b) for b in batches])
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path
