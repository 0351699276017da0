"""The one place that knows where files live.

    checkpoints/<run>/
        config.json                 the resolved RunConfig
        run.json                    partition hashes, data fingerprint, resolved weights, versions
        skipped.csv                 every data file that is not a usable face, with the reason
        LOCK                        held by the process writing the run
        fold-<k>/partition.csv      one row per face: labels, likelihood, role, group, shard, slice, forgotten
        fold-<k>/composition.csv    faces, race shares and high-likelihood share per shard and slice
        fold-<k>/shard-<s>/slice-<l>.pt   checkpoint after slice stage l (slices 0..l of shard s)
        fold-<k>/metrics.jsonl      one record per training epoch
        fold-<k>/logits.npz         evaluation: every shard model's logits on the test faces
        unlearning/log.jsonl        append-only record of served deletion requests
        unlearning/metrics.jsonl    one record per retraining epoch
        unlearning/pending/fold-<k>/shard-<s>/   a request being served: request.json, the retrained
                                    checkpoints, then commit.json; moved into place once committed
    summaries/<name>-<k>of<K>.pickle, -mean.pickle, -square.pickle, -results.csv/.pickle, ...
    reports/<study>/                study.py: study.json, report.md, report.json, figures, predictions
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import SisaError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINTS = PROJECT_ROOT / "checkpoints"
DEFAULT_SUMMARIES = PROJECT_ROOT / "summaries"
DEFAULT_DATA = PROJECT_ROOT / "data" / "UTKFace"
DEFAULT_CACHE = PROJECT_ROOT / "data" / "cache"
DEFAULT_REPORTS = PROJECT_ROOT / "reports"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    config = property(lambda self: self.root / "config.json")
    manifest = property(lambda self: self.root / "run.json")
    skipped = property(lambda self: self.root / "skipped.csv")
    lock = property(lambda self: self.root / "LOCK")
    unlearning_dir = property(lambda self: self.root / "unlearning")
    unlearning_log = property(lambda self: self.root / "unlearning" / "log.jsonl")
    unlearning_metrics = property(lambda self: self.root / "unlearning" / "metrics.jsonl")
    pending_dir = property(lambda self: self.root / "unlearning" / "pending")

    def fold_dir(self, fold: int) -> Path:
        return self.root / f"fold-{fold}"

    def partition(self, fold: int) -> Path:
        return self.fold_dir(fold) / "partition.csv"

    def composition(self, fold: int) -> Path:
        return self.fold_dir(fold) / "composition.csv"

    def metrics(self, fold: int) -> Path:
        return self.fold_dir(fold) / "metrics.jsonl"

    def logits(self, fold: int) -> Path:
        return self.fold_dir(fold) / "logits.npz"

    def checkpoint(self, fold: int, shard: int, slice_: int) -> Path:
        return self.fold_dir(fold) / f"shard-{shard}" / f"slice-{slice_}.pt"

    def pending_shard(self, fold: int, shard: int) -> Path:
        """One shard's own pending folder: a request being served there, until it is committed."""
        return self.pending_dir / f"fold-{fold}" / f"shard-{shard}"

    def pending_checkpoint(self, fold: int, shard: int, slice_: int) -> Path:
        return self.pending_shard(fold, shard) / f"slice-{slice_}.pt"

    @staticmethod
    def pending_request(shard_dir: Path) -> Path:
        return shard_dir / "request.json"

    @staticmethod
    def pending_commit(shard_dir: Path) -> Path:
        return shard_dir / "commit.json"

    def pending_folds(self) -> list[Path]:
        return sorted(self.pending_dir.glob("fold-*"))

    def pending_commits(self) -> list[Path]:
        """Every commit.json of a request committed but not yet finished, in a stable order."""
        return sorted(self.pending_dir.glob("fold-*/shard-*/commit.json"))

    def partition_lock(self, fold: int) -> Path:
        return self.unlearning_dir / f".partition-{fold}.lock"

    def exists(self) -> bool:
        return self.config.exists()


def run_layout(run: str, checkpoints_dir: Path = DEFAULT_CHECKPOINTS, must_exist: bool = True) -> RunLayout:
    """A run given as a name under `checkpoints_dir` or as a path to its folder."""
    candidates = [Path(run)] if ("/" in run or Path(run).is_absolute()) else [Path(checkpoints_dir) / run, Path(run)]
    for c in candidates:
        if (c / "config.json").exists():
            return RunLayout(c.resolve())
    if must_exist:
        looked = " or ".join(str(c) for c in candidates)
        raise SisaError(f"no run at {looked} (no config.json there); train it first with train.py, "
                        f"or give the run's folder (runs: {', '.join(list_runs(checkpoints_dir)) or 'none'})")
    return RunLayout(candidates[0].resolve())


def list_runs(checkpoints_dir: Path = DEFAULT_CHECKPOINTS) -> list[str]:
    d = Path(checkpoints_dir)
    return sorted(p.name for p in d.iterdir() if (p / "config.json").exists()) if d.is_dir() else []


