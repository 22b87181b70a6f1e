"""PyTorch's CPU time for Caffe's LeNet, the yardstick of bench_lenet.py.

Optional: needs the `bench` extra (torch). The network is Caffe's LeNet
(conv 20@5x5, max-pool 2/2, conv 50@5x5, max-pool 2/2, ip 500, ReLU, ip 10,
softmax loss) trained with SGD momentum 0.9 and weight decay 5e-4, as in
lenet_solver.prototxt, on random in-memory data (no data loading is timed).
Run alone: `python benchmarks/torch_lenet.py`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any


def torch_available() -> bool:
    """True if `import torch` works (the optional `bench` extra)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchLeNet:
    """One LeNet, its SGD optimizer and fixed random batches; time a step."""

    def __init__(
        self,
        batch: int = 64,
        test_batch: int = 100,
        threads: int = 2,
        channels_last: bool = False,
    ) -> None:
        import torch
        from torch import nn

        self.torch = torch
        torch.set_num_threads(threads)
        torch.manual_seed(1701)
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.net = nn.Sequential(
            nn.Conv2d(1, 20, 5),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(20, 50, 5),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(800, 500),
            nn.ReLU(inplace=True),
            nn.Linear(500, 10),
        ).to(memory_format=self.fmt)
        self.opt = torch.optim.SGD(
            self.net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4
        )
        self.loss_fn = nn.CrossEntropyLoss()
        self.x = torch.rand(batch, 1, 28, 28).to(memory_format=self.fmt)
        self.y = torch.randint(0, 10, (batch,))
        self.xt = torch.rand(test_batch, 1, 28, 28).to(memory_format=self.fmt)

    def train_step(self) -> float:
        """One forward + backward + SGD update; its milliseconds."""
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=False)
        loss = self.loss_fn(self.net(self.x), self.y)
        loss.backward()
        self.opt.step()
        return (time.perf_counter() - t0) * 1e3

    def test_forward(self) -> float:
        """One forward of the test batch without autograd; its milliseconds."""
        with self.torch.no_grad():
            t0 = time.perf_counter()
            self.net(self.xt)
            return (time.perf_counter() - t0) * 1e3


def torch_lenet_ms(
    batch: int = 64,
    iters: int = 200,
    warmup: int = 20,
    threads: int = 2,
    channels_last: bool = False,
) -> tuple[float, float]:
    """Median ms per training iteration and per test forward (batch 100)."""
    model = TorchLeNet(batch, 100, threads, channels_last)
    times = [model.train_step() for _ in range(warmup + iters)][warmup:]
    test = [model.test_forward() for _ in range(warmup + iters // 2)][warmup:]
    return statistics.median(times), statistics.median(test)


def describe() -> dict[str, Any]:
    """torch's version and intra-op thread count, for the report."""
    import torch

    return {"version": torch.__version__, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    for cl in (False, True):
        train, test = torch_lenet_ms(channels_last=cl)
        layout = "channels_last" if cl else "default"
        print(
            f"torch {layout:14s} train {train:7.2f} ms/iter  test(100) {test:7.2f} ms"
        )
