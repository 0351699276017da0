"""Time the quick start as a new user meets it: clone, ./setup.sh, `.venv/bin/python study.py`.

    .venv/bin/python benchmarks/fresh_clone.py --dest ../fresh2 --out benchmarks/results/fresh-clone-cpu-DATE-run2.json
    .venv/bin/python benchmarks/fresh_clone.py --record ../fresh1 --out ...   # record a clone already timed
    .venv/bin/python benchmarks/fresh_clone.py --dest ../fresh3 --smoke --out ...  # the README's smoke study instead

The clone must sit where `setup.sh` finds the data (beside `../shared`, or with $UTKFACE_DIR set).
The study runs under `/usr/bin/time -v` (its output in <dest>/study-time.txt); the JSON written holds
the wall time of the study command (setup.sh not included), the commit, the machine, and what its
report says (total seconds, baseline random top-1 with its interval, the positive control's verdict).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sisa.layout import StudyLayout, list_studies  # noqa: E402


def sh(cmd: list[str], cwd: Path, log: Path) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"fresh_clone: {' '.join(cmd)} failed ({proc.returncode}); see {log}")


def wall_seconds(time_file: Path) -> float:
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", time_file.read_text())
    if not m:
        sys.exit(f"fresh_clone: no wall time in {time_file} (was the study run under /usr/bin/time -v?)")
    parts = [float(p) for p in m.group(1).split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def study_folder(dest: Path, name: str | None) -> StudyLayout:
    """The study the quick start wrote: --study, else the one study folder of the clone with a report
    (reports/published holds committed studies, never one the quick start writes)."""
    if name:
        return StudyLayout(dest / "reports" / name)
    found = list_studies(dest / "reports")
    if len(found) != 1:
        sys.exit(f"fresh_clone: {len(found)} study reports in {dest / 'reports'} ({', '.join(s.name for s in found)}); "
                 "name one with --study")
    return found[0]


def readme_command(readme: Path, marker: str) -> list[str]:
    """The README's command line holding `marker`, as a new user copies it (one line, no comment)."""
    for line in readme.read_text().splitlines():
        if line.startswith(".venv/bin/python study.py") and marker in line:
            return line.split("#", 1)[0].split()
    sys.exit(f"fresh_clone: no `.venv/bin/python study.py ... {marker} ...` line in {readme}")


def record(dest: Path, out: Path, study: str | None = None, command: list[str] | None = None) -> dict:
    layout = study_folder(dest, study)
    if not layout.report_json.exists():
        sys.exit(f"fresh_clone: {layout.report_json} is missing; did the study finish? (see {dest / 'study-output.txt'})")
    report = json.loads(layout.report_json.read_text())
    kfold = report["tests"]["kfold"]
    if report.get("format") == 2:        # a study of replicates: accuracy on all faces, the control's primary gap
        base = next(r for r in kfold["levels"]["baseline before"] if r["statistic"] == "accuracy_overall")
        control = next((c for c in kfold["comparisons"].get("control vs uniform", [])
                        if c["run"] == "control" and c["statistic"] == "gap_accuracy_standardised"), None)
        primary = [c for fam in ("placement vs uniform", "forgetting: after vs before") for c in
                   kfold["comparisons"].get(fam, []) if c["statistic"] == "gap_accuracy_standardised"]
        st = report["settings"]
        extra = {"tested_faces": kfold["faces"]["tested"],
                 "protocol": {"epochs": st["epochs"], "folds": st["folds"], "folds_run": st.get("folds_run"),
                              "replicates": st["replicates"], "configurations": len(kfold["runs"]),
                              "scenarios": st.get("scenarios", []), "forget": st.get("forget", [])},
                 "primary": [{k: c[k] for k in ("family", "run", "phase", "change", "ci_low_adjusted", "ci_high_adjusted",
                                                "detectable", "verdict")} for c in primary]}
    else:
        base = kfold["levels"]["baseline"]["top1 random"]
        control = next((c for c in kfold["contrasts"].get("control vs uniform", []) if c["statistic"].startswith("gap")),
                       None)
        extra = {}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=dest, capture_output=True, text=True).stdout.strip()
    data = {
        "what": f"fresh clone: ./setup.sh, then `{' '.join(command or ['.venv/bin/python', 'study.py'])}` timed "
                "(setup.sh not included)",
        "date": time.strftime("%Y-%m-%d", time.localtime((dest / "study-time.txt").stat().st_mtime)),
        "commit": commit,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": report["machine"]["device"]},
        "study_wall_s": wall_seconds(dest / "study-time.txt"),
        "report_seconds_total": report["seconds_total"],
        "preset": report["settings"]["preset"],
        "baseline_random_top1": base,
        "control_gap_change": control,
        **extra,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dest", type=Path, help="clone here (must not exist) and time the quick start")
    p.add_argument("--record", type=Path, help="only record a clone timed before (its study-time.txt and report)")
    p.add_argument("--source", default=str(ROOT), help="what to clone (default: this repository)")
    p.add_argument("--out", type=Path, required=True, help="the JSON to write")
    p.add_argument("--study", default=None, help="the study's name under reports/ (default: the one study with a report)")
    p.add_argument("--smoke", action="store_true",
                   help="time the README's smoke study (its `study.py ... --name smoke ...` line, verbatim) instead of "
                        "the whole study")
    a = p.parse_args(argv)
    if bool(a.dest) == bool(a.record):
        p.error("give exactly one of --dest and --record")
    dest = (a.dest or a.record).resolve()
    if a.dest:
        if dest.exists():
            p.error(f"{dest} exists; give a new folder")
        sh(["git", "clone", "-q", a.source, str(dest)], ROOT, Path(f"{dest}.clone.log"))
        sh(["./setup.sh"], dest, dest / "setup-output.txt")
    command = readme_command(dest / "README.md", "--name smoke") if a.smoke else [".venv/bin/python", "study.py"]
    if a.dest:
        sh(["/usr/bin/time", "-v", "-o", "study-time.txt", *command], dest, dest / "study-output.txt")
    d = record(dest, a.out, a.study, command)
    b = d["baseline_random_top1"]
    print(f"study.py in {d['study_wall_s'] / 60:.1f} min wall; baseline random {100 * b['value']:.1f}% "
          f"[{100 * b['ci_low']:.1f}, {100 * b['ci_high']:.1f}]; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
