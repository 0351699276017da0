"""study.py on a tiny real study: every phase end to end, resume after a kill, its folder's identity,
a report whose markdown shows only what its JSON holds, bad input, and RESULTS.md made from reports."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from helpers import call_script, error_line, run_script
from sisa.layout import PROJECT_ROOT
from sisa.study import load_study
from sisa.study.report import render
from sisa.errors import SisaError
from sisa.study import PRESETS, Settings, resolve_settings

TINY = ["--preset", "cpu", "--scenarios", "none", "--folds_run", "all", "--configs", "baseline", "uniform", "later-slices", "--epochs", 1, "--image_size", 24,
        "--folds", 2, "--num_shards", 2, "--num_slices", 2, "--sample", 1, "--n_boot", 50]


def where(faces_dir, cache_dir, tmp_path):
    return ["--data_dir", faces_dir, "--cache_dir", cache_dir, "--checkpoints_dir", tmp_path / "ck",
            "--summaries_dir", tmp_path / "sum", "--reports_dir", tmp_path / "rep"]


@pytest.fixture(scope="module")
def tiny_study(faces_dir, cache_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    out = run_script("study.py", *TINY, "--name", "tiny", *where(faces_dir, cache_dir, tmp)).stdout
    return tmp, out


@pytest.mark.slow
def test_the_study_runs_every_phase_and_writes_its_report(tiny_study):
    tmp, out = tiny_study
    assert "study tiny: preset cpu (asked for)" in out and "report: " in out
    rep = tmp / "rep" / "tiny"
    data = json.loads((rep / "report.json").read_text())
    t = data["tests"]["kfold"]
    assert data["format"] == 2 and t["reference_race"] == "black" and t["faces"]["replicates"] == 1
    tags = {"baseline", "uniform", "uniform-b", "later-slices", "control"}       # the A/A arm and the control by default
    assert set(t["runs"]) == tags and {f"{x} before" for x in tags} <= set(t["levels"])
    assert {"placement vs uniform", "A/A: uniform-b vs uniform", "control vs uniform", "vs baseline",
            "after vs before unlearning"} <= set(t["comparisons"])
    for family, cs in t["comparisons"].items():
        for c in cs:         # a tiny study's runs may sit at chance: then no verdict, and nothing else is claimed
            assert c["outcome"] in ("higher", "lower", "inconclusive", "none"), c
            if c["outcome"] != "none":
                assert c["ci_low_adjusted"] <= c["change"] <= c["ci_high_adjusted"] and c["verdict"]
            else:
                assert c["verdict"].startswith("no verdict") and any(d["config"] in (c["run"], c["reference"])
                                                                     for d in t["degenerate"])
    assert set(t["unlearning"]) == tags - {"baseline"}
    u = t["unlearning"]["later-slices"]
    assert u["served"]["requests"] == 2 and u["served"]["verified"]                      # 1 per fold, 2 folds
    assert set(u["expected"]) == {"shared", "independent"}
    assert {"sum_logits", "vote", "mean_softmax", "shard mean", "shard min", "shard max"} == set(t["aggregations"]["uniform"])
    faces = pd.read_csv(rep / "predictions" / "kfold-faces.csv.gz")
    assert len(faces) == t["faces"]["tested"] and list(faces.columns) == ["filename", "race", "age_class"]
    for name, path in data["predictions"].items():                                      # per-face predictions of every run
        with np.load(rep / path) as z:
            shards = 1 if "-baseline" in name else 2                                     # the 1x1 baseline, or 2 x 2
            n = t["faces"]["tested"]                                                     # k-fold: every face once
            assert sorted(z["face"]) == list(range(n)) and z["shard_pred1"].shape == (shards, n)
            assert ("ensemble_logits" in z) == ("unlearned" not in name)                  # logits of the runs before
            if "ensemble_logits" in z:
                assert z["ensemble_logits"].shape == (n, 7)
                assert (z["ensemble_logits"].astype(float).argmax(1) == z["pred1"]).mean() > 0.99
    assert len(data["predictions"]) == 5 + 4                                           # 5 runs before, 4 after unlearning
    counts = load_study(rep)                                                            # the tidy counts, for pandas
    assert counts.groupby(["configuration", "phase"])["n"].sum().eq(t["faces"]["tested"]).all()
    for fig in data["figures"]["kfold"].values():
        assert (rep / fig).stat().st_size > 0
    # one line per finished phase (--jobs auto on 2 cores: one run at a time, in the study's process)
    assert "trained tiny-kfold-uniform" in out and "served and verified 1 request(s) per fold" in out


@pytest.mark.slow
def test_the_markdown_is_rendered_from_the_json_alone(tiny_study):
    tmp, _ = tiny_study
    rep = tmp / "rep" / "tiny"
    data = json.loads((rep / "report.json").read_text())
    assert (rep / "report.md").read_text() == render(data)               # every number shown is in the JSON
    # and the numbers it shows are those of the JSON: spot-check the accuracy table's first cell
    from sisa.study.report import level, lv
    first = lv(level(data["tests"]["kfold"], "baseline", "accuracy_overall"))
    assert f"| baseline 1x1 | {first} |" in (rep / "report.md").read_text()


@pytest.mark.slow
def test_a_killed_study_resumes_without_retraining_finished_stages(faces_dir, cache_dir, tmp_path):
    args = [*map(str, TINY), "--name", "resume", "--no_control", *map(str, where(faces_dir, cache_dir, tmp_path)),
            "--jobs", "1", "--no_progress"]
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "study.py"), *args], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uniform = tmp_path / "ck" / "resume-kfold-uniform"
    first = uniform / "fold-0" / "shard-0" / "slice-0.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "study.py ended before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    progress = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "rep" / "resume" / "progress").glob("*.json")}
    assert progress["resume-kfold-baseline"]["train"]["done"] and "train" not in progress.get("resume-kfold-uniform", {})
    baseline = {p: (p.stat().st_ino, p.stat().st_mtime_ns)
                for p in (tmp_path / "ck" / "resume-kfold-baseline").glob("fold-*/shard-*/slice-*.pt")}
    finished = sum(p.with_suffix(".json").exists() for p in uniform.glob("fold-*/shard-*/slice-*.pt"))
    assert len(baseline) == 2 and finished >= 1          # the baseline's 2 folds and uniform's first stage
    proc = run_script("study.py", *args[:-1])
    # uniform trains only the stages it lacked (its served requests rewrite shards later, as they should)
    assert f"resuming: {finished} of 8 slice checkpoints complete" in proc.stdout and "report: " in proc.stdout
    for p, stamp in baseline.items():                     # the finished run was not trained again
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp, f"{p} was written again:\n{proc.stdout}\n{proc.stderr}"
    assert json.loads((tmp_path / "rep" / "resume" / "report.json").read_text())["tests"]["kfold"]["levels"]["uniform before"]


@pytest.mark.slow
def test_a_study_folder_of_other_settings_is_refused_unless_overwrite(tiny_study, faces_dir, cache_dir):
    tmp, _ = tiny_study
    before = (tmp / "rep" / "tiny" / "report.json").read_bytes()
    line = error_line(call_script("study.py", *TINY, "--name", "tiny", "--epochs", 2, *where(faces_dir, cache_dir, tmp)))
    assert "holds another study" in line and "epochs: 1 -> 2" in line and "--overwrite" in line
    assert (tmp / "rep" / "tiny" / "report.json").read_bytes() == before          # nothing lost


@pytest.mark.slow
def test_a_failed_job_is_named_with_its_log_and_the_rerun_finishes_only_what_is_left(faces_dir, cache_dir, tmp_path):
    """Runs as two local jobs at once; every SISA run's process dies while serving its request (a crash
    injected after the unlearning commit), the baseline finishes. The study names each failed run with
    its log and exits 1; the same command again finishes the others without training the baseline again."""
    args = [*TINY, "--name", "jobs", "--no_control", *where(faces_dir, cache_dir, tmp_path), "--jobs", 2]
    env = {**os.environ, "SISA_FAULT": "after_commit"}
    proc = subprocess.run([sys.executable, str(PROJECT_ROOT / "study.py"), *map(str, args), "--no_progress"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=600)
    line = error_line(proc)
    assert "3 of 4 run(s) failed" in line and "rerun the same command" in line
    for run in ("jobs-kfold-uniform", "jobs-kfold-uniform-b", "jobs-kfold-later-slices"):
        assert f"{run}: " in line and str(tmp_path / "rep" / "jobs" / "logs" / f"{run}.log") in line
    assert "jobs-kfold-baseline" not in line.split("failed:")[1]
    assert "2 at a time (local launcher, --jobs 2), 1 torch thread(s) each" in proc.stdout
    rep = tmp_path / "rep" / "jobs"
    assert not (rep / "report.json").exists()
    baseline = {p: p.stat().st_mtime_ns for p in (tmp_path / "ck" / "jobs-kfold-baseline").glob("fold-*/shard-*/*.pt")}
    out = run_script("study.py", *args).stdout
    assert "3 run(s) to go" in out and "report: " in out
    assert {p: p.stat().st_mtime_ns for p in baseline} == baseline                   # not trained again
    data = json.loads((rep / "report.json").read_text())
    assert all(u["served"]["verified"] for u in data["tests"]["kfold"]["unlearning"].values())


@pytest.mark.slow
def test_the_slurm_path_runs_through_submitits_local_executor(faces_dir, cache_dir, tmp_path):
    """--launcher submitit-local: each run a submitit job (what --launcher slurm submits), the report
    the same as any study's; a rerun finds every run finished and only re-renders."""
    args = [*TINY, "--configs", "baseline", "uniform", "--no_control", "--no_aa", "--name", "sub",
            *where(faces_dir, cache_dir, tmp_path), "--launcher", "submitit-local", "--jobs", 2]
    out = run_script("study.py", *args).stdout
    assert "(submitit-local launcher" in out and "report: " in out
    rep = tmp_path / "rep" / "sub"
    jobs = json.loads((rep / "jobs.json").read_text())
    assert set(jobs) == {"sub-kfold-baseline", "sub-kfold-uniform"} and all(j["job_id"] for j in jobs.values())
    assert all((rep / "submitit").glob(f"{j['job_id']}_*") for j in jobs.values())
    assert "served and verified 1 request(s) per fold" in (rep / "logs" / "sub-kfold-uniform.log").read_text()
    again = run_script("study.py", *args).stdout
    assert "to go" not in again and "report: " in again


