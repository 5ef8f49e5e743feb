"""The picture of one alignment: similarity and transport plan over time (matplotlib, PNG)."""

from __future__ import annotations

import io
import os

import numpy as np

from data_pipeline import fileio
from norton_jax.align.algorithm import VideoAlignment

PathLike = str | os.PathLike

__all__ = ["plot_alignment"]


def plot_alignment(result: VideoAlignment, out: PathLike, *, max_label: int = 40) -> None:
    """PNG: the similarity and the plan over time (captions x seconds); original spans in
    white (similarity) / black (plan), re-aligned spans in orange (grey when rejected),
    rejected captions in red.  Written atomically through :mod:`data_pipeline.fileio`."""
    import matplotlib  # noqa: PLC0415 - matplotlib only when a picture is asked for

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    m, t = result.plan.shape
    height = min(30.0, 1.6 + 0.32 * m)
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, min(24.0, t / 25.0)), 2 * height), constrained_layout=True)
    labels = []
    for i, text in enumerate(result.captions.texts):
        short = text if len(text) <= max_label else text[: max_label - 1] + "…"
        labels.append(f"{i}: {short}" + ("  [rejected]" if result.rejected[i] else f"  ({result.alignability[i]:.2f})"))
    sim = np.where(result.similarity <= -1e4, np.nan, result.similarity)
    window, stride = result.config.window, result.config.stride
    panels = [(f"cosine similarity ({window} s windows, {stride} s stride)", sim, "viridis"),
              (f"Norton transport plan with the prompt bucket (p = {result.bucket_value:.3f})", result.plan, "Blues")]
    for ax, (title, mat, cmap), orig in zip(axes, panels, ("white", "black")):
        ax.imshow(mat, aspect="auto", cmap=cmap, interpolation="nearest", extent=(0, t, m - 0.5, -0.5))
        for i in range(m):
            ax.plot([result.captions.starts[i], result.captions.ends[i]], [i, i], color=orig, lw=3, alpha=0.9,
                    solid_capstyle="butt", label="original time" if i == 0 else None)
            ax.plot([result.aligned_starts[i], result.aligned_ends[i]], [i + 0.25, i + 0.25],
                    color="grey" if result.rejected[i] else "darkorange", lw=2, solid_capstyle="butt",
                    label="re-aligned" if i == 0 else None)
        ax.set_yticks(range(m), labels, fontsize=7)
        for lab, rej in zip(ax.get_yticklabels(), result.rejected):
            if rej:
                lab.set_color("crimson")
        ax.set_xlabel("seconds")
        ax.set_title(title, fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
    fig.suptitle(f"{result.video_id or 'video'}: {m} captions, {int(result.rejected.sum())} rejected", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    out = os.fspath(out)
    folder = fileio.dirname(out)
    if folder:
        fileio.makedirs(folder)
    with fileio.atomic_output(out, "wb") as fh:
        fh.write(buf.getvalue())
