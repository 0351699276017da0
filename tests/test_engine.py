"""The training core on real faces: pure stages, isolation, empty stages, the graphs engine's CPU
stand-in and partial batches, and checkpoints that either engine loads."""
import contextlib
import copy
import sys
import warnings

import numpy as np
import pytest
import torch

from sisa.data import load_faces
from sisa.engine import (DivergedError, GraphStep, StagePlan, adopt_for_graphs, augmenter, batches_per_epoch,
                         portable_optimizer_state, train_stage)
from sisa.model import build_model
from sisa.recipe import RECIPES, make_optimizer

KEYS = (0, "train", 0, 0, 0)


@pytest.fixture(scope="module")
def data(faces_dir, cache_dir):
    faces = load_faces(faces_dir, 24, cache_dir, progress=False)
    images = torch.from_numpy(np.array(faces.images))                        # a private, writable copy
    labels = torch.tensor(faces.table["age_class"].to_numpy(np.int64))
    return images, labels


def fresh(recipe="strong", model="cnn-max", seed=1):
    m, _ = build_model(model, "none", seed)
    m = m.to(memory_format=torch.channels_last)
    return m, make_optimizer(m, RECIPES[recipe], RECIPES[recipe].lr)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("recipe", ["original", "strong"])
def test_a_stage_is_a_pure_function_of_its_start_and_its_faces(data, recipe):
    images, labels = data
    rows = np.arange(0, 150)
    plan = StagePlan(RECIPES[recipe], RECIPES[recipe].lr, 2, 32)
    runs = []
    for _ in range(2):
        model, opt = fresh(recipe)
        res = train_stage(model, opt, images, labels, rows, plan, KEYS)
        runs.append(weights(model))
    assert same(*runs)
    assert [e["epoch"] for e in res.epochs] == [0, 1] and res.epochs[0]["faces"] == 150
    assert res.schedule == {"kind": RECIPES[recipe].schedule, "step": 2 * 5, "total": 2 * 5}   # 150 / 32: 5 batches
    assert {"order", "augment", "torch"} <= set(res.rng)
    model, opt = fresh(recipe)
    train_stage(model, opt, images, labels, rows, plan, (0, "train", 0, 0, 1))     # another stage's seeds
    assert not same(weights(model), runs[0])


def test_a_stage_sees_only_its_own_faces(data):
    """Isolation: changing every face outside a stage's rows changes nothing it computes."""
    images, labels = data
    rows = np.arange(40, 140)
    plan = StagePlan(RECIPES["strong"], 2e-3, 1, 32)
    model, opt = fresh()
    train_stage(model, opt, images, labels, rows, plan, KEYS)
    other = images.clone()
    outside = np.setdiff1d(np.arange(len(images)), rows)
    other[outside] = 255 - other[outside]
    relabelled = labels.clone()
    relabelled[outside] = (relabelled[outside] + 3) % 7
    model2, opt2 = fresh()
    train_stage(model2, opt2, other, relabelled, rows, plan, KEYS)
    assert same(weights(model), weights(model2))


def test_a_stage_without_faces_keeps_the_weights_it_starts_from(data):
    images, labels = data
    model, opt = fresh()
    before = weights(model)
    res = train_stage(model, opt, images, labels, np.array([], dtype=np.int64),
                      StagePlan(RECIPES["strong"], 2e-3, 3, 32), KEYS)
    assert same(before, weights(model)) and res.epochs == [] and res.schedule["step"] == 0 and not opt.state


@pytest.mark.parametrize("n", [96, 101, 97])   # whole batches; a partial last batch; a trailing one joined
def test_the_graphs_engines_step_equals_the_eager_step_including_the_partial_batch(data, n):
    """On a CPU the graphs engine cannot capture; GraphStep(capture=False) runs the captured body
    (static index buffer, prior buffer, in-graph loss sums) eagerly, so everything but the capture
    itself is checked here, bit for bit, including the eager partial batch that follows it."""
    images, labels = data
    rows = np.arange(10, 10 + n)
    plan = StagePlan(RECIPES["strong"], 2e-3, 2, 32, precision="fp32")
    eager_model, eager_opt = fresh()
    eager = train_stage(eager_model, eager_opt, images, labels, rows, plan, KEYS)
    model, opt = fresh()
    graphs = {"step": GraphStep(model, opt, images, labels, 32, augmenter(RECIPES["strong"], True), torch.Generator(),
                                RECIPES["strong"], False, capture=False)}
    res = train_stage(model, opt, images, labels, rows, StagePlan(RECIPES["strong"], 2e-3, 2, 32, engine="graphs", precision="fp32"),
                      KEYS, graphs=graphs)
    assert same(weights(eager_model), weights(model))
    assert [e["loss"] for e in res.epochs] == pytest.approx([e["loss"] for e in eager.epochs], rel=1e-6)
    assert [e["train_acc"] for e in res.epochs] == [e["train_acc"] for e in eager.epochs]
    assert batches_per_epoch(n, 32) == res.schedule["step"] // 2


