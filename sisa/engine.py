"""The training core: one slice stage of one model, with no files, folders or run attached.

    result = train_stage(model, optimizer, images, labels, rows, StagePlan(...), keys)

Images (N, H, W, 3) uint8 and labels (N,) live on the training device; a stage is a set of row
indices into them. Every random choice of a stage (batch order, augmentation, dropout) is seeded
from `keys` (the run's seed, fold, shard and slice), and the schedule restarts with every stage, so
a stage is a pure function of its starting model and optimizer state and its faces: a resumed run,
and a shard retrained after unlearning, follow exactly the path an uninterrupted run from scratch
would take. The run-folder code (training.py) and the benchmarks both call this.

Engines (how a step runs, never what it computes):
  eager   every step launched from Python (the CPU path: exact, bit-reproducible)
  graphs  CUDA only: a shard model's full-batch step (indexing, augmentation, forward, backward,
          optimizer step) is captured once as a CUDA graph and replayed, its inputs written into
          static buffers; the learning rate lives in a device tensor, Adam(W) is capturable, the
          augmentation generator is registered with the graph so its draws stay seeded, and the
          last partial batch of an epoch runs eagerly on the same model. Checkpoints are the same
          for both engines (`portable_optimizer_state`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .augment import augment, flip_shift, prepare_augment_constants, shift_pixels
from .data import AGE_CLASSES
from .device import resolve_precision
from .errors import first_line
from .inputs import normalisation, to_input
from .recipe import Recipe, log_prior, loss_fn, lr_at
from .seeding import torch_seed

NUM_CLASSES = len(AGE_CLASSES)


@dataclass(frozen=True)
class StagePlan:
    """What one stage computes, besides its faces."""
    recipe: Recipe
    lr: float
    epochs: int
    batch_size: int
    augment: bool = True
    engine: str = "eager"
    precision: str = "auto"      # fp32 | bf16 (autocast) | auto: bf16 where the device has it in hardware


@dataclass
class StageResult:
    epochs: list[dict] = field(default_factory=list)   # one record per epoch: epoch, lr, loss, train_acc, ...
    rng: dict = field(default_factory=dict)             # generator states at the end of the stage
    schedule: dict = field(default_factory=dict)        # the recipe's schedule and the step it reached
    seconds: float = 0.0


class DivergedError(ArithmeticError):
    """A stage's mean loss over an epoch was not finite."""

    def __init__(self, epoch: int, loss: float):
        super().__init__(f"loss {loss} in epoch {epoch}")
        self.epoch, self.loss = epoch, loss


def batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A random epoch order cut into batches; a trailing batch of one face joins the previous one
    (BatchNorm cannot normalise a batch of one)."""
    perm = torch.randperm(n, generator=gen)
    cuts = list(perm.split(size))
    if len(cuts) > 1 and len(cuts[-1]) == 1:
        cuts[-2:] = [torch.cat(cuts[-2:])]
    return cuts


def batches_per_epoch(n: int, size: int) -> int:
    full, rest = divmod(n, size)
    return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)


def augmenter(recipe: Recipe, enabled: bool) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """(B,H,W,3) uint8, generator -> model input: the recipe's augmentation, or plain normalisation."""
    if not enabled:
        return lambda batch, gen: to_input(batch)
    if recipe.augmentation == "original":
        return augment
    return lambda batch, gen: flip_shift(batch, gen, shift_pixels(batch.shape[1], recipe.shift))


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)      # CUDA graphs read the learning rate from this tensor
        else:
            group["lr"] = value


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               amp: bool, recipe: Recipe, prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch (B, 3, H, W) -> (loss, logits (B, 7))."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    loss = loss_fn(logits, y, recipe, prior)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def prepare_constants(device: torch.device, dtype: torch.dtype = torch.float32) -> None:
    """Make every constant tensor the training step reads (normalisation, augmentation) on `device`,
    before any CUDA graph capture: inside one, making them would be a forbidden host-to-device copy."""
    normalisation(device, dtype)
    prepare_augment_constants(device, dtype)


def stage_precision(plan: StagePlan, device: torch.device) -> str:
    """The plan's precision, "auto" resolved for `device` (callers with a run resolve it once, with its record)."""
    return plan.precision if plan.precision in ("fp32", "bf16") else resolve_precision(plan.precision, device)


