"""Training throughput of this project's pipeline versus the original study's, measured in one process.

    .venv/bin/python benchmarks/pipeline.py                    # CPU: 32 px, small CNN (what a CPU can train)
    .venv/bin/python benchmarks/pipeline.py --device cuda      # GPU: ResNet-18 at 200 px and 128 px

original  the study's pipeline: PIL images in memory, per-sample torchvision transforms (flip, colour
          jitter, affine, blur, autocontrast, normalise, noise), a DataLoader with 4 workers, fp32,
          one model at a time
ours      decoded uint8 faces on the training device, batched augmentation there (sisa.augment),
          bf16 autocast and channels_last on CUDA; 5 shard models stepping in turn, batch 128 each
          (train.py's eager engine)
graphed   (CUDA only) each shard's step captured as a CUDA graph by sisa.engine.GraphStep: exactly
          train.py's `--engine graphs`
graphed_fold  (CUDA only, experimental) the five shards' steps captured together in one graph
compiled  (CUDA only, experimental) each shard model through torch.compile(mode="reduce-overhead")
ceiling   (CUDA only) one model, batch 640: the same images in one step, the launch-free ceiling
Also, on every device: loading the decoded cache versus decoding the JPEG files, per image.
Ratios are measured in the same process on the same data; results go to benchmarks/results/ as JSON
with the device name.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sisa.augment import augment, blur_kernel  # noqa: E402
from sisa.data import _decode, load_faces  # noqa: E402
from sisa.device import device_name, resolve_device  # noqa: E402
from sisa.errors import first_line  # noqa: E402
from sisa.store import write_json  # noqa: E402
from sisa.engine import GraphStep, train_step  # noqa: E402
from sisa.inputs import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from sisa.layout import DEFAULT_CACHE, DEFAULT_DATA, PROJECT_ROOT  # noqa: E402
from sisa.model import build_model  # noqa: E402
from sisa.recipe import RECIPES, make_optimizer  # noqa: E402

ORIGINAL = RECIPES["original"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(step, n_warm: int, n: int, dev: torch.device, images_per_step: int) -> float:
    """Images per second of `step()` over n calls after n_warm warm-up calls."""
    for _ in range(n_warm):
        step()
    _sync(dev)
    t = time.perf_counter()
    for _ in range(n):
        step()
    _sync(dev)
    return n * images_per_step / (time.perf_counter() - t)


class _Noise:
    def __call__(self, x):
        return x + 0.15 * torch.randn_like(x)


def original_style(images: np.ndarray, labels: np.ndarray, model_name: str, dev: torch.device, batch: int,
                   steps: int, workers: int) -> float:
    """The original pipeline: PIL images, per-sample torchvision transforms, DataLoader workers, fp32."""
    import torchvision.transforms as T
    from PIL import Image

    pil = [Image.fromarray(a) for a in images]
    kx, ky, s_lo, s_hi = blur_kernel(images.shape[1])    # the original's (5, 9), (0.1, 5) at 200 px; scaled as ours
    tf = T.Compose([T.RandomHorizontalFlip(), T.ColorJitter(0.15, 0.2, 0.15, 0.05),
                    T.RandomAffine(15, scale=(0.85, 1.2), shear=10, fill=128), T.GaussianBlur((kx, ky), (s_lo, s_hi)),
                    T.RandomAutocontrast(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD), _Noise()])

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(pil)

        def __getitem__(self, i):
            return tf(pil[i]), int(labels[i])

    loader = torch.utils.data.DataLoader(DS(), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0, pin_memory=dev.type == "cuda")
    model, _ = build_model(model_name, "none", 0)
    model = model.to(dev).train()
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=6e-4)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        train_step(model, opt, x.to(dev, non_blocking=True), y.to(dev, non_blocking=True), False, ORIGINAL)
    return timed(step, 3, steps, dev, batch)


def ours(images: torch.Tensor, labels: torch.Tensor, model_name: str, dev: torch.device, shards: int, batch: int,
         steps: int, variant: str = "eager", fell_back: dict | None = None) -> float:
    """This project's step: device-resident uint8 faces, batched augmentation, S shard models in turn.

    variant: eager (train.py's eager engine), graphed (its graphs engine: one GraphStep per shard),
    graphed_fold (all shards' steps in one CUDA graph), compiled (torch.compile reduce-overhead).
    A graphed variant whose capture fails runs eagerly, as train.py does; `fell_back[variant]` then
    says why, so the number is never reported as a graph's."""
    amp = dev.type == "cuda"
    gen = torch.Generator(device=dev).manual_seed(0)
    capturable = variant in ("graphed", "graphed_fold")
    lr = torch.tensor(ORIGINAL.lr, device=dev) if capturable else None
    models, opts = [], []
    for s in range(shards):
        m, _ = build_model(model_name, "none", s)
        m = m.to(dev, memory_format=torch.channels_last).train()
        models.append(torch.compile(m, mode="reduce-overhead") if variant == "compiled" else m)
        opts.append(make_optimizer(m, ORIGINAL, ORIGINAL.lr, capturable=capturable, lr_tensor=lr))
    n = len(images)

    def draw():
        return torch.randint(n, (batch,), device=dev, generator=gen)

    if variant == "graphed":
        graphs = [GraphStep(m, o, images, labels, batch, augment, gen, ORIGINAL, amp) for m, o in zip(models, opts)]

        def step():
            for g in graphs:
                g(draw())
        rate = timed(step, 3, steps, dev, shards * batch)
        if fell_back is not None and not all(g.capture for g in graphs):
            fell_back[variant] = "GraphStep's capture failed (see the warning); timed eagerly"
        return rate
    elif variant == "graphed_fold":
        bodies = [GraphStep(m, o, images, labels, batch, augment, gen, ORIGINAL, amp, capture=False)
                  for m, o in zip(models, opts)]
        for _ in range(3):                        # warm up (lazy state, cuDNN's choices) on a side stream
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for b in bodies:
                    b(draw())
            torch.cuda.current_stream().wait_stream(side)
        fold_graph = torch.cuda.CUDAGraph()
        fold_graph.register_generator_state(gen)
        for b in bodies:
            b.capture = True                      # inside the graph: no zero_grad, grads are overwritten
            b.optimizer.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(fold_graph):
                for b in bodies:
                    b._body()
        except RuntimeError as e:                 # as GraphStep does: one warning line, then eager bodies
            reason = first_line(e, 200)
            print(f"warning: capturing the fold's graph failed ({reason}); timing the same bodies eagerly", flush=True)
            if fell_back is not None:
                fell_back[variant] = reason
            fold_graph = None
            for b in bodies:
                b.capture = False

        def step():
            for b in bodies:
                b.idx.copy_(draw())
                if fold_graph is None:
                    b._body()
            if fold_graph is not None:
                fold_graph.replay()
    else:
        def step():
            for m, o in zip(models, opts):
                idx = draw()
                train_step(m, o, augment(images[idx], gen), labels[idx], amp, ORIGINAL)
    return timed(step, 3, steps, dev, shards * batch)


def cache_vs_decode(data_dir: Path, cache_dir: Path, size: int, sample: int) -> dict:
    """Seconds per image: decoding the files (one process) versus loading the verified cache."""
    files = sorted(p for p in Path(data_dir).iterdir() if p.is_file())[:sample]
    t = time.perf_counter()
    for f in files:
        _decode((str(f), size))
    decode = (time.perf_counter() - t) / len(files)
    load_faces(data_dir, size, cache_dir, progress=False)          # make sure the cache exists
    t = time.perf_counter()
    faces = load_faces(data_dir, size, cache_dir, progress=False)
    load = (time.perf_counter() - t) / len(faces.table)
    return {"decode_s_per_image": decode, "cache_load_s_per_image": load, "ratio": decode / load,
            "images_in_cache": len(faces.table)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="image sizes in px (default: CPU 32; CUDA 200 128)")
    p.add_argument("--model", default=None, help="default: CPU cnn, CUDA resnet18")
    p.add_argument("--shards", type=int, default=5, help="shard models stepping in turn (default 5)")
    p.add_argument("--batch", type=int, default=128, help="batch per shard model (default 128)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: CPU 4, CUDA 30)")
    p.add_argument("--workers", type=int, default=4, help="original pipeline's DataLoader workers (default 4, the original's)")
    p.add_argument("--faces", type=int, default=4096, help="faces held in memory for the throughput runs (default 4096)")
    p.add_argument("--data_dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--cache_dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--cache_sizes", type=int, nargs="+", default=None, help="sizes for the cache-versus-decode timing (default --sizes)")
    p.add_argument("--decode_sample", type=int, default=2000, help="files decoded to time decoding (default 2000)")
    p.add_argument("--out", type=Path, default=None, help="JSON result (default benchmarks/results/pipeline-<device>-<date>.json)")
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    cuda = dev.type == "cuda"
    sizes = a.sizes or ([200, 128] if cuda else [32])
    model_name = a.model or ("resnet18" if cuda else "cnn")
    steps = a.steps or (30 if cuda else 4)
    name = device_name(dev)
    res = {"device": name, "date": dt.date.today().isoformat(), "torch": torch.__version__, "model": model_name,
           "shards": a.shards, "batch": a.batch, "steps": steps, "workers_original": a.workers, "sizes": {}}
    for size in sizes:
        faces = load_faces(a.data_dir, size, a.cache_dir, progress=False)
        pick = np.random.default_rng(0).choice(len(faces.table), size=min(a.faces, len(faces.table)), replace=False)
        imgs, labels = faces.images[pick], faces.table["age_class"].to_numpy()[pick]
        r = {}
        r["original_img_per_s"] = original_style(imgs, labels, model_name, dev, a.batch, steps, a.workers)
        dimgs = torch.from_numpy(np.ascontiguousarray(imgs)).to(dev)
        dlabels = torch.tensor(labels, device=dev)
        r["ours_img_per_s"] = ours(dimgs, dlabels, model_name, dev, a.shards, a.batch, steps)
        r["ratio_ours_vs_original"] = r["ours_img_per_s"] / r["original_img_per_s"]
        if cuda:
            for key, (shards, batch, variant) in (("graphed", (a.shards, a.batch, "graphed")),
                                                  ("graphed_fold", (a.shards, a.batch, "graphed_fold")),
                                                  ("compiled", (a.shards, a.batch, "compiled")),
                                                  ("ceiling_one_model_batch", (1, a.shards * a.batch, "eager"))):
                try:
                    fell_back = {}
                    r[f"{key}_img_per_s"] = ours(dimgs, dlabels, model_name, dev, shards, batch, steps, variant,
                                                 fell_back)
                    if fell_back:
                        r[f"{key}_fell_back_to_eager"] = fell_back[variant]
                    r[f"ratio_{key}_vs_original"] = r[f"{key}_img_per_s"] / r["original_img_per_s"]
                except Exception as e:   # experimental levers: record why they failed, keep the rest
                    r[f"{key}_error"] = f"{type(e).__name__}: {e}"[:500]
        res["sizes"][str(size)] = r
        print(f"{size}px: " + ", ".join(f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
              flush=True)
    res["cache"] = {}
    for size in a.cache_sizes or sizes:
        c = res["cache"][str(size)] = cache_vs_decode(a.data_dir, a.cache_dir, size, a.decode_sample)
        print(f"cache {size}px: decoding {1e3 * c['decode_s_per_image']:.2f} ms/image, loading the verified cache "
              f"{1e3 * c['cache_load_s_per_image']:.3f} ms/image: {c['ratio']:.0f}x", flush=True)
    out = a.out or PROJECT_ROOT / "benchmarks" / "results" / f"pipeline-{dev.type}-{res['date']}.json"
    write_json(out, res, sort_keys=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
