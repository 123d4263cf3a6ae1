"""Interactive figures with a static fallback: a slider that redraws a plot, and the same plot as a grid.

Widgets render in Jupyter, Colab and (from saved widget state, with a CDN) in the HTML book; offline or in
a PDF they show nothing, so every chapter also draws the static grid produced by :func:`panel_grid`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def slider_figure(
    draw: Callable[[object, float], None],
    values: Sequence[float],
    *,
    value: float | None = None,
    description: str = "value",
    figsize: tuple[float, float] = (5.0, 3.2),
):
    """An ipywidgets slider over ``values``; moving it calls ``draw(ax, value)`` on a fresh axis."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    values = list(values)
    if not values:
        raise ValueError("values is empty; give the slider at least one value")
    start = values[len(values) // 2] if value is None else value
    if start not in values:
        raise ValueError(f"value {start!r} is not one of the slider values {values}")
    slider = widgets.SelectionSlider(options=values, value=start, description=description, continuous_update=False)
    out = widgets.Output()

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=figsize)
            draw(ax, slider.value)
            fig.tight_layout()
            plt.show()

    slider.observe(redraw, names="value")
    redraw()
    return widgets.VBox([slider, out])


def panel_grid(
    draw: Callable[[object, float], None],
    values: Sequence[float],
    *,
    label: str = "value",
    panel_size: tuple[float, float] = (3.0, 2.6),
):
    """The static fallback: ``draw(ax, v)`` for each v side by side, each panel titled ``label = v``."""
    import matplotlib.pyplot as plt

    values = list(values)
    if not values:
        raise ValueError("values is empty; give at least one panel value")
    fig, axes = plt.subplots(
        1, len(values), figsize=(panel_size[0] * len(values), panel_size[1]), sharey=True, squeeze=False
    )
    for ax, v in zip(axes[0], values):
        draw(ax, v)
        ax.set_title(f"{label} = {v:g}")
    fig.tight_layout()
    return fig


def frontier_panel(ax, optimal, best_of_n, marked, *, who: str = "toy", ylabel: str = "expected reward"):
    """One reward–KL panel (chapter 6): the optimal frontier as a line, best-of-n as points, one point starred.

    ``optimal`` and ``best_of_n`` are (kls, rewards) pairs as ``bon.rlhf_frontier`` / ``bon.bon_frontier`` return
    them; ``marked`` is one (kl, reward) point; ``who`` prefixes the legend (e.g. "toy", "SmolLM2").
    """
    for name, curve in (("optimal", optimal), ("best_of_n", best_of_n)):
        if len(curve) != 2 or len(curve[0]) != len(curve[1]):
            raise ValueError(f"{name} must be a (kls, rewards) pair of equal lengths; got {curve!r}")
    ax.plot(optimal[0], optimal[1], color="C0", label=rf"{who}: optimal $\pi_\beta$")
    ax.plot(best_of_n[0], best_of_n[1], "o", ms=3, color="C1", label=f"{who}: best-of-n")
    ax.plot([marked[0]], [marked[1]], "*", ms=14, color="C3")
    ax.set_xlabel("KL [nats]")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, loc="lower right")


def token_strip(ax, tokens: Sequence[str], values: Sequence[float], *, scale: float | None = None, width: int = 9):
    """One response as a strip of coloured tokens: red where ``values`` > 0, blue where < 0 (coolwarm, ±scale)."""
    import matplotlib.pyplot as plt

    tokens, values = list(tokens), [float(v) for v in values]
    if len(tokens) != len(values):
        raise ValueError(f"tokens and values must have one entry per token; got {len(tokens)} and {len(values)}")
    scale = scale if scale is not None else max([abs(v) for v in values] + [1e-12])
    for j, (text, v) in enumerate(zip(tokens, values)):
        row, col = divmod(j, width)
        ax.text(col, -row, text.replace("\n", "⏎") or "∅", ha="center", va="center", fontsize=7,
                bbox=dict(boxstyle="round,pad=0.2", lw=0, facecolor=plt.cm.coolwarm(0.5 + 0.5 * v / scale)))
    ax.set_xlim(-0.6, width - 0.4)
    ax.set_ylim(-(max(len(tokens) - 1, 0) // width) - 0.6, 0.6)
    ax.axis("off")
    return ax
