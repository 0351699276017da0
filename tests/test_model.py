"""The age classifiers: shapes, seeded initialisation, the frozen stem, and every kind of `weights`."""
import hashlib
import socket
import warnings

import pytest
import torch
import torchvision

from sisa.model import NUM_CLASSES, build_model, trainable_parameters


@pytest.fixture(scope="module")
def torchvision_sd(tmp_path_factory):
    """A torchvision ResNet-18 state dict on disk, standing in for the ImageNet weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        sd = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(sd, path)
    return path, sd


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


@pytest.mark.parametrize("name", ["resnet18", "cnn"])
@pytest.mark.parametrize("px", [32, 64])
def test_output_shape(name, px):
    model, used = build_model(name, "none", seed=0)
    assert used == "none"
    x = torch.randn(2, 3, px, px).contiguous(memory_format=torch.channels_last)
    assert model(x).shape == (2, NUM_CLASSES)
    assert model.eval()(x).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", ["resnet18", "cnn"])
def test_seed_decides_the_parameters_and_leaves_global_rng_alone(name):
    state = torch.get_rng_state()
    a, b, c = (params(build_model(name, "none", seed=s)[0]) for s in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_stem_trains_without_pretrained_weights():
    model, _ = build_model("resnet18", "none", seed=0)
    assert len(trainable_parameters(model)) == len(list(model.parameters()))
    assert model.train().bn1.training


def test_stem_is_frozen_and_bn1_stays_in_eval(torchvision_sd):
    model, _ = build_model("resnet18", str(torchvision_sd[0]), seed=0)
    stem = [*model.conv1.parameters(), *model.bn1.parameters()]
    assert not any(p.requires_grad for p in stem)
    trainable = trainable_parameters(model)
    assert len(trainable) == len(list(model.parameters())) - len(stem)
    assert all(p.requires_grad for p in trainable)

    model.train()
    assert not model.bn1.training and model.layer1[0].bn1.training and model.fc.training
    stem_stats = model.bn1.running_mean.clone()
    layer_stats = model.layer1[0].bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, stem_stats)
    assert not torch.equal(model.layer1[0].bn1.running_mean, layer_stats)


def test_torchvision_weights_fill_all_but_layer4_and_head(torchvision_sd):
    path, sd = torchvision_sd
    model, used = build_model("resnet18", str(path), seed=0)
    assert used == "file:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    got = params(model)
    for k, v in sd.items():
        if k.startswith(("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")):
            assert torch.equal(got[k], v), k
    # layer4 is fresh: not the file's, but exactly what random initialisation with this seed gives.
    fresh = params(build_model("resnet18", "none", seed=0)[0])
    layer4 = [k for k in sd if k.startswith("layer4.") and sd[k].dim() == 4]  # conv weights (BN starts at 1)
    assert layer4 and not any(torch.equal(got[k], sd[k]) for k in layer4)
    assert all(torch.equal(got[k], fresh[k]) for k in got if k.startswith(("layer4.", "fc.")))


def test_torchvision_weights_without_num_batches_tracked(torchvision_sd, tmp_path):
    # The hub's resnet18-f37072fd.pth predates BatchNorm's num_batches_tracked buffer.
    _, sd = torchvision_sd
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, path)
    model, _ = build_model("resnet18", str(path), seed=0)
    assert torch.equal(model.layer2[0].conv1.weight, sd["layer2.0.conv1.weight"])


@pytest.mark.parametrize("name", ["resnet18", "cnn"])
def test_full_state_dict_round_trip(name, tmp_path):
    model, _ = build_model(name, "none", seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # differ from any fresh initialisation
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    loaded, used = build_model(name, str(path), seed=2)
    assert used.startswith("file:") and len(used) == len("file:") + 16
    a, b = params(model), params(loaded)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_clear_errors(tmp_path, torchvision_sd):
    with pytest.raises(ValueError, match="resnet18, cnn"):
        build_model("vgg", "none", seed=0)
    with pytest.raises(ValueError, match="nope.pth"):
        build_model("resnet18", str(tmp_path / "nope.pth"), seed=0)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("cnn", "imagenet", seed=0)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        build_model("resnet18", str(garbage), seed=0)
    with pytest.raises(ValueError, match="cnn model"):  # a ResNet state dict is not a cnn one
        build_model("cnn", str(torchvision_sd[0]), seed=0)
    bad = dict(torchvision_sd[1])
    bad["layer1.0.conv1.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        build_model("resnet18", str(tmp_path / "bad.pth"), seed=0)
    with pytest.raises(ValueError) as err:
        build_model("cnn", str(bad_path := tmp_path / "bad.pth"), seed=0)
    assert "\n" not in str(err.value) and str(bad_path) in str(err.value)  # one line naming the file


def test_cnn_auto_means_none_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_model("cnn", "auto", seed=0)[1] == "none"


def test_auto_falls_back_when_imagenet_weights_cannot_be_fetched(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))  # no cached weights
    timeout = socket.getdefaulttimeout()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, used = build_model("resnet18", "auto", seed=0)
    if used == "imagenet":
        pytest.skip("this machine could download the ImageNet weights")
    assert used == "none"
    messages = [str(w.message) for w in caught if "random initialisation" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0] and "resnet18-f37072fd.pth" in messages[0]
    assert socket.getdefaulttimeout() == timeout
    with pytest.raises(RuntimeError, match="could not load the ImageNet") as err:
        build_model("resnet18", "imagenet", seed=0)
    assert "\n" not in str(err.value)


def test_imagenet_weights_come_from_the_hub_cache(monkeypatch, tmp_path, torchvision_sd):
    # A file in <TORCH_HOME>/hub/checkpoints/ under the official name is used without any download.
    path, sd = torchvision_sd
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for weights in ("imagenet", "auto"):
        model, used = build_model("resnet18", weights, seed=0)
        assert used == "imagenet"
        assert torch.equal(model.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