def stage_generators(keys: tuple, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """The stage's batch-order generator (CPU) and augmentation generator (on the device); seeds
    torch's global generators for dropout, which nn.Dropout draws from and cannot be handed one."""
    order_gen = torch.Generator().manual_seed(torch_seed(*keys, "order"))
    aug_gen = torch.Generator(device=device).manual_seed(torch_seed(*keys, "augment"))
    torch.manual_seed(torch_seed(*keys, "dropout"))
    return order_gen, aug_gen


def train_stage(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                labels: torch.Tensor, rows: np.ndarray, plan: StagePlan, keys: tuple,
                on_batch: Callable[[int], None] | None = None, on_epoch: Callable[[dict], None] | None = None,
                graphs: dict | None = None) -> StageResult:
    """Train `model` in place on `rows` of images/labels for one stage; raise DivergedError on a
    non-finite epoch loss. A stage without faces (all forgotten) trains nothing: the model and
    optimizer keep the state they started from.

    `on_batch(faces)` and `on_epoch(record)` report progress. `graphs`: a dict the caller keeps per
    model for the graphs engine (a captured step is reused by the model's later stages)."""
    dev = images.device
    amp = stage_precision(plan, dev) == "bf16"
    recipe, n = plan.recipe, len(rows)
    order_gen, aug_gen = stage_generators(keys, dev)
    result = StageResult(schedule={"kind": recipe.schedule, "step": 0, "total": 0})
    started = time.perf_counter()
    if n == 0:
        result.rng = rng_states(order_gen, aug_gen, dev)
        return result
    aug = augmenter(recipe, plan.augment)
    rows_t = torch.as_tensor(rows, device=dev)
    prior = log_prior(labels[rows_t], NUM_CLASSES) if recipe.logit_adjust else None
    per_epoch = batches_per_epoch(n, plan.batch_size)
    graph = None
    if plan.engine == "graphs" and graphs is not None and n >= plan.batch_size:
        graph = graphs.get("step")
        if graph is None:
            graph = graphs["step"] = GraphStep(model, optimizer, images, labels, plan.batch_size, aug, aug_gen,
                                               recipe, amp)
        graph.bind(aug_gen, prior)
        aug_gen = graph.aug_gen            # the graph's registered generator now carries this stage's stream
    model.train()
    step = 0
    for epoch in range(plan.epochs):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        if graph is not None:
            graph.reset_sums()
        cuts = batches(n, plan.batch_size, order_gen)
        # one host-to-device copy per epoch: a copy per batch would make the host wait for the GPU
        order = rows_t[torch.cat(cuts).to(dev)].split([len(c) for c in cuts])
        first_lr = None
        for b, idx in enumerate(order):
            rate = lr_at(recipe, plan.lr, plan.epochs, per_epoch, epoch, b)
            first_lr = rate if first_lr is None else first_lr
            set_lr(optimizer, rate)
            if graph is not None and len(idx) == plan.batch_size:
                graph(idx)
            else:
                x, y = aug(images[idx], aug_gen), labels[idx]
                loss, logits = train_step(model, optimizer, x, y, amp, recipe, prior)
                loss_sum += loss.detach() * len(idx)     # no .item() per batch: no host sync
                correct += (logits.argmax(1) == y).sum()
            step += 1
            if on_batch is not None:
                on_batch(len(idx))
        if graph is not None:
            loss_sum += graph.loss_sum
            correct += graph.correct
        mean_loss = loss_sum.item() / n
        if not math.isfinite(mean_loss):
            raise DivergedError(epoch, mean_loss)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "lr": first_lr, "loss": mean_loss, "train_acc": correct.item() / n,
                  "faces": n, "seconds": seconds, "images_per_s": n / seconds}
        result.epochs.append(record)
        if on_epoch is not None:
            on_epoch(record)
    result.schedule = {"kind": recipe.schedule, "step": step, "total": plan.epochs * per_epoch}
    result.rng = rng_states(order_gen, aug_gen, dev)
    result.seconds = time.perf_counter() - started
    return result


def rng_states(order_gen: torch.Generator, aug_gen: torch.Generator, dev: torch.device) -> dict:
    states = {"order": order_gen.get_state(), "augment": aug_gen.get_state(), "torch": torch.get_rng_state()}
    if dev.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(dev)
    return states


