"""The smallest real end to end, in this process (the fast tier's tour of every layer): train a tiny
run, evaluate it, serve a request, verify it, evaluate again (recomputing only the retrained shard's
logits), and read the outputs back."""
import json

import numpy as np
import pandas as pd

from sisa import evaluation
from sisa.config import RunConfig
from sisa.experiment import Options, open_run, prepare
from sisa.training import train_run
from sisa.unlearning import sample_requests, serve_plan, verify


def test_train_evaluate_unlearn_evaluate(faces_dir, cache_dir, tmp_path, monkeypatch):
    cfg = RunConfig(num_shards=2, num_slices=2, folds=1, epochs=1, image_size=24, model="cnn-max", recipe="strong",
                    test_per_cell=2, test_random=10, strategy="sorted-balanced", put_in="slice")
    opts = Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=tmp_path / "ck", progress=False, device="cpu")
    exp = prepare(cfg, opts)
    train_run(exp, opts)
    computed = []
    real = evaluation.shard_logits
    monkeypatch.setattr(evaluation, "shard_logits",
                        lambda exp, fold, device, shards, mirrored, precision: computed.append(list(shards)) or
                        real(exp, fold, device, shards, mirrored, precision))
    sums = tmp_path / "sums"
    out, fair = evaluation.evaluate_run(exp.layout, opts, sums, n_boot=50)
    assert computed == [[0, 1]]                                    # both shards, once
    info = json.loads(out.info.read_text())
    assert info["tta"] == "flip" and info["recipe"] == "strong" and {"gap (best - worst)", "top1 black"} <= set(fair.index)
    agg = pd.read_csv(out.aggregations, index_col=0)
    assert list(agg.index) == ["sum_logits", "vote", "mean_softmax", "shard mean", "shard min", "shard max"]
    assert (agg.loc["shard min"] <= agg.loc["shard max"]).all()
    with np.load(out.logits) as z:
        assert z["shard_logits"].shape == (2, 80, 7) and str(z["tta"]) == "flip"
    # one request, retrained in its shard only, committed and verified
    exp = open_run(exp.layout, opts, with_images=False)
    face = sample_requests(exp.partitions[0], 1, 0, 0)[0]
    (rec,) = [r for _, _, r in serve_plan(exp.layout, opts, {0: [face]})]
    assert rec["face"] == face and rec["stages_retrained"] == list(range(rec["slice"], 2))
    exp = open_run(exp.layout, opts, with_images=False)
    assert all(r["ok"] for r in verify(exp)) and exp.partitions[0]["forgotten"].sum() == 1
    after, _ = evaluation.evaluate_run(exp.layout, opts, sums, name=evaluation.summary_name(exp), n_boot=50)
    assert after.name == f"{cfg.name}-unlearned1" and computed[1] == [rec["shard"]]   # only the retrained shard
    before = pd.read_csv(out.predictions)
    later = pd.read_csv(after.predictions)
    other = f"shard-{1 - rec['shard']}"
    assert before[before["model"] == other]["pred1"].tolist() == later[later["model"] == other]["pred1"].tolist()
