"""`make demo`'s command, shrunk: the README's first command shows the data, writes the example grid, runs the
short study of three report models with two seeds each, and ends with the report's path."""

from __future__ import annotations

import pytest

from conftest import needs_fashion


@needs_fashion
@pytest.mark.slow
def test_the_demo_runs_the_short_study_and_ends_with_the_report(cli, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = cli("demo", "--out", out, "--train-images", "60", "--epochs", "1")
    assert code == 0, err
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines[-1].startswith("report: ") and lines[-1].endswith("report.html")
    assert (out / "study" / "report.html").is_file() and (out / "preview.png").is_file()
    runs = sorted(p.name for p in (out / "study" / "runs").iterdir())
    assert runs == [f"{m}-seed{s}" for m in ("cnn1", "cnn4", "tuned-cnn") for s in (0, 1)]
