"""Models, augmentation and the parallel plan (unit level)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from pneumo_hpc.classify.augment import AlbumentationsAugment, TensorAugment, sample_seeds
from pneumo_hpc.classify.models import SmallCNN, build_model


def test_small_cnn_is_the_reference_architecture():
    m = SmallCNN(128)
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    fcs = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert len(convs) == 2 and len(fcs) == 2 and fcs[-1].out_features == 1
    assert m(torch.zeros(3, 1, 128, 128)).shape == (3,)


def test_small_cnn_computes_the_reference_function_and_gradients():
    """The kit pools before the ReLU (cheaper); the reference study applies ReLU first. Same outputs, same grads."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    m = SmallCNN(64)
    x = torch.randn(5, 1, 64, 64)

    def reference(x):
        h = F.max_pool2d(F.relu(m.conv1(x)), 2)
        h = F.max_pool2d(F.relu(m.conv2(h)), 2)
        return m.fc2(F.relu(F.linear(h.flatten(1), m.fc1.weight, m.fc1.bias)))[:, 0]

    grads = []
    for fn in (m, reference):
        m.zero_grad()
        y = fn(x)
        (y * torch.arange(1.0, 6.0)).sum().backward()
        grads.append((y.detach(), [p.grad.clone() for p in m.parameters()]))
    (y_kit, g_kit), (y_ref, g_ref) = grads
    assert torch.equal(y_kit, y_ref)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g_kit, g_ref))
    assert any(g.abs().sum() > 0 for g in g_kit)


def test_bf16_cpu_batch_24_does_not_crash():
    """oneDNN's AMX bf16 GEMM raised SIGFPE for a 24 x 65536 x 128 product: the model must sidestep it, under
    autocast and with bf16 weights alike."""
    code = ("import torch; from pneumo_hpc.classify.models import SmallCNN; m = SmallCNN(128)\n"
            "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
            "    y = m(torch.randn(24, 1, 128, 128))\n"
            "y.float().sum().backward()\n"
            "m16 = SmallCNN(128).to(torch.bfloat16)  # FSDP2 with a bf16 MixedPrecisionPolicy hands fc1 bf16 weights\n"
            "m16(torch.randn(24, 1, 128, 128, dtype=torch.bfloat16)).float().sum().backward(); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.returncode, proc.stderr[-1000:])


def test_resnet18_one_channel_and_user_weights(tmp_path):
    from torchvision.models import resnet18

    imagenet_like = resnet18(weights=None).state_dict()  # 3-channel stem, 1000-class head
    path = tmp_path / "r18.pth"
    torch.save(imagenet_like, path)
    m = build_model("resnet18", weights=path)
    assert torch.allclose(m.net.conv1.weight, imagenet_like["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(m.net.layer1[0].conv1.weight, imagenet_like["layer1.0.conv1.weight"])
    assert m(torch.zeros(2, 1, 128, 128)).shape == (2,)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(Exception):
        build_model("resnet18", weights=tmp_path / "bad.pth")


@pytest.mark.parametrize("aug_cls", [AlbumentationsAugment, TensorAugment])
def test_augmentation_depends_on_sample_not_on_batch_or_rank(aug_cls):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (16, 32, 32), dtype=np.uint8))
    aug = aug_cls()
    seeds = sample_seeds(0, 3, np.arange(16))
    whole = aug(x, seeds)
    ranks = [aug(x[r::2], seeds[r::2]) for r in range(2)]  # how two DDP ranks would see the same global batch
    assert torch.equal(whole[0::2], ranks[0]) and torch.equal(whole[1::2], ranks[1])
    changed = (whole != x).float().mean()
    assert 0.2 < changed < 1.0  # it augments, and not everything (p=0.5 per transform)
    other_epoch = aug(x, sample_seeds(0, 4, np.arange(16)))
    assert not torch.equal(other_epoch, whole)


def test_device_side_seeds_augment_exactly_as_host_seeds():
    # a GPU run draws its seeds from the device-resident indices: the same images as the host-seeded path
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 256, (16, 32, 32), dtype=np.uint8))
    index = rng.permutation(1000)[:16]
    host, device = sample_seeds(5, 2, index), sample_seeds(5, 2, torch.from_numpy(index))
    assert isinstance(device, torch.Tensor) and np.array_equal(host, device.numpy())
    assert torch.equal(TensorAugment()(x, host), TensorAugment()(x, device))


def test_plan_rejects_a_global_batch_that_does_not_divide():
    from types import SimpleNamespace

    from pneumo_hpc.classify.parallel import Plan

    ctx = SimpleNamespace(world_size=3, rank=0, launcher="slurm", device=torch.device("cpu"))
    with pytest.raises(ValueError, match="multiple of 3"):
        Plan.build("ddp", ctx, 32, "fp32", True)
    with pytest.raises(ValueError, match="HINT"):
        Plan.build("serial", ctx, 48, "fp32", True)
    plan = Plan.build("fsdp", ctx, 48, "fp32", True)
    assert plan.local_batch == 16 and plan.channels_last  # activations; FSDP2 keeps its parameters contiguous


def test_fsdp_cpu_first_convolution_answers_channels_last_without_a_copy():
    """Under FSDP2 the parameters stay NCHW; a 1-channel channels_last batch keeps NCHW strides, so the first
    convolution answered NCHW and its largest output was copied every step. Re-strided, it computes channels_last:
    same values, no copy."""
    from pneumo_hpc.classify.parallel import _channels_last_input

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 8, 3, padding=1)
    x = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    plain = conv(x)
    assert not plain.is_contiguous(memory_format=torch.channels_last)  # what the copy hook had to fix
    conv.register_forward_pre_hook(_channels_last_input)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hooked_bf16 = conv(x)
    hooked = conv(x)
    assert hooked.is_contiguous(memory_format=torch.channels_last)
    assert hooked_bf16.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(hooked, plain, atol=1e-6)
