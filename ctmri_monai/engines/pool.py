"""Image history buffer of Shrivastava et al., used to update the discriminators (size 50 in CycleGAN)."""

from __future__ import annotations

import random

import torch


class ImagePool:
    """Returns a batch where each image is, with probability 0.5, swapped for one generated earlier.

    The pool's content is part of the training state: ``state_dict`` holds plain tensors so that a
    checkpoint stays loadable with ``torch.load(weights_only=True)``.
    """

    def __init__(self, pool_size: int = 50, seed: int | None = None) -> None:
        self.pool_size = pool_size
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Mix ``images`` (N, C, H, W) with stored ones; detached, on the device of ``images``."""
        if self.pool_size == 0:
            return images.detach()
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() > 0.5:
                index = self.rng.randrange(self.pool_size)
                out.append(self.images[index])  # leaves the pool on the next line: no copy needed
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        stacked = torch.cat(self.images, 0).cpu() if self.images else torch.empty(0)
        return {"pool_size": self.pool_size, "images": stacked}

    def load_state_dict(self, state: dict) -> None:
        self.pool_size = int(state["pool_size"])
        images = state["images"]
        self.images = [image.unsqueeze(0) for image in images] if images.numel() else []

    def to(self, device: torch.device | str) -> ImagePool:
        self.images = [image.to(device) for image in self.images]
        return self
