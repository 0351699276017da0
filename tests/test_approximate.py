"""Approximate unlearning methods on a tiny real monolith: each changes the model within its budget,
is a pure function of its inputs, never reads a test face, and a diverged method says so."""
import numpy as np
import pytest
import torch

from sisa import approximate
from sisa.config import RunConfig
from sisa.experiment import Options, prepare
from sisa.recipe import get_recipe
from sisa.training import Trainer, train_run

CFG = dict(num_shards=1, num_slices=1, folds=1, epochs=1, image_size=24, model="cnn", test_per_cell=2, test_random=10,
           strategy="random-balanced", recipe="strong")


@pytest.fixture(scope="module")
def monolith(faces_dir, cache_dir, tmp_path_factory):
    opts = Options(data_dir=faces_dir, cache_dir=cache_dir, checkpoints_dir=tmp_path_factory.mktemp("mono"),
                   progress=False, device="cpu")
    exp = prepare(RunConfig(**CFG), opts)
    train_run(exp, opts)
    return exp, Trainer(exp, Options(device="cpu", progress=False))


def rows(exp):
    p = exp.partitions[0]
    train = np.flatnonzero((p["role"] == "train").to_numpy())
    test = np.flatnonzero((p["role"] == "test").to_numpy())
    return train[20:], train[:20], test          # retained, forget (20 faces), test


def unlearned(trainer, exp, method, images=None, labels=None):
    state = trainer.restore(0, 0, 0)
    retain, forget, _ = rows(exp)
    facts = approximate.apply(state.model, trainer.images if images is None else images,
                              trainer.labels if labels is None else labels, retain, forget, method,
                              get_recipe("strong"), exp.cfg.epochs, (0, 0))
    return state.model, facts


@pytest.mark.slow
@pytest.mark.parametrize("name", approximate.METHODS)
def test_each_method_changes_the_model_within_its_budget_and_never_reads_a_test_face(monolith, name):
    exp, trainer = monolith
    method = approximate.Method(name, lr=1e-3, budget=0.2, batch_size=32)
    before = trainer.restore(0, 0, 0).model.state_dict()
    model, facts = unlearned(trainer, exp, method)
    assert not facts["diverged"] and facts["image_steps"] >= facts["budget_image_steps"] > 0
    assert facts["image_steps"] < facts["budget_image_steps"] + 2 * 32
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # test faces scrambled and labelled with a class that does not exist: a method reading one would
    # fail (label 99) or end elsewhere (pixels); the result is bit for bit the same
    _, _, test = rows(exp)
    images, labels = trainer.images.clone(), trainer.labels.clone()
    images[torch.as_tensor(test)] = torch.randint(0, 256, images[torch.as_tensor(test)].shape, dtype=torch.uint8)
    labels[torch.as_tensor(test)] = 99
    again, _ = unlearned(trainer, exp, method, images, labels)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_a_diverged_method_is_reported_not_hidden(monolith):
    exp, trainer = monolith
    _, facts = unlearned(trainer, exp, approximate.Method("neggrad", lr=1e30, budget=0.5, batch_size=32, alpha=0.0))
    assert facts["diverged"] and facts["at_step"] >= 0 and facts["final_loss"] is None


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="choose from finetune, neggrad, random-label, scrub"):
        approximate.apply(None, torch.zeros(1), torch.zeros(1), np.arange(1), np.arange(1),
                          approximate.Method("forget-harder", lr=1.0), get_recipe("strong"), 1, (0,))


@pytest.mark.slow
def test_learning_rates_are_chosen_on_a_validation_split_of_training_faces(monolith, tmp_path):
    """tuning.tune: a stratified validation split of fold 0's training faces, a grid per method, the
    candidate nearest the tuning target chosen; test faces never read (scrambled, the same choice)."""
    from sisa import tuning
    exp, trainer = monolith
    part = exp.partitions[0]
    a, v = tuning.split(part, 0)
    train = set(np.flatnonzero((part["role"] == "train").to_numpy()))
    assert set(a) | set(v) == train and not set(a) & set(v)
    assert len(v) == pytest.approx(tuning.VALIDATION_SHARE * len(train), abs=12)     # rounded per race x age cell

    def tune(images=None, labels=None):
        t = Trainer(exp, Options(device="cpu", progress=False))
        if images is not None:
            t.images, t.labels = images, labels
        return tuning.tune(exp, t, ["random"], 0.2, ["finetune", "neggrad"], 0, tmp_path / "m.jsonl", say=lambda _: None)

    got = tune()
    entry = got["scenarios"]["random"]
    assert entry["forget_faces"] > 0 and set(entry["target"]) == set(tuning.MEASURES)
    for m in ("finetune", "neggrad"):
        cands = entry["methods"][m]["candidates"]
        assert [c["lr"] for c in cands] == tuning.grid(m)
        best = min(c["average_gap"] for c in cands)
        assert entry["methods"][m]["lr"] in tuning.grid(m)
        assert [c["average_gap"] for c in cands if c["lr"] == entry["methods"][m]["lr"]] == [best]
    assert tuning.chosen(got, "random", "neggrad", 32).lr == entry["methods"]["neggrad"]["lr"]
    assert tuning.missing(got, ["random", "group:black"], ["finetune"]) == [("group:black", "finetune")]
    test = torch.as_tensor(np.flatnonzero((part["role"] == "test").to_numpy()))
    images, labels = trainer.images.clone(), trainer.labels.clone()
    images[test] = torch.randint(0, 256, images[test].shape, dtype=torch.uint8)
    labels[test] = 99
    again = tune(images, labels)["scenarios"]["random"]
    assert again["methods"] == entry["methods"] and again["target"] == entry["target"]


@pytest.mark.slow
def test_unlearn_py_forgets_approximately_and_leaves_the_run_as_it_was(monolith, tmp_path):
    """unlearn.py --method: a summary of the method's model; the run's checkpoints untouched; a SISA run,
    or --method without --forget, is one clear line."""
    from helpers import call_script, error_line, run_script
    exp, _ = monolith
    before = {p: p.read_bytes() for p in exp.layout.root.rglob("*.pt")}
    out = run_script("unlearn.py", "--run_dir", exp.layout.root, "--scenario", "random", "--forget", 0.2,
                     "--method", "finetune", "--summaries_dir", tmp_path, "--device", "cpu").stdout
    name = f"{exp.cfg.name}-random-finetune-forget20"
    assert f"finetune forgot random at 0.2 from {exp.cfg.name}" in out and "the run is unchanged" in out
    for suffix in ("predictions.csv", "features.npz", "info.json", "tuning.json"):
        assert (tmp_path / f"{name}-{suffix}").stat().st_size > 0
    assert {p: p.read_bytes() for p in exp.layout.root.rglob("*.pt")} == before
    again = call_script("unlearn.py", "--run_dir", exp.layout.root, "--scenario", "random", "--forget", 0.2,
                        "--method", "finetune", "--summaries_dir", tmp_path, "--device", "cpu")
    assert again.returncode != 0 and f"summary {name} exists already" in error_line(again)
    alone = call_script("unlearn.py", "--run_dir", exp.layout.root, "--method", "scrub")
    assert alone.returncode != 0 and "--method goes with --forget VOLUME" in error_line(alone)
