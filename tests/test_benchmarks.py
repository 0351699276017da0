"""The benchmark scripts run on CPU with small settings, and their output has every field."""
import json
import subprocess
import sys

from helpers import run_script
from sisa.layout import PROJECT_ROOT


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


def test_study_runs_every_phase_and_times_it(faces_dir, cache_dir, tmp_path):
    out = tmp_path / "study.json"
    run_script("benchmarks/study.py", "--cpu_small", "--configs", "baseline", "later-slices", "--folds", 2,
               "--limit", 600, "--epochs", 1, "--image_size", 24, "--test_per_cell", 2, "--test_random", 10,
               "--sample", 1, "--n_boot", 50, "--data_dir", faces_dir, "--cache_dir", cache_dir,
               "--checkpoints_dir", tmp_path / "ck", "--summaries_dir", tmp_path / "s", "--out", out)
    r = json.loads(out.read_text())
    assert r["label"].startswith("CPU-sized") and r["device"].startswith("CPU")
    base, later = r["configs"]
    for c in (base, later):
        assert {"seconds_data_and_partitions", "seconds_training", "seconds_evaluation", "training_images_per_s",
                "fairness", "fairness_ci", "top1", "composition", "expected_unlearning"} <= set(c)
    assert "unlearning_requests" not in base and len(later["unlearning_requests"]) == 2      # 1 per fold
    assert later["expected_unlearning"][0]["speedup_vs_full"] > 1
    five = later["expected_unlearning_batches"]["5"]
    assert len(five) == 2 and all(1 <= e["shards_retrained"] <= 5 for e in five)           # 2 folds, 5 shards
    assert "expected_unlearning_batches" not in base
    # the tables of RESULTS.md, from the study's own outputs
    tables = subprocess.run([sys.executable, "benchmarks/results_tables.py", "--study", str(out), "--summaries_dir",
                             str(tmp_path / "s"), "--n_boot", "50"], capture_output=True, text=True, check=True,
                            cwd=PROJECT_ROOT).stdout
    assert "| white | " in tables and "(75.9)" in tables and "| later-slices | " in tables
    assert "batches of 5: shards retrained" in tables and "high unlearning likelihood" in tables
    assert r["compare"]["changes"] and r["unlearning_report"][1]["requests_served"] == 2
    assert (tmp_path / "s" / "study-balanced-24px-unlearning.png").exists()
