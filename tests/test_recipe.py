"""Recipes: the schedules as pure functions, the loss, the optimizer groups, and how a config names them."""
import math

import pytest
import torch
import torch.nn.functional as F

from sisa.config import RunConfig
from sisa.model import build_model
from sisa.recipe import RECIPES, get_recipe, log_prior, loss_fn, lr_at, make_optimizer, param_groups


def test_the_original_step_schedule_is_torchs_multisteplr_bit_for_bit():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=6e-4)
    for group in opt.param_groups:
        group["initial_lr"] = 6e-4
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [6, 9, 12], gamma=0.2)
    for epoch in range(15):
        assert lr_at(RECIPES["original"], 6e-4, 15, 7, epoch, 3) == sched.get_last_lr()[0]   # exactly equal
        opt.step()
        sched.step()


def test_one_cycle_rises_to_the_peak_then_anneals():
    r, lr, epochs, per = RECIPES["strong"], 2e-3, 6, 10
    rates = [lr_at(r, lr, epochs, per, e, b) for e in range(epochs) for b in range(per)]
    warm = round(0.25 * 60)
    assert rates[0] == pytest.approx(lr / 25)
    assert rates[warm] == pytest.approx(lr) and max(rates) == pytest.approx(lr)
    assert all(a < b for a, b in zip(rates[:warm], rates[1:warm + 1]))          # rising
    assert all(a >= b for a, b in zip(rates[warm:], rates[warm + 1:]))         # then falling
    assert rates[-1] < lr / 25 / 100                                            # nearly zero at the end
    # a pure function: the same stage gives the same rates, whatever ran before
    assert rates == [lr_at(r, lr, epochs, per, e, b) for e in range(epochs) for b in range(per)]


def test_logit_adjusted_loss_is_cross_entropy_of_shifted_logits():
    y = torch.tensor([0, 0, 0, 1, 3])
    prior = log_prior(y, 7)
    counts = torch.tensor([4.0, 2, 1, 2, 1, 1, 1])                   # plus one each: no class has log 0
    assert torch.allclose(prior, (counts / counts.sum()).log()) and torch.isfinite(prior).all()
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    r = RECIPES["strong"]
    expected = F.cross_entropy(logits + r.logit_adjust * prior, y, label_smoothing=0.1)
    assert torch.allclose(loss_fn(logits, y, r, prior), expected)
    assert torch.allclose(loss_fn(logits, y, RECIPES["original"], None), F.cross_entropy(logits, y, label_smoothing=0.1))
    # the adjustment pushes the model towards the rare classes: a face of a rare class costs more
    rare, common = torch.tensor([6]), torch.tensor([0])
    flat = torch.zeros(1, 7)
    assert loss_fn(flat, rare, r, prior) > loss_fn(flat, common, r, prior)


def test_weight_decay_only_on_weights_and_the_right_optimizers():
    model, _ = build_model("cnn-max", "none", 0)
    decay, free = param_groups(model, 5e-4)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in free["params"])
    assert len(decay["params"]) + len(free["params"]) == len(list(model.parameters()))
    assert free["weight_decay"] == 0.0
    assert type(make_optimizer(model, RECIPES["strong"], 2e-3)) is torch.optim.AdamW
    adam = make_optimizer(model, RECIPES["original"], 6e-4)
    assert type(adam) is torch.optim.Adam and len(adam.param_groups) == 1 and adam.param_groups[0]["weight_decay"] == 0


def test_the_config_names_the_recipe_and_resolves_its_learning_rate():
    assert RunConfig().recipe == "original" and RunConfig().lr == 6e-4
    assert RunConfig(recipe="strong").lr == 2e-3 and RunConfig(recipe="strong", lr=1e-3).lr == 1e-3
    strong = RunConfig(recipe="strong", training_seed=2)
    assert RunConfig.from_dict(strong.to_dict()) == strong
    # a config.json written before recipes and training seeds existed still loads, as the original recipe
    old = {k: v for k, v in RunConfig().to_dict().items() if k not in ("recipe", "training_seed")}
    assert RunConfig.from_dict(old) == RunConfig()
    with pytest.raises(Exception, match="--recipe 'fancy'"):
        RunConfig(recipe="fancy").validate()
    with pytest.raises(Exception, match="--recipe 'fancy'"):
        get_recipe("fancy")


def test_training_seeds_change_only_training_streams():
    base, other = RunConfig(seed=3), RunConfig(seed=3, training_seed=1)
    assert base.stage_keys(1, 2, 0) == (3, "train", 1, 2, 0)            # the keys runs were always made with
    assert base.init_keys(1, 2) == (3, "init", 1, 2)
    assert other.stage_keys(1, 2, 0) != base.stage_keys(1, 2, 0) and other.init_keys(1, 2) != base.init_keys(1, 2)
    assert RunConfig(seed=3, training_seed=2).stage_keys(1, 2, 0) != other.stage_keys(1, 2, 0)
    assert math.isclose(other.lr, base.lr)
