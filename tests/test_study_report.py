"""The study and its report: restartable, rebuilt from directories, checked in a real browser."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cnnlab.config import build_config
from cnnlab.report import build_report
from cnnlab.studies import run_study

from conftest import write_npz_dataset

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_npz_dataset(root / "d.npz", 240, 60)
    cfg = build_config({"data": str(root / "d.npz"), "epochs": 2, "batch_size": 32, "device": "cpu", "precision": "fp32"})
    said = []
    run_dirs = run_study(cfg, ["cnn1", "tuned-cnn"], 2, root / "study", say=said.append)
    return root, cfg, run_dirs, said


def test_study_trains_each_model_n_times(study):
    _, _, run_dirs, said = study
    assert [p.name for p in run_dirs] == ["cnn1-seed0", "cnn1-seed1", "tuned-cnn-seed0", "tuned-cnn-seed1"]
    assert sum("training" in s for s in said) == 4


def test_study_reuses_finished_runs_and_redoes_interrupted_ones(study):
    root, cfg, run_dirs, _ = study
    copy = root / "again"
    shutil.copytree(root / "study", copy)
    shutil.rmtree(copy / "runs" / "tuned-cnn-seed1")
    (copy / "runs" / "tuned-cnn-seed1").mkdir()  # as if killed before its first checkpoint
    said = []
    run_study(cfg, ["cnn1", "tuned-cnn"], 2, copy, say=said.append)
    assert sum("reused" in s for s in said) == 3 and sum("training" in s for s in said) == 1


def test_report_has_every_table_and_figure(study, tmp_path):
    _, _, run_dirs, _ = study
    html_path, md_path = build_report([run_dirs[0].parent.parent], tmp_path / "report.html")
    text = html_path.read_text()
    for caption in ("Runtime per epoch", "Accuracy over repeats", "Per-class F1", "Per-class Precision",
                    "Per-class Recall", "cnn1 layers", "tuned-cnn layers", "against training time per run",
                    "Validation accuracy against epochs", "confusion matrices, counts and normalised by row",
                    "most confident mistakes", "Training and validation accuracy and loss against epochs",
                    "Per-class F1 on the test split", "Per-class Recall on the test split",
                    "Best model by validation accuracy: "):
        assert caption in text, caption
    # 4 comparison figures + a confusion figure and a mistakes gallery per model, all embedded
    assert text.count("<img ") == 8 and text.count("data:image/png;base64,") == 8
    assert "<th>0</th><th>1</th><th>2</th>" in text  # one labelled column per class
    assert str(tmp_path) not in text  # paths relative to the report
    assert "<script" not in text and "http://" not in text and "https://" not in text  # works offline
    md = md_path.read_text()
    assert "| Model | Runs | Val min-max |" in md
    for line in md.splitlines():
        if line.startswith("!["):
            assert (md_path.parent / line.split("](")[1].rstrip(")")).is_file()


def test_a_report_over_two_settings_does_not_mix_them(study, tmp_path):
    from cnnlab.config import build_config

    root, cfg, run_dirs, _ = study
    other = build_config({**cfg.to_dict(), "epochs": 1, "model": "cnn1"})
    run_study(other, ["cnn1"], 1, tmp_path / "other", say=lambda text: None)
    html_path, md_path = build_report([run_dirs[0], tmp_path / "other"], tmp_path / "mixed.html")
    text = html_path.read_text()
    assert "cnn1 (epochs=2)" in text and "cnn1 (epochs=1)" in text  # two groups, labelled by what differs
    assert "they differ in: epochs" in text


def test_report_from_nothing_is_refused(tmp_path, cli):
    code, _, err = cli("report", tmp_path, "-o", tmp_path / "r.html")
    assert code == 2 and "no finished run directories" in err


def _chromium():
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(path).exists() and Path("/usr/bin/chromedriver").exists():
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="Chromium and chromedriver not installed (apt-get install chromium chromium-driver)")
def test_report_renders_in_headless_chromium(study, tmp_path):
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[dev]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _, _, run_dirs, _ = study
    html_path, _ = build_report(run_dirs, tmp_path / "report.html")
    options = webdriver.ChromeOptions()
    options.binary_location = _chromium()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,3000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(html_path.as_uri())
        widths = driver.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == 8 and all(w > 0 for w in widths)
        captions = driver.execute_script("return Array.from(document.querySelectorAll('table caption')).map(c => c.textContent)")
        assert any("Accuracy over repeats" in c for c in captions) and len(captions) >= 5
        shot = tmp_path / "report.png"  # kept in the test's temporary folder for a person to look at
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    from PIL import Image

    with Image.open(shot) as image:  # a real page was drawn: a full-size screenshot that is not blank
        assert image.size[0] >= 1000 and len(set(image.convert("L").tobytes())) > 10


def test_report_names_the_best_model_and_warns_on_degenerate_runs(study, tmp_path):
    """One repeat: "n/a" for its spread, not "± 0.00"; a run predicting one class everywhere and a non-finite
    loss are named in a visible warning."""
    import json

    import torch

    from cnnlab.runs import RunDir, load_tensors, save_tensors

    _, _, run_dirs, _ = study
    broken = tmp_path / "broken"
    shutil.copytree(run_dirs[0], broken)
    run = RunDir(broken)
    tensors = load_tensors(run.file("logits.safetensors"))
    tensors["val_logits"] = torch.zeros_like(tensors["val_logits"])
    tensors["val_logits"][:, 1] = 5  # class 1 for every image
    save_tensors(run.file("logits.safetensors"), tensors)
    metrics = json.loads(run.file("metrics.json").read_text())
    run.file("metrics.json").write_text(json.dumps({**metrics, "test_loss": float("nan")}))
    html_path, md_path = build_report([run_dirs[2], broken], tmp_path / "r.html")
    text = html_path.read_text()
    assert "Best model by validation accuracy: " in text
    assert "class='warning'" in text and "predicts one class (1) for every validation image" in text
    assert "a loss is NaN or infinite" in text and "Warning:" in md_path.read_text()
    assert "± n/a" in text and "± 0.00" not in text
    learned = [d for d in run_dirs if json.loads((Path(d) / "metrics.json").read_text())["val_accuracy"] > 0.8]
    assert len(learned) >= 1  # on this tiny data a short run can get stuck on one class (either dropout); those warn
    clean, _ = build_report(learned, tmp_path / "clean.html")
    assert "class='warning'" not in clean.read_text(), re.findall(r"class='warning'[^>]*>([^<]*)", clean.read_text())


def test_a_rerun_asking_fewer_models_keeps_the_whole_study_in_its_report(tmp_path):
    """The report is the study's: a rerun for one of its models (to continue it) rewrote it with that model alone."""
    import cnnlab

    data = write_npz_dataset(tmp_path / "d.npz", 120, 30)
    options = dict(epochs=1, batch_size=32, device="cpu", precision="fp32", progress=False, say=lambda text: None)
    cnnlab.study(["cnn1", "cnn2"], 1, str(data), out=tmp_path / "s", **options)
    again = cnnlab.study(["cnn1"], 1, str(data), out=tmp_path / "s", **options)
    assert [run.path.name for run in again["runs"]] == ["cnn1-seed0"]
    rows = re.findall(r"^\| (cnn\d) \| 1 \|", again["markdown"].read_text(), re.M)
    assert sorted(set(rows)) == ["cnn1", "cnn2"], again["markdown"].read_text()[:2000]