@pytest.mark.slow
def test_sizing_the_progress_bar_reads_records_not_checkpoints(tiny_study, monkeypatch):
    """Resuming a study sizes its bar from the checkpoint records: no checkpoint file is hashed (a GPU
    study's are tens of GB)."""
    from sisa import checkpoints
    from sisa.experiment import Options, open_run
    from sisa.layout import RunLayout
    from sisa.study import Progress, Study
    tmp, _ = tiny_study
    settings = Settings.from_dict(json.loads((tmp / "rep" / "tiny" / "study.json").read_text()))
    study = Study(settings, Options(checkpoints_dir=tmp / "ck", progress=False), tmp / "sum", tmp / "rep")
    exp = open_run(RunLayout(tmp / "ck" / "tiny-kfold-uniform"), Options(), with_images=False)
    progress = Progress.load(study.layout)
    checkpoints._digests.clear()

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed")
    monkeypatch.setattr(checkpoints, "file_digest", no_hashing)
    assert study.work(progress, exp) == 0                                 # finished: nothing left
    record = exp.layout.checkpoint(0, 1, 1).with_suffix(".json")
    kept = record.read_bytes()
    record.unlink()                                                       # one stage's record gone
    try:
        assert study.work(progress, exp) > 0
    finally:
        record.write_bytes(kept)


