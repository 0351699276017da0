"""evaluate.py on tiny real runs: the original's pickles, tables, figures, --compare, and its errors."""
import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from helpers import error_line, run_script
from sisa.config import RunConfig
from sisa.experiment import Options, prepare
from sisa.training import train_run

GROUPS7 = ["white", "black", "asian", "indian", "other", "random", "all_races"]
TINY = dict(num_shards=2, num_slices=2, folds=2, epochs=1, image_size=24, model="cnn", test_per_cell=2,
            test_random=10, put_in="slice")


@pytest.fixture(scope="module")
def runs(faces_dir, cache_dir, tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck")
    for strategy in ("random-balanced", "sorted-balanced"):
        exp = prepare(RunConfig(strategy=strategy, **TINY),
                      Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=ck, progress=False))
        train_run(exp, Options(progress=False, device="cpu"))
    return ck


def evaluate(ck, sums, *args, check=True):
    return run_script("evaluate.py", "--checkpoints_dir", ck, "--summaries_dir", sums, "--n_boot", 200, *args,
                      check=check)


def copy_run(ck, name, dest):
    shutil.copytree(ck / name, dest / name)
    return dest


@pytest.mark.slow
def test_evaluate_writes_the_original_pickles_tables_and_figures(runs, tmp_path):
    sums = tmp_path / "summaries"
    out = evaluate(runs, sums, "--run_dir", "random-balanced-slice-2x2").stdout
    assert "gap (best - worst)" in out
    name = "random-balanced-slice-2x2"
    for f in [f"{name}-1of2.pickle", f"{name}-2of2.pickle", f"{name}-mean.pickle", f"{name}-square.pickle",
              f"{name}-results.csv", f"{name}-results.pickle", f"{name}-fairness.csv", f"{name}-bars.png",
              f"{name}-heatmap.png", f"{name}-composition.png", f"{name}-info.json"]:
        assert (sums / f).stat().st_size > 0, f
    # readable with plain pickle + pandas/numpy, without this project on the path
    reader = (
        "import pickle, sys, numpy, pandas\n"
        "assert 'sisa' not in sys.modules\n"
        f"d = pickle.load(open(r'{sums / name}-1of2.pickle', 'rb'))\n"
        "assert sorted(d) == sorted(%r), d\n"
        "assert all(isinstance(v, tuple) and len(v) == 2 and 0 <= v[0] <= 1 and v[0] <= v[1] for v in d.values())\n"
        f"top1, top2 = pickle.load(open(r'{sums / name}-mean.pickle', 'rb'))\n"
        "assert isinstance(top1, pandas.Series) and list(top1.index) == %r\n"
        "assert top1.index.dtype == object and top1.dtype == float  # no pandas string dtype: loads without pyarrow\n"
        "assert (top1 <= top2).all() and top1.reindex(index=['white', 'black']).notna().all()\n"
        f"sq = pickle.load(open(r'{sums / name}-square.pickle', 'rb'))\n"
        "assert isinstance(sq, numpy.ndarray) and sq.shape == (6, 7)\n"
        f"df = pickle.load(open(r'{sums / name}-results.pickle', 'rb'))\n"
        "assert list(df.columns)[:6] == ['fold', 'model', 'group', 'age_class', 'metric', 'value']\n"
        "assert all(df[c].dtype == object for c in ('model', 'group', 'age_class', 'metric', 'run'))\n"
    ) % (GROUPS7, GROUPS7)
    subprocess.run([sys.executable, "-I", "-c", reader], check=True, cwd=tmp_path)
    tidy = pd.read_csv(sums / f"{name}-results.csv")
    assert set(tidy["model"]) == {"ensemble", "shard-0", "shard-1"}          # single models too
    assert {"top1", "top2", "macro_f1", "faces"} <= set(tidy["metric"])
    fair = pd.read_csv(sums / f"{name}-fairness.csv", index_col=0)
    assert {"worst race top1", "gap (best - worst)", "ratio (worst / best)", "decrease black vs best"} <= set(fair.index)
    pct = fair[fair["interval"] == "percentile"]
    assert len(pct) == 5 and (pct["ci_low"] <= pct["value"] + 1e-9).all() and (pct["value"] <= pct["ci_high"] + 1e-9).all()
    assert (fair["ci_low"] <= fair["ci_high"]).all() and fair["fold_std"].notna().all()
    info = json.loads((sums / f"{name}-info.json").read_text())
    assert info["weights_used"] == "none" and info["unlearning_requests_served"] == 0
    # the mean pickle is the mean of the fold pickles
    folds = [pickle.load(open(sums / f"{name}-{k}of2.pickle", "rb")) for k in (1, 2)]
    top1, _ = pickle.load(open(sums / f"{name}-mean.pickle", "rb"))
    assert top1["black"] == pytest.approx((folds[0]["black"][0] + folds[1]["black"][0]) / 2)
    # logits are kept per fold; evaluating again (another aggregation, another name) reuses them
    logits = runs / name / "fold-0" / "logits.npz"
    stamp = logits.stat().st_mtime_ns
    with np.load(logits) as z:
        assert z["shard_logits"].shape == (2, 80, 7) and z["ensemble_vote"].shape == (80, 7)
    evaluate(runs, sums, "--run_dir", name, "--aggregation", "vote", "--name", "as-vote")
    assert logits.stat().st_mtime_ns == stamp and (sums / "as-vote-mean.pickle").exists()
    # summaries are never silently overwritten
    before = (sums / f"{name}-mean.pickle").read_bytes()
    assert "--overwrite" in error_line(evaluate(runs, sums, "--run_dir", name, check=False))
    assert (sums / f"{name}-mean.pickle").read_bytes() == before


