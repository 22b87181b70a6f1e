"""Noisy sine waves for the recurrent example (configs/lstm_sine/).

`write_sine_dataset` writes <out>/train.h5 and <out>/test.h5, each with the
three datasets an HDF5Data layer hands to an LSTM net, one row per time step
(Caffe's recurrent layers take T x N time-major blobs, so HDF5Data's
batch_size is the number of time steps T and the N streams are the second
axis), and the list files <out>/train.txt and <out>/test.txt that
hdf5_data_param.source names:

    data  (L, N, 1)  the wave x_t = a sin(w t + p) + noise
    cont  (L, N)     0 where a new wave starts in that stream, else 1
    label (L, N, 1)  the next value x_{t+1} of the same wave

Each stream is a run of waves of random length (30 to 70 steps), amplitude
(0.5 to 1), angular frequency (0.1 to 0.4 per step) and phase, with Gaussian
noise of standard deviation 0.05, so sequences start and end inside batches
and the state carried between batches matters. The files are written under
temporary names and renamed, and are kept unless `force`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from caffesolve.errors import DataError

STREAMS = 16
TRAIN_STEPS = 2000
TEST_STEPS = 500
NOISE = 0.05


def sine_waves(
    streams: int, steps: int, rng: np.random.Generator
) -> dict[str, npt.NDArray[np.float32]]:
    """The data, cont and label arrays of `steps` rows of `streams` streams."""
    data = np.zeros((steps, streams, 1), np.float32)
    label = np.zeros((steps, streams, 1), np.float32)
    cont = np.ones((steps, streams), np.float32)
    for n in range(streams):
        start = 0
        while start < steps:
            length = int(rng.integers(30, 71))
            amplitude, omega = rng.uniform(0.5, 1.0), rng.uniform(0.1, 0.4)
            phase = rng.uniform(0, 2 * np.pi)
            t = np.arange(length + 1)
            wave = amplitude * np.sin(omega * t + phase)
            wave += rng.normal(0, NOISE, size=wave.shape)
            stop = min(start + length, steps)
            data[start:stop, n, 0] = wave[: stop - start]
            label[start:stop, n, 0] = wave[1 : stop - start + 1]
            cont[start, n] = 0
            start = stop
    return {"data": data, "cont": cont, "label": label}


def write_sine_dataset(
    out: str | os.PathLike[str],
    force: bool = False,
    seed: int = 1701,
    streams: int = STREAMS,
    steps: tuple[int, int] = (TRAIN_STEPS, TEST_STEPS),
) -> list[Path]:
    """Write OUT/{train,test}.h5 and their list files; return the list files."""
    try:
        import h5py
    except ImportError:
        raise DataError(
            "caffesolve data sine writes HDF5 files, which needs h5py "
            "(pip install 'caffesolve[hdf5]')"
        ) from None
    folder = Path(out)
    lists = [folder / "train.txt", folder / "test.txt"]
    existing = [p for p in lists if p.exists()]
    if existing and not force:
        raise DataError(f"{existing[0]} already exists; pass --force to rebuild it")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n_steps in zip(("train", "test"), steps):
        arrays = sine_waves(streams, n_steps, rng)
        h5 = folder / f"{split}.h5"
        tmp = folder / f".{split}.h5.tmp"
        try:
            with h5py.File(tmp, "w") as f:
                for name, values in arrays.items():
                    f.create_dataset(name, data=values)
            os.replace(tmp, h5)
            listing = folder / f".{split}.txt.tmp"
            listing.write_text(f"{h5.name}\n")
            os.replace(listing, folder / f"{split}.txt")
        finally:
            for leftover in (tmp, folder / f".{split}.txt.tmp"):
                leftover.unlink(missing_ok=True)
    return lists