# ---- checkpoints are the same for both engines -------------------------------------------------
def portable_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state dict as the eager engine writes it: learning rates as floats, steps on
    the CPU, not capturable. A checkpoint from either engine loads in the other."""
    sd = optimizer.state_dict()
    groups = []
    for g in sd["param_groups"]:
        g = dict(g)
        if isinstance(g.get("lr"), torch.Tensor):
            g["lr"] = float(g["lr"])
        if g.get("capturable"):
            g["capturable"] = False
        groups.append(g)
    state = {k: {n: (v.detach().to("cpu", torch.float32) if n == "step" and isinstance(v, torch.Tensor) else v)
                 for n, v in s.items()} for k, s in sd["state"].items()}
    return {"state": state, "param_groups": groups}


def adopt_for_graphs(optimizer: torch.optim.Optimizer, lr_tensor: torch.Tensor) -> None:
    """After load_state_dict: make the optimizer capturable again, reading its rate from `lr_tensor`."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        group["lr"] = lr_tensor
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st and "step" in st:
                st["step"] = st["step"].to(p.device, torch.float32)


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create Adam(W)'s state as its first step would (zero moments, step 0), so that it exists before
    a CUDA graph is captured and can be saved and restored around the capture's warm-up."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state[p]
            if not st:
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class GraphStep:
    """One model's full-batch training step as a CUDA graph (the graphs engine).

    Static buffers: the batch's row indices, the class prior and the loss/accuracy sums; the images,
    labels, parameters, optimizer state and learning-rate tensor are read in place. Capture needs a
    warm-up (cuDNN's choices, lazily allocated state), which would be real training: the model, the
    optimizer and the generators are saved before it and restored after, so the first replay starts
    exactly where the eager engine would. `capture=False` runs the same body eagerly (a test of the
    buffers and the partial-batch path on machines without CUDA)."""

    WARMUP_STEPS = 3

    def __init__(self, model, optimizer, images, labels, batch_size, aug, aug_gen, recipe, amp, capture=None):
        dev = images.device
        self.model, self.optimizer, self.images, self.labels = model, optimizer, images, labels
        self.aug, self.aug_gen, self.recipe, self.amp, self.batch_size = aug, aug_gen, recipe, amp, batch_size
        self.capture = dev.type == "cuda" if capture is None else capture
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=dev)
        self.prior = torch.zeros(NUM_CLASSES, device=dev)
        self.use_prior = bool(recipe.logit_adjust)
        self.loss_sum = torch.zeros((), device=dev)
        self.correct = torch.zeros((), dtype=torch.long, device=dev)
        self.graph, self._saved = None, None
        prepare_constants(dev)         # the body only reads constants made now, outside any capture

    def bind(self, aug_gen: torch.Generator, prior: torch.Tensor | None) -> None:
        """Start a stage: the step's own generator (the one a graph registers) takes over the stage's
        augmentation stream, and the class prior buffer gets the stage's prior."""
        if prior is not None:
            self.prior.copy_(prior)
        if aug_gen is not self.aug_gen:
            self.aug_gen.set_state(aug_gen.get_state())

    def reset_sums(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def _body(self) -> None:
        x, y = self.aug(self.images[self.idx], self.aug_gen), self.labels[self.idx]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            logits = self.model(x)
        loss = loss_fn(logits, y, self.recipe, self.prior if self.use_prior else None)
        if not self.capture:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach() * self.batch_size
        self.correct += (logits.argmax(1) == y).sum()

    def _save(self) -> None:
        """Keep copies of the model, optimizer and generator states (capture's warm-up trains)."""
        self._saved = ({k: v.detach().clone() for k, v in self.model.state_dict().items()},
                       {id(p): {k: v.detach().clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
                        for p, s in self.optimizer.state.items()},
                       self.aug_gen.get_state(),
                       torch.cuda.get_rng_state(self.images.device) if self.images.is_cuda else None)

    @torch.no_grad()
    def _restore(self) -> None:
        """Put back what _save kept, in place (the graph reads these addresses)."""
        model, opt, gen_state, cuda_state = self._saved
        for k, v in self.model.state_dict().items():
            v.copy_(model[k])
        for p, s in self.optimizer.state.items():
            for k, v in s.items():
                if isinstance(v, torch.Tensor):
                    v.copy_(opt[id(p)][k])
        self.aug_gen.set_state(gen_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, self.images.device)

    def _capture(self) -> None:
        init_optimizer_state(self.optimizer)
        self._save()
        self.idx.copy_(torch.arange(self.batch_size, device=self.idx.device) % len(self.images))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        self._restore()                                # undo the warm-up
        self.graph = torch.cuda.CUDAGraph()
        self.graph.register_generator_state(self.aug_gen)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self._body()
        self.reset_sums()
        self._saved = None

    def __call__(self, idx: torch.Tensor) -> None:
        if self.capture and self.graph is None:
            try:
                self._capture()
            except RuntimeError as e:   # a body this PyTorch or GPU cannot capture: train eagerly instead
                self._fall_back(e)
        self.idx.copy_(idx)
        if not self.capture:
            self._body()
            return
        self.graph.replay()

    def _fall_back(self, error: RuntimeError) -> None:
        """After a failed capture: the model, optimizer and generators as they were before it, and
        the same body run eagerly from now on (one warning line)."""
        import warnings
        warnings.warn(f"CUDA graph capture failed ({first_line(error, 160)}); this shard model trains eagerly")
        if self._saved is not None:
            self._restore()
        self.graph, self.capture, self._saved = None, False, None
        self.reset_sums()        # the warm-up added to the sums; the first call of a stage comes before any other
        self.reset_sums()
