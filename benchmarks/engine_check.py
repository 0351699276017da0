"""Is the graphs engine right? One short stage trained eagerly and as CUDA graphs, on real faces (GPU).

    .venv/bin/python benchmarks/engine_check.py --data_dir data/utk200 --size 128 --out results/engine-check.json

Measures, for each recipe: the relative difference of the weights (and of the epoch losses) between
the eager and the graphs engine after one stage from the same start, next to the difference between
two eager runs (the GPU's own run-to-run noise under bf16); per-shard isolation (a graphs stage whose
faces are the same but whose other images are changed ends where it would otherwise); and two
shards' captured steps alive at once (shard A, then shard B, then A again from its start, as train.py
interleaves them) giving A the same result. Passes when each graphs difference is within bf16
tolerance (relative weight difference below --tolerance). On a CPU it says it needs CUDA and exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sisa.data import load_faces  # noqa: E402
from sisa.device import device_name  # noqa: E402
from sisa.engine import StagePlan, adopt_for_graphs, train_stage  # noqa: E402
from sisa.layout import DEFAULT_CACHE, DEFAULT_DATA  # noqa: E402
from sisa.model import build_model  # noqa: E402
from sisa.recipe import RECIPES, make_optimizer  # noqa: E402


def run(images, labels, rows, recipe, engine, model_name, epochs, batch, seed=1):
    dev = images.device
    model, _ = build_model(model_name, "none", seed)
    model = model.to(dev, memory_format=torch.channels_last)
    graphs = engine == "graphs"
    lr_t = torch.tensor(recipe.lr, device=dev) if graphs else None
    opt = make_optimizer(model, recipe, recipe.lr, capturable=graphs, lr_tensor=lr_t)
    if graphs:
        adopt_for_graphs(opt, lr_t)
    held = {} if graphs else None
    res = train_stage(model, opt, images, labels, rows, StagePlan(recipe, recipe.lr, epochs, batch, True, engine),
                      (0, "train", 0, 0, 0), graphs=held)
    if graphs and not (held.get("step") is not None and held["step"].graph is not None):
        # a capture that fell back to eager would make every graphs-versus-eager check pass vacuously
        raise SystemExit("engine_check.py: the graphs engine's capture failed (see the warning) and it trained "
                         "eagerly; there is no graph to check")
    return {k: v.detach().float().clone() for k, v in model.state_dict().items()}, [e["loss"] for e in res.epochs]


def rel_diff(a: dict, b: dict) -> float:
    num = sum(float((a[k] - b[k]).pow(2).sum()) for k in a if a[k].is_floating_point())
    den = sum(float(a[k].pow(2).sum()) for k in a if a[k].is_floating_point())
    return (num / den) ** 0.5


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--faces", type=int, default=3000, help="faces in the stage (default 3000: a shard's slice)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--tolerance", type=float, default=0.05, help="largest relative weight difference to pass")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("engine_check.py: the graphs engine needs a CUDA GPU; nothing to check here", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    faces = load_faces(a.data_dir, a.size, a.cache_dir, progress=False)
    images = torch.from_numpy(np.ascontiguousarray(faces.images)).to(dev)
    labels = torch.tensor(faces.table["age_class"].to_numpy(np.int64), device=dev)
    gen = np.random.default_rng(0)
    rows_a = np.sort(gen.choice(len(images), a.faces + 37, replace=False))     # + 37: a partial last batch
    rows_b = np.sort(gen.choice(np.setdiff1d(np.arange(len(images)), rows_a), a.faces, replace=False))
    out = {"device": device_name(dev), "torch": torch.__version__, "size": a.size, "model": a.model,
           "faces": len(rows_a), "epochs": a.epochs, "batch": a.batch, "tolerance": a.tolerance, "recipes": {}}
    ok = True
    for name in ("original", "strong"):
        r = RECIPES[name]
        e1, l1 = run(images, labels, rows_a, r, "eager", a.model, a.epochs, a.batch)
        e2, _ = run(images, labels, rows_a, r, "eager", a.model, a.epochs, a.batch)
        g1, lg = run(images, labels, rows_a, r, "graphs", a.model, a.epochs, a.batch)
        other = images.clone()
        outside = torch.as_tensor(np.setdiff1d(np.arange(len(images)), rows_a), device=dev)
        other[outside] = 255 - other[outside]
        g_iso, _ = run(other, labels, rows_a, r, "graphs", a.model, a.epochs, a.batch)
        run(images, labels, rows_b, r, "graphs", a.model, a.epochs, a.batch, seed=2)    # another shard's graphs
        g_again, _ = run(images, labels, rows_a, r, "graphs", a.model, a.epochs, a.batch)
        res = {"eager_vs_eager": rel_diff(e1, e2), "graphs_vs_eager": rel_diff(g1, e1),
               "graphs_isolation": rel_diff(g_iso, g1), "graphs_after_another_shard": rel_diff(g_again, g1),
               "losses_eager": l1, "losses_graphs": lg,
               "loss_rel_diff": max(abs(x - y) / abs(x) for x, y in zip(l1, lg))}
        res["pass"] = all(res[k] < a.tolerance for k in ("graphs_vs_eager", "graphs_isolation",
                                                          "graphs_after_another_shard")) and res["loss_rel_diff"] < 0.02
        ok &= res["pass"]
        out["recipes"][name] = res
        print(f"{name}: " + ", ".join(f"{k} {v:.2e}" for k, v in res.items() if isinstance(v, float)) + f", pass {res['pass']}",
              flush=True)
    out["pass"] = ok
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
