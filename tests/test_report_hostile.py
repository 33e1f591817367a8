"""A hostile user's run directories and disks: a damaged history.csv is one line for `plot`, `report` and the API
(never a KeyError or ValueError), and a report that cannot be written whole (a full disk) leaves nothing of itself
behind, nor spoils a previous report at the same place."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from cnnlab.errors import UserError
from cnnlab.runs import RunDir

from conftest import mounted_tmpfs, write_npz_dataset

HEADER = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,train_seconds,eval_seconds"
ROW = "0.9,0.6,0.7,1.0,0.001,0.01,0.001"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One real run (cnn1, one epoch on 120 tiny images: a few seconds), copied by each test before it damages it."""
    import cnnlab

    root = tmp_path_factory.mktemp("hostile-report")
    data = write_npz_dataset(root / "d.npz", 120, 30)
    run = cnnlab.train("cnn1", str(data), out=root / "runs", epochs=1, batch_size=32, device="cpu", precision="fp32",
                       progress=False)
    return run.path


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


DAMAGED = [
    ("epoch,foo\nx,y\n", "row 2: epoch 'x' is not a number"),                      # a ValueError in plots.py
    ("epoch\n1\n", "no 'train_loss', 'train_accuracy', 'val_loss', 'val_accuracy', 'lr', 'train_seconds', "
                   "'eval_seconds' columns"),                                       # KeyError 'train_accuracy'
    (f"{HEADER.replace(',train_seconds', '')}\n1,0.9,0.6,0.7,1.0,0.001,0.001\n", "no 'train_seconds' column"),
    (f"{HEADER}\n1,{ROW}\n2,0.8,0.7,0.6,1.0,0.001,abc,0.001\n", "row 3: train_seconds 'abc' is not a number"),
    (f"{HEADER}\n1,{ROW}\n2,0.8,0.7\n", "row 3: fewer values than the header has columns"),
    (f"{HEADER}\n1,{ROW},7\n", "row 2: more values than the header has columns"),
    (f"{HEADER}\n1.5,{ROW}\n", "row 2: epoch '1.5' is not an epoch number"),
    ("", "empty (not even a header)"),
    ("foo,bar\n1,2\n", "no epoch column"),
]


@pytest.mark.parametrize("content, problem", DAMAGED, ids=[p for _, p in DAMAGED])
def test_a_damaged_history_is_one_line_naming_the_file_for_plot_and_report(run_copy, tmp_path, cli, content,
                                                                            problem):
    history = run_copy / "history.csv"
    history.write_text(content)
    code, _, err = cli("plot", run_copy)
    line = one_line(err)
    assert code == 2 and f"{history}: {problem}" in line and "the file is damaged" in line, line
    assert not list(run_copy.glob("*.png"))  # nothing drawn from it
    out = tmp_path / "out"
    code, _, err = cli("report", run_copy, "-o", out / "rep.html")
    line = one_line(err)
    assert code == 2 and f"{history}: {problem}" in line, line
    assert not out.exists() or not list(out.iterdir())
    with pytest.raises(UserError, match="the file is damaged"):
        RunDir(run_copy).history_frame()  # the API's Run.history reads it through the same check


def test_an_intact_history_still_plots_and_reports(run_copy, tmp_path, cli):
    text = (run_copy / "history.csv").read_text()
    assert text.startswith(HEADER + "\n")  # what the tests above damage is what the engine writes
    code, out, err = cli("plot", run_copy)
    assert code == 0 and (run_copy / "acc_loss.png").is_file(), err
    code, out, err = cli("report", run_copy, "-o", tmp_path / "r" / "report.html")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.html", "report.md", "report_files"]


# ------------------------------------------------------------------ a full disk while the report is written


def full_disk_after(monkeypatch, figures: int | None = None, markdown: bool = False):
    """Simulated ENOSPC: every figure after the first `figures` ones, or the Markdown file, cannot be written."""
    import matplotlib.figure

    saved = []
    savefig = matplotlib.figure.Figure.savefig

    def limited(self, fname, *args, **kwargs):
        if figures is not None and len(saved) >= figures:
            Path(fname).write_bytes(b"\x89PNG half")  # what a full disk leaves: the start of a file
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(fname)
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", limited)
    if markdown:
        write_text = Path.write_text

        def no_room(self, data, *args, **kwargs):
            if self.name.startswith(".report.md."):
                raise OSError(errno.ENOSPC, "No space left on device")
            return write_text(self, data, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", no_room)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file and folder below `folder`: its bytes and its inode (a file replaced by an equal one differs)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>", p.stat().st_ino)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("where", ["third figure", "markdown"])
