"""Training-batch augmentation (the reference study's flips, brightness, gamma, noise), in two forms:

- `AlbumentationsAugment`: albumentations on the CPU data path, image by image (uint8 in, uint8 out);
- `TensorAugment`: the same transforms as batched tensor ops, run where the batch already is (the GPU), so a GPU
  never waits on a CPU loop.

Every random draw is keyed by (run seed, epoch, sample index), never by rank or step: a sample is augmented the same
way whichever rank holds it and whatever the world size, so serial, DDP and FSDP train on identical batches, and a
run resumed mid-epoch sees exactly what the uninterrupted run would have seen.
"""
from __future__ import annotations

import random

import numpy as np
import torch

FLIP_P = BRIGHT_P = GAMMA_P = NOISE_P = 0.5
BRIGHTNESS = 0.1  # additive, fraction of full scale
GAMMA = (0.8, 1.25)
NOISE_STD = (0.0, 0.03)  # fraction of full scale
MEAN, STD = 0.5, 0.25  # fixed normalisation of [0, 1] pixels
_M32 = 0xFFFFFFFF


def hash32(x):
    """lowbias32 integer hash on int64 arrays/tensors holding 32-bit values (numpy or torch alike)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def sample_seeds(seed: int, epoch: int, index):
    """One 32-bit seed per sample, from (run seed, epoch, sample index): numpy in, numpy out; a tensor in, a tensor
    out on its device (a GPU draws its batch's seeds where the indices are, with no host round trip per step)."""
    base = int(hash32(np.int64(hash32(np.int64(seed)) ^ (epoch * 0x9E3779B1 & _M32))))
    if isinstance(index, torch.Tensor):
        return hash32(index.long() ^ base)
    return hash32(np.asarray(index, dtype=np.int64) ^ base)


def _uniforms(seeds: torch.Tensor, k: int) -> torch.Tensor:
    """k independent U[0,1) per sample, (N, k), on the seeds' device."""
    j = torch.arange(k, dtype=torch.int64, device=seeds.device)
    return hash32(seeds[:, None] * 0x27D4EB2F + j[None, :] * 0x165667B1 + 1).float() / 2.0 ** 32


def to_input(x_u8: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, H, W) -> normalised float (B, 1, H, W)."""
    x = x_u8.unsqueeze(1).float().div_(255.0).sub_(MEAN).div_(STD)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class NoAugment:
    def __call__(self, x_u8: torch.Tensor, seeds: np.ndarray) -> torch.Tensor:
        return x_u8


class TensorAugment:
    """Batched augmentation on the tensor's device, uint8 in, uint8 out; noise is a hash of (sample seed, pixel)."""

    def __call__(self, x_u8: torch.Tensor, seeds) -> torch.Tensor:
        b, h, w = x_u8.shape
        dev = x_u8.device
        if not isinstance(seeds, torch.Tensor):
            seeds = torch.from_numpy(np.asarray(seeds, dtype=np.int64)).to(dev)
        u = _uniforms(seeds, 7).view(b, 7, 1, 1)
        flip, bright_on, bright, gamma_on, gamma, noise_on, noise_std = u.unbind(1)
        x = x_u8.float().div_(255.0)
        x = torch.where(flip < FLIP_P, x.flip(-1), x)
        x = torch.where(bright_on < BRIGHT_P, x + (bright * 2 - 1) * BRIGHTNESS, x).clamp_(0, 1)
        x = torch.where(gamma_on < GAMMA_P, x.pow(gamma * (GAMMA[1] - GAMMA[0]) + GAMMA[0]), x)
        pix = torch.arange(h * w, device=dev, dtype=torch.int64).view(1, h, w)
        s = seeds.view(b, 1, 1)
        u1 = (hash32(s * 0x2545F491 + 2 * pix + 1).float() + 0.5) / 2.0 ** 32
        u2 = hash32(s * 0x2545F491 + 2 * pix + 2).float() / 2.0 ** 32
        gauss = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)  # Box-Muller
        std = noise_std * (NOISE_STD[1] - NOISE_STD[0]) + NOISE_STD[0]
        x = torch.where(noise_on < NOISE_P, x + gauss * std, x).clamp_(0, 1)
        return x.mul_(255.0).round_().to(torch.uint8)


class AlbumentationsAugment:
    """albumentations on CPU uint8 images, one by one (cheap next to a CPU training step)."""

    def __init__(self):
        from pneumo_hpc.offline import ensure_offline
        ensure_offline()  # albumentations checks its package index at import otherwise
        import albumentations as A

        self.transform = A.Compose([
            A.HorizontalFlip(p=FLIP_P),
            A.RandomBrightnessContrast(brightness_limit=BRIGHTNESS, contrast_limit=0.0, p=BRIGHT_P),
            A.RandomGamma(gamma_limit=(int(GAMMA[0] * 100), int(GAMMA[1] * 100)), p=GAMMA_P),
            A.GaussNoise(std_range=NOISE_STD, p=NOISE_P),  # albumentations 2.x name; 1.x's var_limit is ignored
        ])
        self.parts = [self.transform, *self.transform.transforms]
        self.py_random = random.Random(0)

    def __call__(self, x_u8: torch.Tensor, seeds: np.ndarray) -> torch.Tensor:
        out = np.empty_like(x_u8.numpy())
        for i, (img, s) in enumerate(zip(x_u8.numpy(), seeds)):
            # one generator pair shared by all transforms: set_random_seed() would build one per transform, much
            # slower (docs/performance.md)
            rng = np.random.default_rng(int(s))
            self.py_random.seed(int(s))
            for t in self.parts:
                t.set_random_state(rng, self.py_random)
            out[i] = self.transform(image=img)["image"]
        return torch.from_numpy(out)


def build_augment(kind: str, device: torch.device):
    if kind == "auto":
        kind = "tensor" if device.type == "cuda" else "albumentations"
    return {"albumentations": AlbumentationsAugment, "tensor": TensorAugment, "none": NoAugment}[kind]()
