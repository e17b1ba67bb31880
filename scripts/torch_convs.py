#!/usr/bin/env python3
"""PyTorch's convolutions alone: the conv / transposed-conv calls of one generator iteration of
the peer (../shared/peer/torch_wgan.py) with their activations, nothing else, timed like the peer.

The peer's DCGAN layers (4x4 kernels, stride 2, padding 1, with bias; critic widths 64, 128, ...,
each followed by LeakyReLU 0.2; the generator mirrored, ReLU between its layers) run the peer's
sequence without its linear layers, BatchNorm, tanh, spectral normalization and optimizers: n_critic critic steps (generator forward
under no_grad on a batch of noise planes, critic forward on the fakes and on the real batch,
backward: the critic's kernel gradients and its input gradients below the first layer), then one
generator step (generator forward with a tracked input, critic forward, backward: input
gradients through every layer, the generator's kernel gradients and, as in the peer, the
critic's). This is a floor for the peer's iteration: whatever else it does comes on top. The
activations stay because without them PyTorch's chained convolutions get slower, not faster
(0.40 vs 0.355 s per iteration at 32x32 on the development machine).

    scripts/torch_convs.py [--size 64] [--batch 64] [--n-critic 5] [--threads 2] [--iters 7]

Prints one JSON line: {"size", "s_per_gen_iter_median", "s_per_gen_iter_min"}. Needs torch.
"""
import argparse, json, math, statistics, time
import torch
import torch.nn as nn


def layers(size, channels):
    """(critic, generator, generator input channels) with the peer's convolution shapes."""
    n = int(math.log2(size // 4))
    convs, c_in, c = [], channels, 64
    for _ in range(n):
        convs += [nn.Conv2d(c_in, c, 4, 2, 1), nn.LeakyReLU(0.2)]
        c_in, c = c, c * 2
    c0 = c = 64 * 2 ** (n - 1)
    tconvs = []
    for _ in range(n - 1):
        tconvs += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1), nn.ReLU()]
        c //= 2
    tconvs.append(nn.ConvTranspose2d(c, channels, 4, 2, 1))
    return nn.Sequential(*convs), nn.Sequential(*tconvs), c0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n-critic", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d, g, c0 = layers(a.size, a.channels)
    real = torch.rand(a.batch, a.channels, a.size, a.size) * 2 - 1

    def iteration():
        for _ in range(a.n_critic):
            with torch.no_grad():
                fake = g(torch.randn(a.batch, c0, 4, 4))
            (d(fake).mean() - d(real).mean()).backward()
        h = torch.randn(a.batch, c0, 4, 4, requires_grad=True)
        (-d(g(h)).mean()).backward()

    times = []
    for i in range(a.warmup + a.iters):
        t = time.perf_counter()
        iteration()
        if i >= a.warmup:
            times.append(time.perf_counter() - t)
    print(json.dumps({"size": a.size, "s_per_gen_iter_median": statistics.median(times),
                      "s_per_gen_iter_min": min(times)}))


if __name__ == "__main__":
    main()
