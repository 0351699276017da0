"""Batched augmentation on the device that holds the images: the two recipes' augmentations.

The decoded faces live in one uint8 tensor (N, H, W, 3) on the CPU or the GPU. A training batch is
indexed out of it and augmented here with whole-batch tensor ops: every sample draws its own random
parameters, but no Python loop runs over images, nothing goes through PIL, and nothing waits for the
host (so a CUDA graph can capture it).

`augment` is the original study's torchvision pipeline (recipe `original`), in this order:

  horizontal flip (p=0.5)
  colour jitter: brightness [0.85, 1.15], contrast [0.8, 1.2], saturation [0.85, 1.15], hue +-0.05
  random affine: rotation +-15 deg, scale [0.85, 1.2], x-shear +-10 deg, no translation, grey fill
  Gaussian blur on every face: the original wrote GaussianBlur(kernel_size=(5, 9), sigma=(0.1, 5)),
                 which torchvision reads as one fixed kernel 5 px wide and 9 px tall (not a random
                 size), sigma uniform in [0.1, 5] shared by both axes. Defined on 200 px faces: at
                 other sizes the kernel radii and sigma scale with the face (`blur_kernel`), so a
                 32 px face is blurred as much, relative to its size, as the original's 200 px one
  autocontrast (p=0.5)
  ImageNet normalisation
  Gaussian pixel noise, sigma 0.15, added after normalisation

One deliberate difference: torchvision's ColorJitter applies its four adjustments in a random order
per call; here the order is always brightness, contrast, saturation, hue.

`flip_shift` is the strong recipe's: a horizontal flip (p=0.5) and a random shift of up to
`shift_pixels(size, fraction)` px each way, the border reflected. The strong recipe uses no shift
(fraction 0): at 32 px and 6 epochs a shift of 1/16 or 1/32 of the face cost accuracy (docs/recipes.md).

All randomness comes from an explicit `torch.Generator` that lives on the images' device, so the same
generator state gives the same augmented batch (bit-identical on the CPU), and each call draws a
fixed amount from it, whatever the values turn out to be.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .inputs import constant, normalise_

NOISE_STD = 0.15
FILL = 0.5  # grey, in [0, 1] units, where the affine transform looks outside the image
ORIGINAL_SIZE = 200  # px: the face size the original's blur parameters were chosen for
BLUR_KERNEL = (5, 9)  # the original's kernel at 200 px: width (x) 5, height (y) 9
BLUR_SIGMA = (0.1, 5.0)  # the original's sigma range at 200 px
MAX_TAPS = 9  # the largest blur kernel; smaller kernels are this one with the outer taps zeroed


HUE_PRIMARIES = (0.0, 2.0, 4.0)  # where red, green and blue sit on the hue circle of six
LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, the weights torchvision's rgb_to_grayscale uses


def prepare_augment_constants(device: torch.device, dtype: torch.dtype = torch.float32) -> None:
    """Make the augmentations' constant tensors on `device` (before a CUDA graph captures them)."""
    constant("hue-primaries", HUE_PRIMARIES, device, dtype, (1, 3, 1, 1))
    constant("luma", LUMA, device, dtype, (3,))


def blur_kernel(size: int) -> tuple[int, int, float, float]:
    """(kernel width, kernel height, sigma low, sigma high) of the original's blur at `size` px.

    At 200 px it is the original's (5, 9, 0.1, 5.0); at other sizes the radii and sigma scale with
    the face, so the blur is the same relative to the face. The original-style benchmark pipeline
    uses the same numbers, so both do the same thing at every size.
    """
    rel = size / ORIGINAL_SIZE
    kx, ky = (min(MAX_TAPS, 2 * round((k - 1) / 2 * rel) + 1) for k in BLUR_KERNEL)
    return kx, ky, BLUR_SIGMA[0] * rel, BLUR_SIGMA[1] * rel


def shift_pixels(size: int, fraction: float) -> int:
    """The largest shift at `size` px for a shift of `fraction` of the face (0: none)."""
    return round(size * fraction)


