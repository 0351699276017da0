"""The benchmark scripts run on CPU with small settings, and their output has every field."""
import importlib.util
import json

import pytest

from helpers import run_script


@pytest.mark.slow
def test_pipeline_benchmark_reports_every_field(faces_dir, cache_dir, tmp_path):
    out = tmp_path / "pipe.json"
    p = run_script("benchmarks/pipeline.py", "--device", "cpu", "--sizes", 24, "--steps", 1, "--faces", 300,
                   "--shards", 2, "--batch", 16, "--workers", 1, "--decode_sample", 50, "--data_dir", faces_dir,
                   "--cache_dir", cache_dir, "--out", out, no_progress=False)
    assert "ratio_ours_vs_original" in p.stdout and "verified cache" in p.stdout
    r = json.loads(out.read_text())
    assert r["device"].startswith("CPU") and r["shards"] == 2 and r["batch"] == 16
    s = r["sizes"]["24"]
    assert s["original_img_per_s"] > 0 and s["ours_img_per_s"] > 0
    assert abs(s["ratio_ours_vs_original"] - s["ours_img_per_s"] / s["original_img_per_s"]) < 1e-9
    c = r["cache"]["24"]
    assert c["decode_s_per_image"] > 0 and c["cache_load_s_per_image"] > 0 and c["images_in_cache"] > 300


@pytest.mark.slow
def test_recipe_benchmark_measures_accuracy_per_compute(faces_dir, cache_dir, tmp_path):
    out = tmp_path / "recipes.json"
    run_script("benchmarks/recipes.py", "--grid", "strong:cnn-max:24", "original:cnn:24", "--epochs", 1, "--folds", 2,
               "--folds_run", 1, "--n_boot", 20, "--device", "cpu", "--data_dir", faces_dir, "--cache_dir", cache_dir,
               "--out", out, no_progress=False)
    r = json.loads(out.read_text())
    assert r["protocol"]["configuration"] == "1x1 baseline, random-kfold" and r["protocol"]["folds_trained"] == 1
    strong, original = r["points"]
    assert (strong["recipe"], strong["model"], strong["tta_default"]) == ("strong", "cnn-max", "flip")
    assert original["tta_default"] == "none" and original["recipe_settings"]["schedule"] == "steps"
    for p in (strong, original):
        s = p["tta_" + p["tta_default"]]
        lo, hi = s["top1_ci"]["random"]
        assert 0 <= lo <= s["top1"]["random"] <= hi <= 1 and set(s["per_class_random"]) >= {"0-2", "66+"}
        assert p["training_seconds"] > 0 and p["images_per_s"] > 0
    assert (tmp_path / "recipes.png").stat().st_size > 0


def test_faces_are_packed_into_parts_that_fit_one_command(faces_dir, tmp_path):
    import tarfile

    from sisa.data import parse_name
    run_script("benchmarks/pack_faces.py", "--data_dir", faces_dir, "--limit", 60, "--max_mib", 0.3, "--out", tmp_path,
               no_progress=False)
    parts = sorted(tmp_path.glob("utk200-*of*.tar"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 0.3 * 2 ** 20 + 20 * 1024 for p in parts)
    names = [m.name for p in parts for m in tarfile.open(p).getmembers()]
    assert len(names) == 60 and all(n.startswith("utk200/") and n.endswith(".webp") for n in names)
    assert all(not isinstance(parse_name(n.split("/")[1]), str) for n in names)       # the labels survive


def test_the_engine_check_says_it_needs_a_gpu(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: gpu_check.sh runs the real check")
    proc = run_script("benchmarks/engine_check.py", "--out", tmp_path / "x.json", check=False, no_progress=False)
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr and not (tmp_path / "x.json").exists()


def test_fresh_clone_records_the_timed_study_and_its_report(tmp_path):
    """The quick-start timer reads /usr/bin/time's output and the clone's report (here: the committed CPU study)."""
    import shutil
    import subprocess
    import sys
    from sisa.layout import PROJECT_ROOT, StudyLayout
    from pathlib import Path
    if not Path("/usr/bin/time").exists():
        pytest.skip("no /usr/bin/time")
    report = StudyLayout(PROJECT_ROOT / "reports" / "published" / "cpu").report_json
    dest = tmp_path / "clone"
    StudyLayout(dest / "reports" / "cpu").report_json.parent.mkdir(parents=True)
    shutil.copy(report, StudyLayout(dest / "reports" / "cpu").report_json)
    subprocess.run(["/usr/bin/time", "-v", "-o", "study-time.txt", sys.executable, "-c", "import time; time.sleep(1.2)"],
                   cwd=dest, check=True)
    out = tmp_path / "clone.json"
    run_script("benchmarks/fresh_clone.py", "--record", dest, "--out", out, no_progress=False)
    d = json.loads(out.read_text())
    assert 1.2 <= d["study_wall_s"] < 60
    truth = json.loads(report.read_text())
    assert d["baseline_random_top1"] == truth["tests"]["kfold"]["levels"]["baseline"]["top1 random"]
    assert d["control_gap_change"]["verdict"] == "widened" and d["preset"] == "cpu"
    bad = run_script("benchmarks/fresh_clone.py", "--out", out, check=False, no_progress=False)
    assert bad.returncode != 0 and "exactly one of --dest and --record" in bad.stderr


def test_the_readme_cpu_table_is_rendered_from_the_committed_benchmark():
    """The README's CPU engine table is what benchmarks/cpu_engine.py --markdown makes of its JSON."""
    import re
    from sisa.layout import PROJECT_ROOT
    spec = importlib.util.spec_from_file_location("cpu_engine", PROJECT_ROOT / "benchmarks" / "cpu_engine.py")
    cpu_engine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cpu_engine)
    page = (PROJECT_ROOT / "README.md").read_text()
    block = page.split("<!-- cpu-engine: start -->\n", 1)[1].split("<!-- cpu-engine: end -->", 1)[0].strip()
    source = re.search(r"`(benchmarks/results/cpu-engine-[^`]+\.json)`", block).group(1)
    assert block == cpu_engine.markdown(json.loads((PROJECT_ROOT / source).read_text()), source)


@pytest.mark.slow
def test_cpu_engine_benchmark_quick(faces_dir, cache_dir, tmp_path):
    out = tmp_path / "engine.json"
    run_script("benchmarks/cpu_engine.py", "--quick", "--rounds", 1, "--step_seconds", 0.2, "--data_dir", faces_dir,
               "--cache_dir", cache_dir, "--out", out, no_progress=False)
    res = json.loads(out.read_text())
    assert set(res["steps"]) == {"fp32", "fp32_channels_last", "bf16", "bf16_channels_last"}
    assert res["steps"]["fp32"]["vs_fp32"] == 1.0 and all(v["images_per_s"] > 0 for v in res["steps"].values())
    for table in res["profile"].values():
        assert sum(v["share"] for v in table.values()) == pytest.approx(1.0) and "convolution" in table
    assert isinstance(res["bf16_in_hardware"], bool) and "cpu_flags" in res


def test_the_smoke_timer_runs_the_readmes_own_smoke_line():
    """fresh_clone.py --smoke times the README's smoke study verbatim: the line is there and study.py takes it."""
    import sys
    from sisa.layout import PROJECT_ROOT
    spec = importlib.util.spec_from_file_location("fresh_clone", PROJECT_ROOT / "benchmarks" / "fresh_clone.py")
    fresh_clone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh_clone)
    command = fresh_clone.readme_command(PROJECT_ROOT / "README.md", "--name smoke")
    assert command[:2] == [".venv/bin/python", "study.py"] and "--limit" in command
    sys.path.insert(0, str(PROJECT_ROOT))
    import study
    args = study.get_args_parser().parse_args(command[2:])
    assert args.name == "smoke" and args.limit