def test_checkpoints_of_either_engine_load_in_the_other(data):
    images, labels = data
    model, opt = fresh()
    train_stage(model, opt, images, labels, np.arange(64), StagePlan(RECIPES["strong"], 2e-3, 1, 32), KEYS)
    eager_state = copy.deepcopy(portable_optimizer_state(opt))   # a snapshot, as a checkpoint file holds
    # the graphs engine's optimizer: capturable, its rate in a tensor (constructible on a CPU)
    graph_opt = make_optimizer(model, RECIPES["strong"], 2e-3, capturable=True, lr_tensor=torch.tensor(2e-3))
    graph_opt.load_state_dict(copy.deepcopy(eager_state))
    adopt_for_graphs(graph_opt, torch.tensor(2e-3))
    assert all(g["capturable"] and isinstance(g["lr"], torch.Tensor) for g in graph_opt.param_groups)
    back = copy.deepcopy(portable_optimizer_state(graph_opt))   # what a graphs-engine checkpoint holds
    # the same groups (the rate as a float again: the float32 tensor's value, used by no later stage)
    assert [dict(g, params=None, lr=None) for g in back["param_groups"]] == \
        [dict(g, params=None, lr=None) for g in eager_state["param_groups"]]
    assert [g["lr"] for g in back["param_groups"]] == pytest.approx([2e-3, 2e-3]) and \
        all(type(g["lr"]) is float for g in back["param_groups"])
    for k, st in eager_state["state"].items():
        assert all(torch.equal(st[n], back["state"][k][n]) for n in st)
        assert back["state"][k]["step"].device.type == "cpu" and not back["param_groups"][0]["capturable"]
    # and an eager optimizer continues from it exactly as from its own state
    a, b = fresh(), fresh()
    for m, o, state in ((a[0], a[1], eager_state), (b[0], b[1], back)):
        m.load_state_dict(model.state_dict())
        o.load_state_dict(state)
        train_stage(m, o, images, labels, np.arange(64, 128), StagePlan(RECIPES["strong"], 2e-3, 1, 32), KEYS)
    assert same(weights(a[0]), weights(b[0]))


def test_a_diverging_stage_raises(data):
    images, labels = data
    model, opt = fresh("original", "cnn")
    with warnings.catch_warnings(), pytest.raises(DivergedError):
        warnings.simplefilter("ignore")
        train_stage(model, opt, images, labels, np.arange(100), StagePlan(RECIPES["original"], 1e30, 2, 32), KEYS)


@contextlib.contextmanager
def python_data_forbidden():
    """torch.tensor and torch.as_tensor of Python data raise when sisa's code calls them: the host-to-
    device copy that CUDA graph capture forbids ("Cannot copy between CPU and CUDA tensors during CUDA
    graph capture"), which a CPU run cannot otherwise see. PyTorch's own calls (the optimizer's) pass."""
    def guard(real):
        def call(data, *args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("sisa") and not isinstance(data, torch.Tensor):
                raise RuntimeError(f"{caller} made a tensor from Python data inside the captured step")
            return real(data, *args, **kwargs)
        return call
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "tensor", guard(torch.tensor))
        mp.setattr(torch, "as_tensor", guard(torch.as_tensor))
        yield


@pytest.mark.parametrize("recipe", ["original", "strong"])
def test_the_captured_step_makes_no_tensor_from_python_data(data, recipe):
    """Every recipe's graphs-engine body (indexing, augmentation, normalisation, forward, loss,
    backward, step) reads only tensors made before capture (GraphStep makes its constants up front)."""
    images, labels = data
    model, opt = fresh(recipe)
    step = GraphStep(model, opt, images, labels, 32, augmenter(RECIPES[recipe], True), torch.Generator(),
                     RECIPES[recipe], False, capture=False)
    with python_data_forbidden():
        step(torch.arange(32))
        step(torch.arange(32, 64))
    assert torch.isfinite(step.loss_sum) and step.loss_sum > 0


def test_a_failed_capture_falls_back_to_eager_with_one_warning(data):
    """When capture fails (here: no GPU at all), the step warns once and trains eagerly, from the
    state it had before the attempt: the stage equals the eager engine's bit for bit."""
    images, labels = data
    rows, plan = np.arange(10, 106), StagePlan(RECIPES["strong"], 2e-3, 2, 32, precision="fp32")
    eager_model, eager_opt = fresh()
    eager = train_stage(eager_model, eager_opt, images, labels, rows, plan, KEYS)
    model, opt = fresh()
    graphs = {"step": GraphStep(model, opt, images, labels, 32, augmenter(RECIPES["strong"], True), torch.Generator(),
                                RECIPES["strong"], False, capture=True)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train_stage(model, opt, images, labels, rows, StagePlan(RECIPES["strong"], 2e-3, 2, 32, engine="graphs", precision="fp32"),
                          KEYS, graphs=graphs)
    capture_warnings = [w for w in caught if "capture failed" in str(w.message)]
    assert len(capture_warnings) == 1 and "trains eagerly" in str(capture_warnings[0].message)
    assert same(weights(eager_model), weights(model))
    assert [e["train_acc"] for e in res.epochs] == [e["train_acc"] for e in eager.epochs]


def test_bf16_autocast_is_reproducible_and_really_used(data):
    """A bf16 stage is a pure function of its start and faces, as fp32 is, and it computes other numbers
    (bf16 is used, not silently fp32). Emulated on CPUs without bf16 instructions: the same numbers."""
    images, labels = data
    rows = np.arange(0, 96)
    out = {}
    for precision in ("bf16", "bf16", "fp32"):
        model, opt = fresh()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_stage(model, opt, images, labels, rows, StagePlan(RECIPES["strong"], 2e-3, 1, 32, precision=precision),
                        KEYS)
        out.setdefault(precision, []).append(weights(model))
    assert same(*out["bf16"])
    assert not same(out["bf16"][0], out["fp32"][0])