def _grey(x: torch.Tensor) -> torch.Tensor:
    # (B,3,H,W) -> (B,1,H,W), with the LUMA weights as Python numbers (no tensor to make)
    r, g, b = x.unbind(1)
    return (LUMA[0] * r).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def _shift_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of (B,3,H,W) images in [0,1] by `hue` (B,) turns; S and V are kept.

    Same result as torchvision's RGB -> HSV -> RGB round trip, written without its per-pixel
    sector lookup (the slow part on a CPU).
    """
    r, g, b = x.unbind(1)  # each (B, H, W)
    v = x.amax(1)
    chroma = v - x.amin(1)
    # Hue in sixths of a turn, from the channel that holds the maximum (ties go to r, then g, as in
    # torchvision); red is at 0, green at 2, blue at 4. Grey pixels (chroma 0) get hue 0 and stay grey.
    h = torch.where(v == r, g - b,
                    torch.where(v == g, (b - r).add_(chroma, alpha=2.0), (r - g).add_(chroma, alpha=4.0)))
    h = h.div_(chroma.clamp(min=1e-12)).add_(6.0 * hue.view(-1, 1, 1)).remainder_(6.0)  # (B, H, W) in [0, 6)
    # HSV -> RGB: channel = v - chroma * clamp(d - 1, 0, 1), d the distance around the circle of six
    # from the hue to that channel's primary c. For |h - c| < 6, d - 1 = 2 - ||h - c| - 3|.
    primary = constant("hue-primaries", HUE_PRIMARIES, x.device, x.dtype, (1, 3, 1, 1))
    f = (h.unsqueeze(1) - primary).abs_().sub_(3.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)  # (B, 3, H, W)
    return f.mul_(-chroma.unsqueeze(1)).add_(v.unsqueeze(1))


def _colour_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                   saturation: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision's four ColorJitter adjustments with per-sample factors (B,) each, in a fixed order."""
    def per_sample(f: torch.Tensor) -> torch.Tensor:
        return f.view(-1, 1, 1, 1)

    # Each step clamps to [0, 1] like torchvision's _blend, so the next one sees a valid image. The
    # first op copies x; later ones work in place because 60 MB temporaries (128 faces at 200 px)
    # cost more in page faults than in arithmetic on a CPU.
    x = (x * per_sample(brightness)).clamp_(0.0, 1.0)
    # Contrast blends towards the image's mean grey level: mean of the luma = luma of channel means.
    luma = constant("luma", LUMA, x.device, x.dtype, (3,))
    mean = per_sample(x.mean(dim=(2, 3)) @ luma)  # (B, 1, 1, 1)
    c = per_sample(contrast)
    x = x.mul_(c).add_((1.0 - c) * mean).clamp_(0.0, 1.0)
    s = per_sample(saturation)
    grey = _grey(x).mul_(1.0 - s)  # (B, 1, H, W), taken before x is scaled in place
    x = x.mul_(s).add_(grey).clamp_(0.0, 1.0)
    return _shift_hue(x, hue)


def _affine(x: torch.Tensor, angle: torch.Tensor, scale: torch.Tensor, shear: torch.Tensor,
            flip: torch.Tensor) -> torch.Tensor:
    """Rotate (degrees), scale and x-shear (degrees) square (B,3,H,W) images about their centre.

    `flip` (B,) bool mirrors a sample horizontally first. The matrix is torchvision's inverse affine
    matrix (output pixel -> input pixel); for a square image without translation it is the same in
    pixel and in normalised coordinates, so it is the `theta` of F.affine_grid as it stands.
    """
    rot, sx = torch.deg2rad(angle), torch.deg2rad(shear)
    # Forward matrix R(rot) * Shear_x(sx) = [[a, b], [c, d]] (determinant 1); its inverse is [[d, -b], [-c, a]].
    a, c = torch.cos(rot), torch.sin(rot)
    b = -torch.cos(rot) * torch.tan(sx) - torch.sin(rot)
    d = -torch.sin(rot) * torch.tan(sx) + torch.cos(rot)
    # Flipping the input is sampling it at -x, so a flip negates the first row of the inverse matrix:
    # the mirror costs nothing and is exact because pixel centres are symmetric about 0.
    sign = 1.0 - 2.0 * flip.to(x.dtype)
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([sign * d, sign * -b, zero], 1),
                         torch.stack([-c, a, zero], 1)], 1) / scale.view(-1, 1, 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    # grid_sample pads with zeros; shifting by the fill value makes the outside come out grey, and the
    # bilinear weights blend the image edge linearly into that grey.
    out = F.grid_sample(x - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.add_(FILL)


def _taps(kernel: int, sigma: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(B, 9) normalised Gaussian taps of an odd `kernel` size, per-sample sigma (B,), zero beyond the kernel."""
    half = MAX_TAPS // 2
    offsets = torch.arange(-half, half + 1, dtype=dtype, device=device)  # (9,)
    taps = torch.exp(-0.5 * (offsets / sigma.view(-1, 1)) ** 2) * (offsets.abs() <= (kernel - 1) / 2)
    return taps / taps.sum(1, keepdim=True)


def _blur(x: torch.Tensor, kernel: tuple[int, int], sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B,C,H,W) with a kernel (width, height) and per-sample sigma (B,),
    as torchvision's gaussian_blur(kernel_size=(width, height), sigma=(s, s))."""
    B, C, H, W = x.shape
    half = MAX_TAPS // 2
    # A kernel of size k is the 9-tap kernel with taps beyond its radius zeroed; with reflect padding
    # of 4 this equals torchvision's blur padded by k // 2.
    wx = _taps(kernel[0], sigma, x.dtype, x.device).repeat_interleave(C, 0)  # (B*C, 9): per sample and channel
    wy = _taps(kernel[1], sigma, x.dtype, x.device).repeat_interleave(C, 0)
    # Samples become channels of one image so a grouped conv applies each sample's own kernel.
    y = x.reshape(1, B * C, H, W)
    y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), wx.view(B * C, 1, 1, MAX_TAPS), groups=B * C)
    y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), wy.view(B * C, 1, MAX_TAPS, 1), groups=B * C)
    return y.view(B, C, H, W)


