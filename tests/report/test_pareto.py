"""Pareto marking (maximising HRL and LRL averages) on hand-made points."""

import pytest

from pipeline.report import plots
from pipeline.report.compare import _front, pareto_front


@pytest.mark.parametrize(("points", "front"), [
    ([], []),
    ([(1.0, 1.0)], [True]),
    ([(1.0, 1.0), (2.0, 2.0)], [False, True]),  # dominated in both
    ([(2.0, 1.0), (2.0, 2.0)], [False, True]),  # tied on HRL, worse on LRL: dominated
    ([(1.0, 3.0), (2.0, 3.0)], [False, True]),  # tied on LRL, worse on HRL: dominated
    ([(2.0, 2.0), (2.0, 2.0)], [True, True]),  # equal points dominate neither
    ([(2.0, 2.0), (2.0, 2.0), (1.0, 1.0)], [True, True, False]),
    ([(3.0, 1.0), (1.0, 3.0), (2.0, 2.0), (1.0, 1.0)], [True, True, True, False]),  # a trade-off curve
    ([(3.0, 1.0), (1.0, 3.0), (1.5, 1.5)], [True, True, True]),  # below the chord, yet not dominated
    ([(5.0, 5.0), (1.0, 9.0), (9.0, 1.0), (4.0, 4.0), (0.5, 9.0)], [True, True, True, False, False]),
])
def test_pareto_front(points, front):
    assert pareto_front(points) == front


def test_front_marks_each_metric_separately():
    rows = [{"label": "a", "bleu": {"hrl": 10, "lrl": 2}, "chrf": {"hrl": 30, "lrl": 20}},
            {"label": "b", "bleu": {"hrl": 9, "lrl": 3}, "chrf": {"hrl": 29, "lrl": 19}}]
    _front(rows)
    assert [r["front"] for r in rows] == [{"bleu": True, "chrf": True}, {"bleu": True, "chrf": False}]


def test_pareto_figure_draws_points_and_the_front(tmp_path):
    rows = [{"label": n, "bleu": {"hrl": x, "lrl": y}, "chrf": {"hrl": x * 3, "lrl": y * 3, "hrl_std": 0.5}}
            for n, x, y in (("a", 3, 1), ("b", 1, 3), ("c", 1, 1))]
    _front(rows)
    fig = plots.pareto(rows)
    ax = fig.axes[0]
    front_line = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    assert len(front_line) == 1 and list(front_line[0].get_xdata()) == [1, 3]
    png = plots.save_png(fig, tmp_path / "p.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "p.png").read_bytes() == png