@pytest.mark.slow
def test_membership_benchmark_measures_how_visible_training_faces_are(faces_dir, cache_dir, tmp_path):
    run_script("train.py", "--num_shards", 1, "--num_slices", 1, "--strategy", "random-balanced", "--folds", 2,
               "--epochs", 1, "--image_size", 24, "--model", "cnn", "--test_per_cell", 2, "--test_random", 10,
               "--data_dir", faces_dir, "--cache_dir", cache_dir, "--checkpoints_dir", tmp_path / "ck")
    out = tmp_path / "membership.json"
    p = run_script("benchmarks/membership.py", "--runs", tmp_path / "ck" / "random-balanced-slice-1x1", "--n_boot", 20,
                   "--out", out, no_progress=False)
    assert "logistic AUC" in p.stdout
    r = json.loads(out.read_text())["runs"][0]
    assert r["epochs"] == 1 and r["folds"] == 2 and 0 <= r["test_accuracy"] <= 1
    for attack in ("threshold", "logistic"):
        a = r["attacks"][attack]
        assert a["interval"][0] <= a["auc_members_vs_test"] <= a["interval"][1] and set(a["by_race"]) <= set(r["races"])


@pytest.mark.slow
def test_sisa_cost_benchmark_reads_each_points_study(faces_dir, cache_dir, tmp_path):
    out = tmp_path / "cost.json"
    p = run_script("benchmarks/sisa_cost.py", "--points", "1:64", "--out", out, "--work", tmp_path / "work",
                   "--study_args", "--data_dir", faces_dir, "--cache_dir", cache_dir, "--folds", 2, "--num_shards", 2,
                   "--num_slices", 2, "--image_size", 24, "--n_boot", 20, no_progress=False)
    assert "1:64: baseline" in p.stdout
    point = json.loads(out.read_text())["points"][0]
    assert point["epochs"] == 1 and point["batch_size"] == 64 and point["settings"]["epochs"] == 1
    assert 0 < point["baseline"]["accuracy"]["value"] <= 100 and 0 < point["uniform"]["accuracy"]["value"] <= 100
    assert "accuracy_overall" in point["sisa_cost"] and set(point["seconds"]) == {
        "sisa-cost-e1-b64-kfold-baseline", "sisa-cost-e1-b64-kfold-uniform"}


def test_interval_coverage_benchmark_measures_both_formulas(tmp_path):
    spec = importlib.util.spec_from_file_location("interval_coverage", "benchmarks/interval_coverage.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "ic.json"
    assert bench.main(["--sims", "6", "--replicates", "3", "--systematic", "0.3", "--faces", "120", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [(c["design"], c["replicates"]) for c in r["cells"]] == [("same", 3), ("third", 3)]
    for c in r["cells"]:
        for name in ("change", "counted_twice"):
            m = c[name]
            assert abs(m["se_over_spread"] - m["mean_se"] / c["estimate_spread"]) < 0.01
            lo, hi = m["coverage_interval"]
            assert 0 <= lo <= m["coverage_95"] <= hi <= 1
        assert c["counted_twice"]["mean_se"] >= c["change"]["mean_se"] - 1e-12     # never narrower: it adds more