def _autocontrast(x: torch.Tensor, apply: torch.Tensor | None = None) -> torch.Tensor:
    """Stretch each image and channel of (B,C,H,W) to span [0, 1]; a flat channel is left as it is.

    `apply` (B,) bool limits the stretch to those samples (the others pass through unchanged).
    """
    lo = x.amin(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    hi = x.amax(dim=(2, 3), keepdim=True)
    keep = hi <= lo
    if apply is not None:
        keep = keep | ~apply.view(-1, 1, 1, 1)
    # Samples and channels that are kept get the identity map x * 1 - 0, so one pass serves the batch.
    scale = torch.where(keep, torch.ones_like(hi), 1.0 / (hi - lo))
    shift = torch.where(keep, torch.zeros_like(lo), lo * scale)
    return (x * scale).sub_(shift).clamp_(0.0, 1.0)


def _uniform(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * u


def augment(batch_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The original recipe: (B,H,W,3) uint8 -> (B,3,H,W) float32 normalised+augmented, channels_last;
    all randomness from gen (which lives on batch_u8.device)."""
    B, H, W, _ = batch_u8.shape
    if H != W:
        raise ValueError(f"augment expects square images, got {H}x{W}")
    # All per-sample parameters come from one draw of (B, 11) uniforms, then the noise: a fixed
    # consumption of the generator, whatever the values turn out to be. (Column 8 once drew a random
    # kernel size, which the original never had; it is still drawn so the other columns keep their values.)
    u = torch.rand(B, 11, generator=gen, device=gen.device, dtype=torch.float32)  # (B, 11) in [0, 1)
    flip = u[:, 0] < 0.5
    brightness, contrast = _uniform(u[:, 1], 0.85, 1.15), _uniform(u[:, 2], 0.8, 1.2)
    saturation, hue = _uniform(u[:, 3], 0.85, 1.15), _uniform(u[:, 4], -0.05, 0.05)
    angle, scale, shear = _uniform(u[:, 5], -15.0, 15.0), _uniform(u[:, 6], 0.85, 1.2), _uniform(u[:, 7], -10.0, 10.0)
    kx, ky, s_lo, s_hi = blur_kernel(H)         # blur in units of the face, not of pixels
    sigma = _uniform(u[:, 9], s_lo, s_hi)
    stretch = u[:, 10] < 0.5
    # Drawn as (B, H, W, 3) so that its permuted view already has the output's channels_last layout.
    noise = torch.randn(B, H, W, 3, generator=gen, device=gen.device, dtype=torch.float32).permute(0, 3, 1, 2)

    # NCHW from here on: the grouped blur conv views the batch as one image of B*3 channels.
    x = batch_u8.permute(0, 3, 1, 2).contiguous().float().div_(255.0)  # (B, 3, H, W) in [0, 1]
    # The flip is folded into the affine sampling grid: jitter acts per pixel plus whole-image
    # means, so it commutes with a mirror, and flip -> jitter -> affine is what runs.
    x = _colour_jitter(x, brightness, contrast, saturation, hue)
    x = _affine(x, angle, scale, shear, flip)
    x = _blur(x, (kx, ky), sigma)
    x = _autocontrast(x, apply=stretch)
    # Normalise, then add pixel noise in normalised units, written straight into the channels_last noise.
    return noise.mul_(NOISE_STD).add_(normalise_(x))


def flip_shift(batch_u8: torch.Tensor, gen: torch.Generator, shift: int = 0) -> torch.Tensor:
    """The strong recipe: (B,H,W,3) uint8 -> (B,3,H,W) float32 normalised, each face mirrored with
    p=0.5 and shifted by up to `shift` px in x and y (reflected border), channels_last."""
    B, H, W, _ = batch_u8.shape
    if H != W:
        raise ValueError(f"flip_shift expects square images, got {H}x{W}")
    s = shift
    u = torch.rand(B, 3, generator=gen, device=gen.device, dtype=torch.float32)  # flip, dy, dx: always drawn
    flip = u[:, 0] < 0.5
    dy, dx = (torch.floor(u[:, 1:] * (2 * s + 1)).long()).unbind(1)  # offsets 0..2s into the padded face
    x = batch_u8.permute(0, 3, 1, 2).float().div_(255.0)           # (B, 3, H, W) view of channels_last bytes
    xp = F.pad(x, (s, s, s, s), mode="reflect")                      # (B, 3, H+2s, W+2s)
    ar = torch.arange(H, device=x.device)
    rows = (dy.view(B, 1) + ar).view(B, 1, H, 1).expand(B, 3, H, W + 2 * s)
    cols = dx.view(B, 1) + ar                                        # (B, W): window into the padded row
    # A mirrored face reads its window from right to left: the flip costs one index reversal.
    cols = torch.where(flip.view(B, 1), cols.flip(1), cols).view(B, 1, 1, W).expand(B, 3, H, W)
    out = xp.gather(2, rows).gather(3, cols)                         # (B, 3, H, W)
    return normalise_(out.contiguous(memory_format=torch.channels_last))
