"""Figures a person can read: distinct colours per line, legends outside the data, per-class curves apart."""

import csv

from mosmos_components.visualize import curve_figure, distinct_colours


def test_per_class_curves_have_their_own_panel_distinct_colours_and_an_outside_legend(tmp_path):
    classes = [f"organ_{i}" for i in range(15)]
    path = tmp_path / "val_history.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "val_mean_dice", "mean_hd95", *[f"dice_{c}" for c in classes]])
        for e in range(1, 4):
            w.writerow([e, 0.1 * e, 10 / e, *[0.01 * i * e for i in range(15)]])
    fig = curve_figure({"validation": path})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["validation", "validation: HD95 (mm)", "validation: Dice per class"]
    per_class = fig.axes[2]
    colours = [tuple(line.get_color()) for line in per_class.get_lines()]
    assert len(colours) == 15 and len(set(colours)) == 15
    fig.canvas.draw()
    legend = per_class.get_legend().get_window_extent()
    assert legend.x0 >= per_class.get_window_extent().x1  # beside the axes, not over the curves
    assert [t.get_text() for t in per_class.get_legend().get_texts()][:2] == ["organ 0", "organ 1"]
    assert len({tuple(c) for c in distinct_colours(30)}) == 30


def test_pretraining_curves_keep_scores_apart_from_losses(tmp_path):
    """`mosmos curves RUN OUT.png`: a pre-training's losses, its retrieval and tag mAP, and its class-query cosines
    each on their own axes (a loss of 6 would flatten a recall of 0.05 to the floor)."""
    import pytest

    from mosmos_components.cli import MosmosCLI

    with open(tmp_path / "val_history.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "val_loss", "recall_at_1", "tag_map", "query_cosine_acdc"])
        for e in range(1, 4):
            w.writerow([e, 6.0 / e, 0.01 * e, 0.1 * e, 0.9])
    fig = curve_figure({"val": tmp_path / "val_history.csv"})
    assert [ax.get_title() for ax in fig.axes] == ["val", "val: retrieval and tags", "val: class-query cosines"]
    out = MosmosCLI().curves(str(tmp_path), str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 0 and out.endswith("c.png")
    with pytest.raises(FileNotFoundError, match="no train_history.csv"):
        MosmosCLI().curves(str(tmp_path / "nothing"), str(tmp_path / "d.png"))
