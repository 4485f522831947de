"""Matplotlib figures as inline SVG, so the page needs nothing from the network.

matplotlib is imported on first use (the API process never renders). Each figure's ids get
a prefix so several figures can share one page, and the SVG carries no date or creator, so
the same report renders to the same bytes.
"""

from __future__ import annotations

import io
import re

from kdaudit.reporting.html_format import escape

_SVG_PREAMBLE = re.compile(r"^.*?(?=<svg\b)", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_XMLNS = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
_ID = re.compile(r'\bid="([^"]+)"')


def new_figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def svg_element(fig, prefix: str, title: str) -> str:
    """The figure as an inline <svg> element: no XML preamble, no metadata, no namespace URLs
    (the HTML parser supplies them), ids prefixed so several figures can share one page."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = _METADATA.sub("", _SVG_PREAMBLE.sub("", buf.getvalue(), count=1))
    text = _XMLNS.sub("", text)
    for old in set(_ID.findall(text)):
        new = f"{prefix}-{old}"
        text = text.replace(f'id="{old}"', f'id="{new}"').replace(f'"#{old}"', f'"#{new}"')
        text = text.replace(f"url(#{old})", f"url(#{new})")
    # accessible name; let CSS size it
    text = re.sub(r'<svg\b([^>]*?)\swidth="[^"]*"\s+height="[^"]*"', r"<svg\1", text, count=1)
    return text.replace("<svg", f'<svg role="img" aria-label="{escape(title)}" class="plot"', 1).strip()


def style_axes(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
