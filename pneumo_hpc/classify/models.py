"""Classifier models. Both return one logit per image; the sigmoid is fused into the loss
(BCEWithLogits, numerically stable) and applied by `predict_proba` for scores."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class CpuFp32Linear(nn.Linear):
    """A Linear whose CPU product is always fp32, whatever dtype its input and (FSDP-gathered) weights arrive in.

    oneDNN's AMX bf16 GEMM dies with SIGFPE on some shapes (batch 24 x 65536 x 128, small-cnn's fc1 at 128 px, on
    torch 2.14.1). Computing the layer in fp32 costs nothing measurable (a bf16 fc1 step was not faster:
    docs/performance.md). FSDP
    gathers its weights in fp32 on CPUs (`fp32_on_cpu`), so that FSDP computes what serial does.
    """

    fp32_on_cpu = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and (x.dtype != torch.float32 or self.weight.dtype != torch.float32
                                       or torch.is_autocast_enabled("cpu")):
            with torch.autocast("cpu", enabled=False):
                bias = None if self.bias is None else self.bias.float()
                return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)  # callers see their own dtype
        return super().forward(x)


class SmallCNN(nn.Module):
    """The reference study's classifier: 2 conv (ReLU, max-pool) + 2 fully-connected layers, 128x128 grayscale."""

    def __init__(self, size: int = 128, width: int = 32, hidden: int = 128):
        super().__init__()
        if size % 4:
            raise ValueError(f"small-cnn needs an input size divisible by 4, got {size}")
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc1 = CpuFp32Linear(2 * width * (size // 4) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu(max_pool(x)) == max_pool(relu(x)) (relu is monotone), on a quarter of the elements: it matters on
        # CPUs, where these element-wise passes cost as much as the convolutions (docs/performance.md)
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        h = F.relu(self.fc1(x.flatten(1)))
        # a fresh tensor, not a view: FSDP2's backward hook on a view output can be dropped by in-place ops
        return self.fc2(h)[:, 0].clone()


def resnet18(weights: Path | None = None) -> nn.Module:
    """torchvision resnet18 with a 1-channel stem and one output. `weights`: a local torchvision state dict
    (ImageNet 3-channel stems are summed to 1 channel; the 1000-class head is dropped)."""
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=1)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if state["conv1.weight"].shape[1] == 3:
            state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise ValueError(f"{weights}: not a resnet18 state dict (missing {missing}, unexpected {unexpected})")
    return OneLogit(model)


class OneLogit(nn.Module):
    """(N, 1) -> (N,) so every model returns the same shape as SmallCNN."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0].clone()


def build_model(name: str, size: int = 128, weights: Path | None = None) -> nn.Module:
    if name == "small-cnn":
        return SmallCNN(size=size)
    if name == "resnet18":
        return resnet18(weights)
    raise ValueError(f"unknown model {name!r} (small-cnn|resnet18)")


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(model(x).float())