def test_jobs_are_chosen_from_cores_and_memory(monkeypatch):
    from sisa.study import launch
    monkeypatch.setattr(launch, "cores", lambda: 8)
    monkeypatch.setattr(launch, "available_memory", lambda: 6 * launch.GB)
    jobs, threads, why = launch.choose_jobs(None, 20, int(0.5 * launch.GB), cuda=False)
    assert (jobs, threads) == (3, 2) and "8 core(s)" in why                 # memory: 6 / (1.5 + 0.5) GiB
    monkeypatch.setattr(launch, "available_memory", lambda: 64 * launch.GB)
    assert launch.choose_jobs(None, 20, 0, cuda=False)[:2] == (4, 2)       # cores: at least 2 threads each
    assert launch.choose_jobs(None, 2, 0, cuda=False)[:2] == (2, 4)        # never more jobs than runs left
    assert launch.choose_jobs(None, 20, 0, cuda=True)[:2] == (1, 8)        # one GPU: one run at a time
    assert launch.choose_jobs(4, 20, 0, cuda=True)[:2] == (4, 2)           # unless asked
    monkeypatch.setattr(launch, "cores", lambda: 2)
    assert launch.choose_jobs(None, 20, 0, cuda=False)[:2] == (1, 2)       # 2 cores: one run, both threads


