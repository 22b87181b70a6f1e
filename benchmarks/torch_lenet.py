"""PyTorch's CPU time for Caffe's LeNet, the yardstick of bench_lenet.py.

Optional: needs the `bench` extra (torch). The network is Caffe's LeNet
(conv 20@5x5, max-pool 2/2, conv 50@5x5, max-pool 2/2, ip 500, ReLU, ip 10,
softmax loss) trained with SGD momentum 0.9 and weight decay 5e-4, as in
lenet_solver.prototxt. Run alone: `python benchmarks/torch_lenet.py`.
"""

from __future__ import annotations

import statistics
import time


def torch_lenet_ms(
    batch: int = 64,
    iters: int = 200,
    warmup: int = 20,
    threads: int = 2,
    channels_last: bool = False,
) -> tuple[float, float]:
    """Median ms per training iteration and per test forward (batch 100)."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(1701)
    net = nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(inplace=True),
        nn.Linear(500, 10),
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.rand(batch, 1, 28, 28).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    train_ms = statistics.median(times)
    xt = torch.rand(100, 1, 28, 28).to(memory_format=fmt)
    test_times = []
    with torch.no_grad():
        for i in range(warmup + iters // 2):
            t0 = time.perf_counter()
            net(xt)
            if i >= warmup:
                test_times.append((time.perf_counter() - t0) * 1e3)
    return train_ms, statistics.median(test_times)


if __name__ == "__main__":
    for cl in (False, True):
        train, test = torch_lenet_ms(channels_last=cl)
        layout = "channels_last" if cl else "default"
        print(f"torch {layout:14s} train {train:7.2f} ms/iter  test(100) {test:7.2f} ms")