@pytest.mark.slow
def test_compare_answers_the_amplification_question(runs, tmp_path):
    sums = tmp_path / "s"
    for name in ("random-balanced-slice-2x2", "sorted-balanced-slice-2x2"):
        evaluate(runs, sums, "--run_dir", name)
    out = evaluate(runs, sums, "--compare", "random-balanced-slice-2x2", "sorted-balanced-slice-2x2").stdout
    assert "gap (best - worst)" in out
    stem = sums / "compare-random-balanced-slice-2x2-vs-sorted-balanced-slice-2x2"
    changes = pd.read_csv(f"{stem}-changes.csv")
    gap = changes[changes["statistic"].str.startswith("gap (")].iloc[0]
    assert gap["ci_low"] <= gap["change"] <= gap["ci_high"] and bool(gap["paired"])   # same test faces: paired
    expected = (("widened" if gap["change"] > 0 else "narrowed") if gap["p_adjusted"] < 0.05
                else f"inconclusive (detectable ±{100 * gap['detectable']:.1f})")
    assert gap["verdict"] == expected
    side = pd.read_csv(f"{stem}-side.csv", index_col=0)
    assert list(side.columns) == ["random-balanced-slice-2x2", "sorted-balanced-slice-2x2"]
    assert (sums / f"{stem.name}.png").stat().st_size > 0
    assert "evaluate.py --run_dir nope" in error_line(evaluate(runs, sums, "--compare", "random-balanced-slice-2x2",
                                                               "nope", check=False))


@pytest.mark.slow
def test_error_cases_are_one_line_and_write_nothing(runs, tmp_path):
    sums = tmp_path / "sums"
    line = error_line(evaluate(runs, sums, "--run_dir", "no-such-run", check=False))
    assert "no run at" in line and "random-balanced-slice-2x2" in line
    ck = copy_run(runs, "random-balanced-slice-2x2", tmp_path / "ck")
    run = ck / "random-balanced-slice-2x2"
    # unfinished fold: listed exactly; --allow_partial evaluates the complete one
    for suffix in (".pt", ".json"):
        (run / "fold-1" / "shard-0" / f"slice-1{suffix}").unlink()
    line = error_line(evaluate(ck, sums, "--run_dir", "random-balanced-slice-2x2", check=False))
    assert "fold 1: shard 0 slice 1 missing" in line and "--allow_partial" in line
    assert not sums.exists() or not any(sums.iterdir())
    evaluate(ck, sums, "--run_dir", "random-balanced-slice-2x2", "--allow_partial", "--name", "partial")
    assert (sums / "partial-1of1.pickle").exists()
    assert json.loads((sums / "partial-info.json").read_text())["folds_evaluated"] == [0]
    # a corrupted checkpoint
    ckpt = run / "fold-0" / "shard-1" / "slice-1.pt"
    raw = bytearray(ckpt.read_bytes())
    raw[100] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    line = error_line(evaluate(ck, sums, "--run_dir", str(run), "--allow_partial", "--overwrite", check=False))
    assert "no complete fold" in line and "fold 0: shard 1 slice 1 damaged" in line and "fold 1: shard 0 slice 1 missing" in line