@pytest.mark.parametrize("args,message", [
    (["--no_wait"], "--no_wait goes with --launcher slurm"),
    (["--jobs", "0"], "'0' must be >= 1"),
    (["--preset", "tpu"], "invalid choice: 'tpu'"),
    (["--configs", "uniform", "later-slices"], "--configs must include baseline"),
    (["--configs", "baseline", "later-slices"], "--configs must include uniform"),
    (["--seeds", "0"], "'0' must be >= 1"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--data_dir", "/no/such/faces"], "data folder /no/such/faces does not exist"),
    (["--model", "cnn", "--weights", "imagenet"], "no pretrained weights for the cnn model"),
])
def test_bad_study_input_is_one_clear_line(tmp_path, args, message):
    import torch
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here")
    proc = call_script("study.py", "--preset", "cpu", *args, "--checkpoints_dir", tmp_path / "ck",
                       "--reports_dir", tmp_path / "rep", "--summaries_dir", tmp_path / "sum")
    assert message in error_line(proc)
    assert not list((tmp_path / "ck").glob("*/fold-*/shard-*"))


def test_presets_and_overrides_resolve_to_complete_settings():
    s = resolve_settings("cpu", {"replicates": 3, "tests": "both", "epochs": None}, None)
    assert s.name == "cpu" and s.replicates == 3 and s.tests == ("balanced", "kfold") and s.epochs == PRESETS["cpu"]["epochs"] == 12
    assert s.all_configs == ("baseline", "uniform", "uniform-b", "few-shards", "later-slices", "control")
    assert Settings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    cfg = s.run_config("kfold", "later-slices", 2)
    assert cfg.name == "cpu-kfold-later-slices-rep2" and cfg.seed not in (0, s.run_config("kfold", "later-slices", 1).seed)
    assert cfg.strategy == "sorted-kfold" and cfg.training_seed is None
    assert s.run_config("kfold", "baseline", 2).seed == cfg.seed                  # a replicate's runs share its seed
    assert s.run_config("kfold", "baseline", 0).num_shards == 1 and s.run_config("kfold", "baseline", 0).seed == 0
    assert s.run_config("kfold", "uniform-b", 0).arm == 1 and s.run_config("kfold", "uniform", 0).arm == 0
    doses = resolve_settings("cpu", {"control_doses": (0.25, 1.0)}, None)
    assert doses.all_configs[-2:] == ("control-25", "control") and doses.run_config("kfold", "control-25", 0).label_noise == 0.25
    control = s.run_config("balanced", "control", 0)
    assert control.strategy == "random-balanced" and control.label_noise == 1.0 and control.control_race == "black"
    seg = resolve_settings("cpu", {"configs": ["baseline", "uniform", "segregated"]}, "x").run_config("kfold", "segregated", 0)
    assert seg.strategy == "segregated-kfold" and seg.put_in == "shard" and seg.label_noise == 0
    assert (s.folds, s.folds_run) == (3, 1) and s.run_config("kfold", "uniform", 0).n_folds == 1   # the cpu preset's one fold
    assert s.run_config("balanced", "uniform", 0).folds_run is None         # a balanced test's folds are repetitions
    assert resolve_settings("cpu", {"folds_run": 0}, None).folds_run is None   # --folds_run all
    assert (s.scenarios, s.forget) == (("group:black",), (0.05,))            # the default serves one scenario's volume
    none = resolve_settings("cpu", {"scenarios": ["none"]}, None)
    assert (none.scenarios, none.forget, none.scenario_configs) == ((), (), ())
    old = {k: v for k, v in s.to_dict().items() if k != "folds_run"}        # a study.json from before --folds_run
    assert Settings.from_dict(old, fallback=s).folds_run is None
    with pytest.raises(SisaError, match="--folds_run 4 is invalid"):
        resolve_settings("cpu", {"folds_run": 4}, None)
    from sisa.study.settings import command_line
    assert command_line(resolve_settings("cpu", {}, "cpu")) == ".venv/bin/python study.py --preset cpu --name cpu"
    approx = resolve_settings("cpu", {"replicates": 2, "aa": False, "scenarios": ["random"], "forget": [0.05, 0.1],
                                      "methods": ["scrub"], "folds_run": 0}, "a")
    assert command_line(approx) == (".venv/bin/python study.py --preset cpu --name a --replicates 2 --no_aa --scenarios "
                                    "random --forget 0.05 0.1 --methods scrub --folds_run all")
    poster = resolve_settings("poster", {"weights": "none"}, None)
    assert (poster.image_size, poster.model, poster.recipe, poster.folds, poster.tests) == (200, "resnet18", "original", 5,
                                                                                            ("balanced",))


def test_results_md_is_made_from_the_committed_reports():
    """Every number in RESULTS.md is rendered from a committed report or benchmark JSON."""
    proc = subprocess.run([sys.executable, "-m", "sisa.results", "--check"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_readme_quotes_real_reports_verbatim():
    """The excerpts in the README and docs/ are cut from files the code wrote, not typed."""
    report = PROJECT_ROOT / "reports" / "published" / "cpu-replicated" / "report.md"
    results = PROJECT_ROOT / "RESULTS.md"
    for page, marker, source in (("README.md", "answer-excerpt", results),
                                 ("README.md", "timing-excerpt", results),
                                 ("README.md", "verdict-excerpt", report),
                                 ("docs/statistics.md", "report-excerpt", report),
                                 ("docs/recipes.md", "recipes-excerpt", results)):
        text = (PROJECT_ROOT / page).read_text()
        excerpt = text.split(f"<!-- {marker}: start -->\n", 1)[1].split(f"<!-- {marker}: end -->", 1)[0].strip()
        assert excerpt.count("\n") >= 3 and excerpt in source.read_text(), (page, marker)


@pytest.mark.slow
def test_another_bootstrap_or_more_runs_reuse_every_finished_run(tiny_study, faces_dir, cache_dir):
    """--n_boot and --report_only re-render without training; a study of other folders is not trusted."""
    tmp, _ = tiny_study
    stamps = {p: p.stat().st_mtime_ns for p in (tmp / "ck").glob("tiny-*/fold-*/shard-*/*.pt")}
    args = [*TINY, "--name", "tiny", *where(faces_dir, cache_dir, tmp)]
    assert TINY[-2:] == ["--n_boot", 50]
    out = run_script("study.py", *TINY[:-1], 80, *args[len(TINY):], "--report_only").stdout
    assert "n_boot: 50 -> 80; finished runs are reused" in out and "report: " in out
    assert json.loads((tmp / "rep" / "tiny" / "report.json").read_text())["settings"]["n_boot"] == 80
    out = run_script("study.py", *args).stdout                                  # and back, as a plain rerun
    assert "to go" not in out and "trained" not in out and "report: " in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps                  # nothing trained again
    # the runs' folders elsewhere: nothing there is finished, and the study says so in one line
    record = (tmp / "rep" / "tiny" / "study.json").read_bytes()
    line = error_line(call_script("study.py", *args, "--checkpoints_dir", tmp / "elsewhere", "--report_only"))
    assert "--report_only: 5 run(s) unfinished" in line and "every phase" in line
    line = error_line(call_script("study.py", *args, "--replicates", 2, "--report_only"))     # runs not trained yet
    assert "run(s) unfinished, first tiny-kfold-baseline-rep1" in line
    assert (tmp / "rep" / "tiny" / "study.json").read_bytes() == record      # a refused report rewrites no record
    # summaries elsewhere after unlearning: the summaries before cannot be made again; one line names the fix
    line = error_line(call_script("study.py", *args, "--summaries_dir", tmp / "other-sum"))
    assert "cannot be made again" in line and "--summaries_dir" in line
    assert "(" + str(tmp / "sum") + ")" in line                 # the folder they were written to, named
    out = run_script("study.py", *args).stdout              # back: every summary is there again, nothing is redone
    assert "evaluated" not in out and "trained" not in out and "report: " in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # a study killed while evaluating after unlearning: that summary is missing, its record unfinished
    from sisa.layout import SummaryLayout
    SummaryLayout(tmp / "sum", "tiny-kfold-control-unlearned2").predictions.unlink()
    out = run_script("study.py", *args).stdout
    assert "evaluated tiny-kfold-control-unlearned2" in out and out.count("evaluated ") == 1 and "trained" not in out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