@dataclass(frozen=True)
class SummaryLayout:
    """Files that evaluate.py writes for one evaluated state of a run, named `<name>-...`."""
    root: Path
    name: str

    def fold(self, k: int, folds: int) -> Path:      # k is 1-based, as in the original: <run>-1of5.pickle
        return self.root / f"{self.name}-{k}of{folds}.pickle"

    mean = property(lambda self: self.root / f"{self.name}-mean.pickle")
    square = property(lambda self: self.root / f"{self.name}-square.pickle")
    results_csv = property(lambda self: self.root / f"{self.name}-results.csv")
    results_pickle = property(lambda self: self.root / f"{self.name}-results.pickle")
    fairness_csv = property(lambda self: self.root / f"{self.name}-fairness.csv")
    predictions = property(lambda self: self.root / f"{self.name}-predictions.csv")
    info = property(lambda self: self.root / f"{self.name}-info.json")
    logits = property(lambda self: self.root / f"{self.name}-logits.npz")
    features = property(lambda self: self.root / f"{self.name}-features.npz")   # the attack's, every face of every fold
    tuning = property(lambda self: self.root / f"{self.name}-tuning.json")       # unlearn.py --method: the learning rate chosen
    tuning_metrics = property(lambda self: self.root / f"{self.name}-tuning-metrics.jsonl")
    aggregations = property(lambda self: self.root / f"{self.name}-aggregations.csv")
    bars = property(lambda self: self.root / f"{self.name}-bars.png")
    heatmap = property(lambda self: self.root / f"{self.name}-heatmap.png")
    composition_png = property(lambda self: self.root / f"{self.name}-composition.png")

    def fold_pickles(self) -> list[Path]:
        """Per-fold pickles of this name for any fold count (an evaluation of another count leaves its own)."""
        return sorted(self.root.glob(f"{self.name}-*of*.pickle"))

    def all_files(self, folds: int) -> list[Path]:
        return [*(self.fold(k, folds) for k in range(1, folds + 1)), self.mean, self.square,
                self.results_csv, self.results_pickle, self.fairness_csv, self.predictions, self.info,
                self.logits, self.aggregations, self.bars, self.heatmap, self.composition_png]


def compare_stem(root: Path, names: list[str]) -> Path:
    """Files of `evaluate.py --compare BASE RUN...`: <stem>-side.csv, -changes.csv, .png."""
    stem = Path(root) / f"compare-{names[0]}-vs-{'+'.join(names[1:])}"
    return stem.with_name(f"compare-{names[0]}-vs-{len(names) - 1}-runs") if len(stem.name) > 150 else stem


def unlearning_report(root: Path, stem: str) -> tuple[Path, Path]:
    """`unlearn.py --report`'s table and figure."""
    return Path(root) / f"{stem}.csv", Path(root) / f"{stem}.png"


@dataclass(frozen=True)
class StudyLayout:
    """study.py's folder: reports/<study>/."""
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    settings = property(lambda self: self.root / "study.json")       # what the study is (its identity)
    state = property(lambda self: self.root / "progress.json")       # phases complete (studies before per-run files)
    jobs = property(lambda self: self.root / "jobs.json")            # --launcher slurm: the job of each run
    launcher_dir = property(lambda self: self.root / "submitit")     # submitit's own job files and logs
    report_md = property(lambda self: self.root / "report.md")
    report_json = property(lambda self: self.root / "report.json")
    predictions = property(lambda self: self.root / "predictions")   # per-face predictions of every run
    counts = property(lambda self: self.root / "counts.csv.gz")       # tidy counts by run, fold, race and age class
    lock = property(lambda self: self.root / "LOCK")

    def figure(self, name: str) -> Path:
        return self.root / f"{name}.png"

    def run_state(self, run: str) -> Path:
        """Which phases of one run are complete, with their seconds (written only by the run's job)."""
        return self.root / "progress" / f"{run}.json"

    def run_states(self) -> list[Path]:
        return sorted((self.root / "progress").glob("*.json"))

    def run_log(self, run: str) -> Path:
        return self.root / "logs" / f"{run}.log"

    def tuning(self, run: str) -> Path:
        """The approximate methods' learning rates chosen on a replicate's baseline (tuning.py)."""
        return self.root / "tuning" / f"{run}.json"

    def tuning_metrics(self, run: str) -> Path:
        return self.root / "tuning" / f"{run}-metrics.jsonl"

    def predictions_file(self, run: str) -> Path:
        return self.predictions / f"{run}.npz"

    def faces_file(self, test: str) -> Path:
        """The test faces (fold, file, race, age class, group) every predictions file is aligned with."""
        return self.predictions / f"{test}-faces.csv.gz"


def list_studies(reports_dir: Path) -> list[StudyLayout]:
    """The study folders under `reports_dir` that hold a report (reports/published/ is not one: it
    holds the committed studies, one folder deeper)."""
    return [StudyLayout(p.parent) for p in sorted(Path(reports_dir).glob("*/report.json"))]
