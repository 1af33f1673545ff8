#!/usr/bin/python3
"""Dense latency of the same architectures in PyTorch and in spade, same threads, same run.

For each model the script times PyTorch (eval mode, no_grad, torch.set_num_threads(T))
and then spade's `latency` tool (compiled for inference, OMP_NUM_THREADS=T), batch 1,
and prints both medians and their ratio. With --rounds R (default 3) the two take
turns R times, each time for --reps runs, and the ratio is the median of the R
per-round ratios: the machine's speed drifts (on a shared VM by tens of percent
within minutes), and turns keep the drift from falling on one side only. Needs Debian's python3-torch and
python3-torchvision (optional dependencies of spade) and a build of the `latency`
target:

    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2 --target latency
    /usr/bin/python3 scripts/torch_side_by_side.py --threads 2   # Debian python, where python3-torch lives
"""
import argparse
import os
import statistics
import subprocess
import sys
import time


def edsr_torch(torch, channels=3, features=64, blocks=16):
    """The EDSR-style prior of spade's zoo at scale 1: head conv, residual blocks, body conv, global skip, tail conv."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(features, features, 3, padding=1))

        def forward(self, x):
            return self.body(x) + x

    class EDSR(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(channels, features, 3, padding=1)
            self.body = nn.Sequential(*[Block() for _ in range(blocks)], nn.Conv2d(features, features, 3, padding=1))
            self.tail = nn.Conv2d(features, channels, 3, padding=1)

        def forward(self, x):
            h = self.head(x)
            return self.tail(self.body(h) + h)

    return EDSR()


def torch_latency(torch, model, shape, reps):
    x = torch.full(shape, 0.5)
    with torch.no_grad():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="turns of PyTorch and spade per model")
    p.add_argument("--latency", default=os.path.join(os.path.dirname(__file__), "..", "build", "benchmarks", "latency"),
                   help="path of spade's latency tool")
    p.add_argument("models", nargs="*", default=["resnet18", "resnet50", "mobilenet_v2", "vgg16_bn", "edsr"])
    a = p.parse_args()
    try:
        import torch
        import torchvision
    except ImportError:
        sys.exit("needs python3-torch and python3-torchvision (apt install python3-torch python3-torchvision)")
    if not os.path.exists(a.latency):
        sys.exit(f"no spade latency tool at {a.latency}; build it: cmake --build build -j2 --target latency")
    torch.set_num_threads(a.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    print(f"batch 1, {a.threads} thread(s), median of {a.reps} runs in each of {a.rounds} turns, float32")
    print(f"{'model':<14} {'input':<12} {'PyTorch ms':>11} {'spade ms':>10} {'spade / PyTorch':>16}")
    for name in a.models:
        if name == "edsr":
            model, shape = edsr_torch(torch), (1, 3, 256, 256)
        else:
            model, shape = getattr(torchvision.models, name)(), (1, 3, 224, 224)
        model.eval()
        torch_ms, spade_ms = [], []
        for _ in range(max(1, a.rounds)):
            torch_ms.append(torch_latency(torch, model, shape, a.reps))
            out = subprocess.run([a.latency, name, str(a.reps)], env=env, capture_output=True, text=True, check=True)
            spade_ms.append(float(out.stdout.split()[1]))
        ratio = statistics.median(s / t for s, t in zip(spade_ms, torch_ms))
        print(f"{name:<14} {'x'.join(map(str, shape[2:])):<12} {statistics.median(torch_ms):>11.2f} "
              f"{statistics.median(spade_ms):>10.2f} {ratio:>16.2f}")


if __name__ == "__main__":
    main()
