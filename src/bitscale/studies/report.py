"""Report helpers the studies share: markdown tables and PNG line plots (matplotlib, Agg backend).

``markdown_table`` has no dependencies; ``plot_curves`` imports matplotlib lazily and raises an
ImportError naming the package when it is missing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

__all__ = ["markdown_table", "parse_markdown_table", "plot_curves"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; cells are ``str()``-ed, ``|`` escaped.

    Args:
      align: per column ``"l"``, ``"r"`` or ``"c"`` (default: left for the first column, right
        for the rest).
    """
    n = len(headers)
    if any(len(r) != n for r in rows):
        raise ValueError(f"markdown_table: every row needs {n} cells")
    align = list(align) if align is not None else ["l"] + ["r"] * (n - 1)
    seps = {"l": ":---", "r": "---:", "c": ":---:"}

    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "|".join(seps[a] for a in align) + "|"]
                     + [line(r) for r in rows]) + "\n"


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """Rows of the first markdown table in ``text`` as dicts keyed by header (for tests/tools)."""
    lines = [ln.strip() for ln in text.splitlines()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("|")), None)
    if start is None:
        return []
    block = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        block.append([c.strip() for c in ln.strip("|").split(" | ")])
    headers, body = block[0], block[2:]
    return [dict(zip(headers, r)) for r in body]


def plot_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str, *,
                title: str = "", xlabel: str = "step", ylabel: str = "loss",
                logy: bool = False, logx: bool = False,
                bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
                styles: Mapping[str, str] | None = None) -> str:
    """Writes a PNG with one line per ``name -> (xs, ys)`` on a single axis; returns ``path``.

    ``bands[name] = (lo, hi)`` shades a confidence band under that line; ``styles[name]`` is a
    matplotlib line style (``"--"``, ``":"``).
    """
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plot_curves needs matplotlib (pip install matplotlib)") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        for name, (xs, ys) in curves.items():
            (line,) = ax.plot(list(xs), list(ys), (styles or {}).get(name, "-"), label=name,
                              linewidth=1.4)
            if bands and name in bands:
                lo, hi = bands[name]
                ax.fill_between(list(xs), list(lo), list(hi), color=line.get_color(), alpha=0.15)
        ax.set_xlabel(xlabel)
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_ylabel(ylabel)
        if logy:
            from matplotlib.ticker import FormatStrFormatter
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
        if title:
            ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
