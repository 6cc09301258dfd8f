"""Atomic writes: an interrupted write leaves the previous file intact and no partial file behind."""

from __future__ import annotations

import os

import pytest

from safeft.io import atomic_write_text, write_json


def test_interrupted_text_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"harmful_score": 0.1})
    before = path.read_text()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, '{"harmful_score": 0.9, "trunc')
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_interrupted_plot_keeps_the_old_png(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from safeft.pipeline.report.plots import save_figure

    path = tmp_path / "plot.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, path)
    before = path.read_bytes()

    class Broken:
        def savefig(self, f, **kw):
            f.write(b"\x89PNG half a file")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_figure(Broken(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    plt.close(fig)
