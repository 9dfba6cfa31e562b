"""PNG plots of a dataset's facts (reading.stats.dataset_facts): thin matplotlib drawing only.

Agg backend (no display), fixed size and dpi, no timestamp or software tag in the PNG metadata,
so the same facts give the same bytes with the same matplotlib.
"""
from __future__ import annotations

import io
from typing import Callable, Dict, List

from synanno_datagen.reading.dataset import write_view
from synanno_datagen.reading.stats import REDRAW_NOTE
from synanno_datagen.layout import join

FIGSIZE_IN = (6.0, 3.6)
DPI = 80
PLOT_NAMES = ("seed_count.png", "seed_z.png", "foreground_voxels.png", "failures.png")
OBSERVED, EXPECTED = "#4c72b0", "#dd8452"


def png_bytes(draw: Callable) -> bytes:
    """Run ``draw(ax)`` on a fresh figure and return the PNG (deterministic bytes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    FigureCanvasAgg(fig)   # Agg without touching pyplot or the global backend
    ax = fig.add_subplot()
    draw(ax)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _bars_with_expected(ax, x, observed, expected, xlabel, title, variants):
    """Observed bars and the expected line; the redraw note when variants after the first
    were drawn (``variants`` > 1)."""
    ax.bar(x, observed, color=OBSERVED, label="observed")
    ax.plot(x, expected, "o-", color=EXPECTED, label="expected (seed model)")
    ax.set_xlabel(xlabel)
    ax.set_title(title + ("\n" + REDRAW_NOTE if variants > 1 else ""), fontsize=9)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)


def draw_seed_count(ax, facts: dict) -> None:
    h = facts["index"]["seed_count"]
    _bars_with_expected(ax, h["count"], h["observed"], h["expected"], "seed slices per variant",
                        f"seed-slice count, {sum(h['observed'])} variants",
                        facts["config"]["variants"])
    ax.set_xticks(h["count"])
    ax.set_ylabel("variants")


def draw_seed_z(ax, facts: dict) -> None:
    h = facts["index"]["seed_z"]
    _bars_with_expected(ax, h["z"], h["observed"], h["expected"], "z index in the crop",
                        f"seed-slice z position, {sum(h['observed'])} seed slices",
                        facts["config"]["variants"])
    ax.set_ylabel("seed slices")


def draw_foreground_voxels(ax, facts: dict) -> None:
    fg = facts["index"]["foreground_voxels"]
    if fg:
        h = fg["histogram"]
        edges = h["edges"]
        ax.stairs(h["counts"], edges, fill=True, color=OBSERVED)
    ax.set_xlabel("foreground voxels of the full mask (source grid)")
    ax.set_ylabel("instances")
    ax.set_title(f"synapse size, {facts['index']['instances']} instances", fontsize=10)


def draw_failures(ax, facts: dict) -> None:
    failures = facts["failures"]
    reasons = list(failures)[::-1]
    counts = [failures[r]["count"] for r in reasons]
    if reasons:
        ax.barh(reasons, counts, color="#c44e52")
        for y, n in enumerate(counts):
            ax.text(n, y, f" {n}", va="center", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no failures", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rows or instances")
    ax.set_title(f"failures by reason, {sum(counts)} in all", fontsize=10)


DRAWERS: Dict[str, Callable] = dict(zip(PLOT_NAMES, (draw_seed_count, draw_seed_z,
                                                       draw_foreground_voxels, draw_failures)))


def write_plots(facts: dict, plots_dir: str) -> List[str]:
    """Write the four PNGs into ``plots_dir`` (local or gs://); return their paths."""
    paths = []
    for name, draw in DRAWERS.items():
        path = join(plots_dir, name)
        write_view("--plots", path, png_bytes(lambda ax: draw(ax, facts)))
        paths.append(path)
    return paths

