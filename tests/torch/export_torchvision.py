#!/usr/bin/env python3
"""Exports random torchvision classifiers for spade's PyTorch comparison test.

For each model this writes, into OUT_DIR,
  <model>.safetensors     the model's state_dict, exactly as torchvision names it
  <model>.io.safetensors  a random input "x" [1, 3, S, S] and torch's logits "y"
Weights are torchvision's own initialisation; batch-norm layers get running
statistics calibrated on random images and then perturbed, plus random affine
parameters, so that no BN is the identity and activations keep a sensible scale.

Usage: export_torchvision.py OUT_DIR [--models resnet18,vgg16_bn,...] [--force]
Without torch/torchvision it prints a notice, writes nothing and exits 0, so the
comparison test (which then finds no files) reports itself skipped.
"""

import argparse
import json
import os
import struct
import sys

SEED = 20240517
VERSION = "1"  # bump when the exported content changes, so stale files are rewritten

# model -> image size: small enough to be quick, large enough for every pool
MODELS = {
    "resnet18": 64,
    "resnet34": 64,
    "resnet50": 64,
    "vgg16_bn": 64,
    "mobilenet_v2": 64,
    "densenet121": 64,
    "googlenet": 96,  # 96 -> 48 -> 24 -> 12 -> 6 -> 3: ceil_mode rounds up at each max pool
}


def build(name):
    import torchvision

    kwargs = {"weights": None}
    if name == "googlenet":
        kwargs.update(aux_logits=False, transform_input=False, init_weights=True)
    return getattr(torchvision.models, name)(**kwargs)


def randomize_batch_norm(torch, model, gen):
    """Calibrates BN statistics on random images, then perturbs them and the affine parameters."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 64, 64, generator=gen))
    model.eval()
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            u = lambda lo, hi: lo + (hi - lo) * torch.rand(c, generator=gen)
            std = m.running_var.sqrt()
            m.running_mean.add_(u(-0.2, 0.2) * std)
            m.running_var.mul_(u(0.7, 1.3))
            m.weight.copy_(u(0.5, 1.5))
            m.bias.copy_(u(-0.3, 0.3))


def write_safetensors(path, tensors, metadata):
    """Minimal safetensors writer: 8-byte header length, JSON header, raw little-endian data."""
    dtypes = {"torch.float32": "F32", "torch.float64": "F64", "torch.int64": "I64"}
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for key, t in tensors.items():
        t = t.detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[key] = {"dtype": dtypes[str(t.dtype)], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)  # never leave a half-written file under the real name


def read_metadata(path):
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return json.loads(f.read(n)).get("__metadata__", {})
    except (OSError, ValueError, struct.error):
        return {}


def export(torch, name, size, out_dir, force):
    weights = os.path.join(out_dir, name + ".safetensors")
    io = os.path.join(out_dir, name + ".io.safetensors")
    stamp = {"exporter": "spade export_torchvision.py", "version": VERSION, "seed": str(SEED), "size": str(size)}
    if not force and os.path.exists(weights) and read_metadata(io) == stamp:
        print(f"{name}: up to date")
        return
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = build(name)
    randomize_batch_norm(torch, model, gen)
    x = torch.randn(1, 3, size, size, generator=gen)
    with torch.no_grad():
        y = model(x)
    write_safetensors(weights, model.state_dict(), {"model": name})
    write_safetensors(io, {"x": x, "y": y}, stamp)  # written last: it marks the pair complete
    print(f"{name}: x {list(x.shape)} -> y {list(y.shape)}, |y|max {y.abs().max().item():.4g}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    p.add_argument("--force", action="store_true", help="rewrite files that are up to date")
    a = p.parse_args()
    names = [n for n in a.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error("unknown model(s): " + ", ".join(unknown))
    try:
        import torch
        import torchvision  # noqa: F401
    except ImportError as e:
        print(f"export_torchvision.py: {e}; nothing exported (the comparison test will be skipped)")
        return 0
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(a.out_dir, exist_ok=True)
    for n in names:
        export(torch, n, MODELS[n], a.out_dir, a.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
