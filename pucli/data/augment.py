"""Training-time image augmentations, on uint8 batches before normalisation.

- :class:`FlipCrop`: the CIFAR recipe (pad, random crop, random horizontal flip) that
  ``pucli distill --augment flip-crop`` applies; :func:`resolve_augment` picks it for ``auto``.
- :class:`PositiveAugmentation`: seeded random affine copies of the labeled positives that the PU
  selector adds to P when P is tiny (:func:`pucli.pu.descriptors.resolve_positive_augmentation`).

Both draw from seeded ``torch.Generator`` objects, so a seeded run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from pucli.model_config import ModelConfig

__all__ = ["FlipCrop", "PositiveAugmentation", "resolve_augment", "AUGMENTATIONS"]

AUGMENTATIONS = ("auto", "none", "flip-crop")

# Images with one channel and at most this many pixels a side are treated as digits / characters:
# flips and crops change their meaning (a flipped 2 is not a 2), so auto augmentation is off.
_SMALL_GRAY_SIDE = 64


def resolve_augment(config: ModelConfig, augment: str) -> str:
    """``auto`` -> ``none`` for small single-channel inputs (digits, characters), else ``flip-crop``."""
    if augment != "auto":
        return augment
    _, height, width = config.input_size
    small_gray = config.in_chans == 1 and max(height, width) <= _SMALL_GRAY_SIDE
    return "none" if small_gray else "flip-crop"


class FlipCrop:
    """Random crop after zero-padding by 1/8 of the side plus a random horizontal flip (the CIFAR
    recipe, scaled to any size), per image, by torchvision's transforms. uint8 (B, C, H, W) in and
    out; the randomness is drawn from ``generator``, so a seeded run is reproducible."""

    def __init__(self, height: int, width: int) -> None:
        from torchvision.transforms import v2

        padding = [max(1, width // 8), max(1, height // 8)]
        self.transform = v2.Compose([v2.RandomCrop((height, width), padding=padding), v2.RandomHorizontalFlip()])

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        # torchvision draws from the global RNG: seed a forked copy of it from our generator.
        import torch

        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.transform(image) for image in images])


@dataclass(frozen=True)
class PositiveAugmentation:
    """Random geometric copies of the labeled positives (the issue's "augmenting P").

    With 1-2 positives per class, nnPU sees only a handful of points of each class and the head
    learns their exact descriptors; small random affine copies (on uint8 images, before
    normalisation, with torchvision's ``v2.functional.affine``) spread P over the variations a
    class really has. Each copy's parameters are drawn from a ``torch.Generator`` seeded with
    ``seed``, per (copy, image), so the copies do not depend on the batch size.

    Attributes:
        copies: augmented copies per positive image (>= 1).
        seed: seeds the draw.
        max_rotation: degrees, uniform in [-max_rotation, max_rotation].
        max_shift: fraction of the side, integer pixel shifts uniform in [-round(f*side), round(f*side)]
            (1/14: +-2 px on 28x28 digits).
        scale: (low, high), uniform zoom factor.
        flip: also a random horizontal flip (natural images; not for digits and characters).
    """

    copies: int
    seed: int = 0
    max_rotation: float = 10.0
    max_shift: float = 1 / 14
    scale: tuple[float, float] = (0.9, 1.1)
    flip: bool = False

    def describe(self) -> str:
        return (f"copies={self.copies};seed={self.seed};rotation={self.max_rotation};shift={self.max_shift:.6f};"
                f"scale={self.scale[0]},{self.scale[1]};flip={int(self.flip)}")

    def draw(self, count: int, size: tuple[int, int]) -> torch.Tensor:
        """Parameters of every copy of ``count`` images of ``size`` (H, W): (copies, count, 5)
        float32 columns angle (degrees), shift x, shift y (pixels), scale, flip (0/1)."""
        import torch

        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.copies, count)
        shift_x, shift_y = round(self.max_shift * size[1]), round(self.max_shift * size[0])
        angle = (torch.rand(shape, generator=generator) * 2 - 1) * self.max_rotation
        dx = torch.randint(-shift_x, shift_x + 1, shape, generator=generator).float()
        dy = torch.randint(-shift_y, shift_y + 1, shape, generator=generator).float()
        zoom = self.scale[0] + torch.rand(shape, generator=generator) * (self.scale[1] - self.scale[0])
        flip = (torch.rand(shape, generator=generator) < 0.5).float() if self.flip else torch.zeros(shape)
        return torch.stack([angle, dx, dy, zoom, flip], dim=-1)

    def apply(self, images: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 images, (B, 5) parameters from :meth:`draw` -> (B, C, H, W) uint8."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        out = []
        for image, (angle, dx, dy, zoom, flip) in zip(images, parameters.tolist()):
            image = TF.horizontal_flip(image) if flip else image
            out.append(TF.affine(image, angle=angle, translate=[int(dx), int(dy)], scale=zoom, shear=[0.0, 0.0],
                                 interpolation=InterpolationMode.BILINEAR))
        import torch

        return torch.stack(out) if out else images
