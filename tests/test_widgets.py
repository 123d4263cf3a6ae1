"""The static plotting helpers draw what they say and refuse malformed curves."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from alignlecture.widgets import frontier_panel, panel_grid  # noqa: E402


def test_frontier_panel_draws_the_frontier_the_points_and_the_star():
    fig, ax = plt.subplots()
    frontier_panel(ax, ([0.0, 1.0], [0.0, 2.0]), ([0.0, 0.5], [0.0, 0.8]), (0.5, 0.8), who="toy")
    lines = ax.get_lines()
    assert [list(line.get_xdata()) for line in lines] == [[0.0, 1.0], [0.0, 0.5], [0.5]]
    assert lines[2].get_marker() == "*"
    assert [t.get_text() for t in ax.get_legend().get_texts()][1] == "toy: best-of-n"
    plt.close(fig)


def test_frontier_panel_refuses_curves_of_unequal_length():
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="best_of_n must be a"):
        frontier_panel(ax, ([0.0], [0.0]), ([0.0, 1.0], [0.0]), (0.0, 0.0))
    plt.close(fig)


def test_panel_grid_titles_each_panel_with_its_value():
    fig = panel_grid(lambda ax, v: ax.plot([0, v]), [1, 2], label="n")
    assert [ax.get_title() for ax in fig.axes] == ["n = 1", "n = 2"]
    plt.close(fig)