@pytest.mark.slow
def test_checkpoint_of_another_configuration_is_refused(runs, faces_dir, cache_dir, tmp_path):
    # a run identical but for the learning rate: same partitions, so only the checkpoint's config can tell
    ck = tmp_path / "ck"
    other = prepare(RunConfig(strategy="random-balanced", lr=1e-3, run_name="other", **TINY),
                    Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=ck, progress=False))
    src = runs / "random-balanced-slice-2x2"
    copied = sorted(src.glob("fold-*/shard-*/slice-*"))
    assert len(copied) == 2 * 2 * 2 * 2                   # 2 folds x 2 shards x 2 slices, .pt and .json
    for path in copied:
        dest = other.layout.root / path.relative_to(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    (other.layout.root / "fold-0" / "logits.npz").unlink(missing_ok=True)
    line = error_line(evaluate(ck, tmp_path / "s", "--run_dir", "other", "--data_dir", faces_dir,
                               "--cache_dir", cache_dir, check=False))
    assert "another configuration" in line and "lr" in line


@pytest.mark.slow
def test_overwrite_replaces_the_summaries_of_every_fold_count(runs, tmp_path):
    """Summaries of another fold count must not survive an --overwrite and mix into readers' globs."""
    ck = copy_run(runs, "random-balanced-slice-2x2", tmp_path / "ck")
    sums = tmp_path / "sums"
    evaluate(ck, sums, "--run_dir", "random-balanced-slice-2x2")
    name = "random-balanced-slice-2x2"
    assert sorted(p.name for p in sums.glob(f"{name}-*of*.pickle")) == [f"{name}-1of2.pickle", f"{name}-2of2.pickle"]
    for suffix in (".pt", ".json"):
        (ck / name / "fold-1" / "shard-0" / f"slice-1{suffix}").unlink()
    line = error_line(evaluate(ck, sums, "--run_dir", name, "--allow_partial", check=False))
    assert "exist already" in line and "pass --overwrite" in line
    evaluate(ck, sums, "--run_dir", name, "--allow_partial", "--overwrite")
    assert sorted(p.name for p in sums.glob(f"{name}-*of*.pickle")) == [f"{name}-1of1.pickle"]
    assert json.loads((sums / f"{name}-info.json").read_text())["folds_evaluated"] == [0]


@pytest.mark.slow
def test_flip_test_time_augmentation_averages_the_logits_of_each_face_and_its_mirror(runs, tmp_path):
    import torch
    from sisa.checkpoints import load_checkpoint
    from sisa.data import load_faces
    from sisa.inputs import to_input
    from sisa.model import build_model
    name = "random-balanced-slice-2x2"
    sums = tmp_path / "s"
    evaluate(runs, sums, "--run_dir", name, "--tta", "flip", "--name", "flip", "--precision", "fp32")   # compared with fp32 below
    evaluate(runs, sums, "--run_dir", name, "--tta", "none", "--name", "plain", "--precision", "fp32")
    info = json.loads((sums / "flip-info.json").read_text())
    assert info["tta"] == "flip" and info["recipe"] == "original"
    assert json.loads((sums / "plain-info.json").read_text())["tta"] == "none"     # auto for the original recipe
    with np.load(runs / name / "fold-0" / "logits.npz") as z:
        plain, flipped, names = z["shard_logits"], z["shard_logits_flip"], list(z["filenames"])
    # the mirrored logits really are the model on mirrored faces
    cfg = json.loads((runs / name / "config.json").read_text())
    run_info = json.loads((runs / name / "run.json").read_text())
    faces = load_faces(run_info["data"]["folder"], cfg["image_size"], run_info["data"]["cache"], progress=False)
    rows = [faces.table["filename"].tolist().index(n) for n in names[:16]]
    model, _ = build_model("cnn", "none", 0)
    model.load_state_dict(load_checkpoint(runs / name / "fold-0" / "shard-1" / "slice-1.pt")["model"])
    with torch.no_grad():
        x = to_input(torch.from_numpy(faces.images[rows]))
        assert np.allclose(model.eval()(x.flip(3)).numpy(), flipped[1, :16], atol=1e-5)
        assert np.allclose(model(x).numpy(), plain[1, :16], atol=1e-5)
    pred = pd.read_csv(sums / "flip-predictions.csv")
    ens = pred[(pred["fold"] == 0) & (pred["model"] == "ensemble")].set_index("filename").loc[names]
    assert (ens["pred1"].to_numpy() == np.argmax((plain + flipped).sum(0) / 2, axis=1)).all()
    plain_pred = pd.read_csv(sums / "plain-predictions.csv")
    plain_ens = plain_pred[(plain_pred["fold"] == 0) & (plain_pred["model"] == "ensemble")].set_index("filename").loc[names]
    assert (plain_ens["pred1"].to_numpy() == np.argmax(plain.sum(0), axis=1)).all()


@pytest.mark.parametrize("model_name", ["cnn-max", "resnet18"])
def test_the_cpu_inference_copy_computes_the_models_logits(model_name):
    """evaluate.py's frozen, fused copy of a model gives its logits (to float rounding) at every batch
    size, the last partial batch included; in bf16 or off the CPU the model is used as it is."""
    import torch
    from sisa.evaluation import inference_model
    from sisa.model import build_model
    model, _ = build_model(model_name, "none", 3)
    model = model.eval().to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fast = inference_model(model, x, "fp32")
        assert fast is not model
        for batch in (x, x[:5].contiguous(memory_format=torch.channels_last)):
            assert torch.allclose(fast(batch), model(batch), atol=1e-4, rtol=1e-4)
        assert inference_model(model, x, "bf16") is model