def test_a_full_disk_leaves_no_part_of_a_new_report(run_copy, tmp_path, cli, monkeypatch, where):
    out = tmp_path / "out"
    out.mkdir()
    full_disk_after(monkeypatch, figures=2 if where == "third figure" else None, markdown=where == "markdown")
    code, _, err = cli("report", run_copy, "-o", out / "report.html")
    line = one_line(err)
    assert code == 2 and "no space left on the device" in line, line
    assert ".tmp" not in line  # the file it names is the one asked for, not a temporary one
    if where == "third figure":
        assert str(out / "report_files" / "curves.png") in line
    assert list(out.iterdir()) == [], list(out.iterdir())  # no report_files/ with 2 PNGs, no HTML, no temporaries


@pytest.mark.parametrize("where", ["third figure", "markdown"])
def test_a_full_disk_leaves_a_previous_report_as_it_was(run_copy, tmp_path, cli, monkeypatch, where):
    out = tmp_path / "out"
    code, _, err = cli("report", run_copy, "-o", out / "report.html", "--title", "the first report")
    assert code == 0, err
    before = snapshot(out)
    full_disk_after(monkeypatch, figures=2 if where == "third figure" else None, markdown=where == "markdown")
    code, _, err = cli("report", run_copy, "-o", out / "report.html", "--title", "the second report")
    assert code == 2 and "no space left on the device" in one_line(err)
    assert snapshot(out) == before  # neither figures of the second report nor its HTML mixed into the first
    monkeypatch.undo()
    code, _, err = cli("report", run_copy, "-o", out / "report.html", "--title", "the second report")
    assert code == 0, err
    assert "the second report" in (out / "report.html").read_text() and not list(out.glob(".*"))
    assert {p.name for p in (out / "report_files").iterdir()} == {
        Path(p).name for p in before if p.startswith("report_files/")}


def test_a_report_on_a_real_full_tmpfs_leaves_nothing(run_copy, tmp_path, cli):
    """A 48 KiB tmpfs: room for two of the figures (about 19 KB each), not for the rest nor the HTML."""
    with mounted_tmpfs(tmp_path / "small", "size=48k") as mount:
        code, _, err = cli("report", run_copy, "-o", mount / "report.html")
        line = one_line(err)
        assert code == 2 and "no space left on the device" in line, line
        assert list(mount.iterdir()) == []


def test_what_stands_in_the_way_of_the_report_is_told_before_any_work(run_copy, tmp_path, cli):
    (tmp_path / "report_files").write_text("not a folder")
    code, _, err = cli("report", run_copy, "-o", tmp_path / "report.html")
    assert code == 2 and "is in the way of the report's figures folder" in one_line(err)
    (tmp_path / "report.md").mkdir()
    (tmp_path / "report_files").unlink()
    code, _, err = cli("report", run_copy, "-o", tmp_path / "report.html")
    assert code == 2 and "report.md is a folder" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "run"]


def test_a_run_reached_twice_counts_once(run_copy, tmp_path, cli):
    """A folder and a run inside it, ./run and run, a link to it: one run, not three weighing triple in each
    mean and spread."""
    from cnnlab.report import find_runs

    (tmp_path / "link").symlink_to(run_copy, target_is_directory=True)
    paths = [tmp_path, run_copy, tmp_path / "." / "run", tmp_path / "link"]
    assert find_runs(paths) == [run_copy]
    code, out, err = cli("report", *paths, "-o", tmp_path / "r" / "report.html")
    assert code == 0, err
    assert "\n- Runs: 1 (seeds 0)\n" in (tmp_path / "r" / "report.md").read_text()


def test_a_folder_in_the_way_of_the_figures_that_is_not_a_reports_is_left_alone(run_copy, tmp_path, cli):
    """`report run -o run.html` would replace run_files: a run named so was deleted for the report's figures."""
    shutil.copytree(run_copy, tmp_path / "x_files")
    before = sorted(p.name for p in (tmp_path / "x_files").iterdir())
    code, _, err = cli("report", tmp_path / "x_files", "-o", tmp_path / "x.html")
    assert code == 2 and "holds more than a report's figures" in one_line(err)
    assert sorted(p.name for p in (tmp_path / "x_files").iterdir()) == before and not (tmp_path / "x.html").exists()
    code, _, err = cli("report", tmp_path / "x_files", "-o", tmp_path / "r.html")
    assert code == 0, err
    code, _, err = cli("report", tmp_path / "x_files", "-o", tmp_path / "r.html")  # its own figures: replaced
    assert code == 0, err
