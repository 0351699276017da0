"""Batched augmentation: layout, determinism, per-sample randomness, each step against torchvision, and
the strong recipe's flip and shift."""
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
import torchvision.transforms.v2.functional as TF2
from torchvision.transforms import InterpolationMode

from sisa.augment import (_affine, _autocontrast, _blur, _colour_jitter, _shift_hue, augment, blur_kernel,
                          flip_shift, shift_pixels)
from sisa.inputs import IMAGENET_MEAN, IMAGENET_STD, mirror, to_input


def faces(b: int = 4, px: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, px, px, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def unit_images(b: int = 4, px: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, px, px, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("px", [16, 32, 64])
def test_output_layout(px):
    x = faces(3, px)
    for out in (augment(x, gen(0)), flip_shift(x, gen(0), 2), flip_shift(x, gen(0)), to_input(x), mirror(to_input(x))):
        assert out.shape == (3, 3, px, px)
        assert out.dtype == torch.float32
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert torch.isfinite(out).all()
    assert to_input(x, dtype=torch.float64).dtype == torch.float64


def test_input_is_not_modified():
    x = faces()
    before = x.clone()
    augment(x, gen(0))
    flip_shift(x, gen(0), 2)
    to_input(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("fn", [augment, lambda x, g: flip_shift(x, g, 2)])
def test_deterministic_for_a_generator_state(fn):
    x = faces(8)
    a, b, c = fn(x, gen(1)), fn(x, gen(1)), fn(x, gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    g = gen(1)
    first, second = fn(x, g), fn(x, g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances


def test_parameters_differ_per_sample():
    # Eight copies of one structured image: after pooling away the pixel noise (std 0.15 per pixel),
    # copies must still differ, which only per-sample geometry and colour can do.
    ramp = torch.linspace(0, 255, 32)
    img = torch.stack([ramp.view(1, -1).expand(32, 32), ramp.view(-1, 1).expand(32, 32),
                       ((ramp // 8) % 2 * 255).view(1, -1).expand(32, 32)], -1).to(torch.uint8)
    out = augment(img.expand(8, 32, 32, 3).contiguous(), gen(0))
    pooled = F.avg_pool2d(out, 8)  # (8, 3, 4, 4); noise left: 0.15 / 8 per cell
    diffs = [(pooled[0] - pooled[i]).abs().mean().item() for i in range(1, 8)]
    assert min(diffs) > 0.05, diffs


def test_to_input_matches_hand_normalisation():
    x = torch.empty(2, 8, 8, 3, dtype=torch.uint8)
    x[..., 0], x[..., 1], x[..., 2] = 0, 100, 255
    out = to_input(x)
    for c, v in enumerate((0, 100, 255)):
        expected = (v / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(out[:, c], torch.full((2, 8, 8), expected), atol=1e-6)


def test_colour_jitter_identity():
    x = unit_images()
    ones = torch.ones(4)
    assert torch.allclose(_colour_jitter(x, ones, ones, ones, torch.zeros(4)), x, atol=1e-5)


@pytest.mark.parametrize("hue", [0.05, -0.05, 0.3, -0.5])
def test_hue_matches_torchvision(hue):
    x = unit_images(4, 16)
    x[0] = x[0].mul(3).round().div(3)  # many ties between channels and saturated colours
    x[1, :, :8] = 0.4  # a grey patch has no hue and must stay grey
    ref = torch.stack([TF2.adjust_hue(xi, hue) for xi in x])
    assert torch.allclose(_shift_hue(x, torch.full((4,), hue)), ref, atol=1e-5)


def test_colour_jitter_matches_torchvision_in_fixed_order():
    x = unit_images(4, 16)
    b, c, s = 0.85 + 0.3 * torch.rand(3, 4, generator=gen(3))
    h = torch.tensor([0.05, -0.05, 0.02, 0.0])
    ref = torch.stack([TF2.adjust_hue(TF2.adjust_saturation(TF2.adjust_contrast(TF2.adjust_brightness(
        x[i], b[i].item()), c[i].item()), s[i].item()), h[i].item()) for i in range(4)])
    assert torch.allclose(_colour_jitter(x, b, c, s, h), ref, atol=1e-5)


def test_affine_identity_and_flip():
    x = unit_images()
    zeros, ones, no = torch.zeros(4), torch.ones(4), torch.zeros(4, dtype=torch.bool)
    assert torch.allclose(_affine(x, zeros, ones, zeros, no)[..., 2:-2, 2:-2], x[..., 2:-2, 2:-2], atol=1e-5)
    assert torch.allclose(_affine(x, zeros, ones, zeros, ~no), x.flip(-1), atol=1e-5)


def test_affine_matches_torchvision_inside_and_fills_grey():
    x = unit_images()
    angle, shear = torch.tensor([10.0, -15.0, 3.0, 0.0]), torch.tensor([5.0, -10.0, 0.0, 7.0])
    scale = torch.tensor([1.1, 0.9, 1.2, 0.85])
    flip = torch.tensor([False, True, False, True])
    out = _affine(x, angle, scale, shear, flip)
    for i in range(4):
        src = x[i].flip(-1) if flip[i] else x[i]
        ref = TF.affine(src, angle=angle[i].item(), translate=[0, 0], scale=scale[i].item(),
                        shear=[shear[i].item(), 0.0], interpolation=InterpolationMode.BILINEAR, fill=[0.5])
        # torchvision blends its border with the fill differently; the interior must agree.
        assert torch.allclose(out[i, :, 8:24, 8:24], ref[:, 8:24, 8:24], atol=1e-5)
    # Zoomed out by 0.85, the corners of sample 3 sample only outside the image: pure grey.
    assert torch.allclose(out[3, :, 0, 0], torch.full((3,), 0.5), atol=1e-6)


def test_blur_tiny_sigma_is_identity_and_constant_stays_constant():
    x = unit_images()
    assert torch.allclose(_blur(x, (5, 9), torch.full((4,), 0.1)), x, atol=1e-5)
    flat = torch.full((4, 3, 16, 16), 0.3)
    assert torch.allclose(_blur(flat, (5, 9), torch.full((4,), 5.0)), flat, atol=1e-6)


@pytest.mark.parametrize("kernel", [(5, 9), (3, 7), (1, 3), (9, 9)])
def test_blur_matches_torchvision_per_sample(kernel):
    x = unit_images(4, 20)
    sigma = torch.tensor([0.5, 2.0, 5.0, 3.0])
    out = _blur(x, kernel, sigma)
    for i in range(4):
        ref = TF.gaussian_blur(x[i], list(kernel), [sigma[i].item()] * 2)   # (width, height), one sigma
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_the_original_blur_is_one_fixed_5_wide_9_tall_kernel():
    """The original wrote GaussianBlur(kernel_size=(5, 9)): torchvision's one fixed kernel, 5 px wide and
    9 px tall. At 200 px that is what augment applies, and the original-style pipeline uses the same."""
    assert blur_kernel(200) == (5, 9, 0.1, 5.0)
    assert blur_kernel(32)[:2] == (1, 3) and blur_kernel(128)[:2] == (3, 7)     # the radii scale with the face
    # A vertical line is smeared more along y than along x: the kernel is taller than wide.
    x = torch.zeros(1, 3, 21, 21)
    x[..., 10, 10] = 1.0
    y = _blur(x, blur_kernel(200)[:2], torch.tensor([5.0]))[0, 0]
    assert (y[:, 10] > 0).sum() == 9 and (y[10, :] > 0).sum() == 5


def test_flip_shift_moves_and_mirrors_faces_within_the_limit():
    px = 32
    s = shift_pixels(px, 1 / 16)
    assert s == 2 and shift_pixels(128, 1 / 16) == 8 and shift_pixels(32, 0.0) == 0
    x = faces(64, px, seed=3)
    out = flip_shift(x, gen(5), s)
    plain = to_input(x)
    padded = torch.nn.functional.pad(plain, (s, s, s, s), mode="reflect")
    flips = 0
    for i in range(64):   # every output is one of the (2s+1)^2 windows of the padded face, mirrored or not
        windows = [(dy, dx, f, padded[i, :, dy:dy + px, dx:dx + px]) for dy in range(2 * s + 1)
                   for dx in range(2 * s + 1) for f in (False, True)]
        hits = [(dy, dx, f) for dy, dx, f, w in windows if torch.allclose(out[i], w.flip(-1) if f else w, atol=1e-6)]
        assert hits, i
        flips += hits[0][2]
    assert 16 < flips < 48                                     # about half are mirrored


def test_autocontrast_stretches_each_channel():
    x = unit_images() * 0.5 + 0.2  # every channel spans about [0.2, 0.7]
    x[1, 2] = 0.4  # a flat channel is left alone
    out = _autocontrast(x)
    lo, hi = out.amin(dim=(2, 3)), out.amax(dim=(2, 3))
    stretched = torch.ones(4, 3, dtype=torch.bool)
    stretched[1, 2] = False
    assert torch.allclose(lo[stretched], torch.zeros(11), atol=1e-6)
    assert torch.allclose(hi[stretched], torch.ones(11), atol=1e-6)
    assert torch.equal(out[1, 2], x[1, 2])
    # With a mask, samples not chosen pass through unchanged.
    masked = _autocontrast(x, apply=torch.tensor([True, False, True, False]))
    assert torch.allclose(masked[[1, 3]], x[[1, 3]], atol=1e-6)
    assert torch.allclose(masked[[0, 2]], out[[0, 2]])


def test_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        augment(torch.zeros(2, 32, 16, 3, dtype=torch.uint8), gen(0))


def test_without_a_shift_flip_shift_only_mirrors_and_draws_as_much():
    x = faces(32, 24, seed=4)
    g = gen(6)
    out = flip_shift(x, g, 0)
    plain = to_input(x)
    mirrored = [torch.equal(out[i], plain[i].flip(-1)) for i in range(32)]
    assert all(m or torch.equal(out[i], plain[i]) for i, m in enumerate(mirrored)) and 4 < sum(mirrored) < 28
    assert torch.equal(g.get_state(), (h := gen(6), flip_shift(x, h, 3), h.get_state())[2])   # fixed consumption
