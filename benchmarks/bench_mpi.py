"""Data-parallel training on MPI (issue 17): what N ranks cost and gain.

    python benchmarks/bench_mpi.py [--rounds 3] [--iterations 30]
                                   [--nets lenet,cifar10_quick] [--zoo]

Needs mpirun and mpi4py (pip install 'caffesolve[mpi]'). One run prints:

1. ms per training iteration (the real Solver's step, SGD) of LeNet (batch
   64) and cifar10_quick (batch 100, ../shared/caffe-examples) on this
   2-core machine: 1 rank x 2 threads at batch B, against 2 ranks x 1 thread
   at B/2 each (the same effective batch: the same training) and at B each
   (twice the images per iteration); images/s for each. The three run in
   alternating rounds, so load from other users of the machine hits them
   alike; medians and the spread over rounds are shown.
2. under mpirun -n 2: the time of one allreduce (MPI_SUM, in place) of each
   net's gradients (every learnable param, float32), the forward and
   backward passes, and how long the reduction takes after the later rank's
   backward has ended (one clock for the processes of a host, so a rank
   waiting for a slower one is not counted): one flat allreduce, against the
   layer-wise reduction (a non-blocking allreduce per layer started after its
   backward); hidden = 1 - layer-wise / flat.
3. a projection on paper for 4 to 64 machines on 10 and 100 Gbit/s links:
   a ring allreduce moves 2(N-1)/N x the gradient bytes through each link,
   so it takes 2(N-1)/N x bytes / bandwidth (latency left out); efficiency =
   compute / (compute + allreduce), with compute the measured 1-rank
   iteration at batch B (each machine trains B images per iteration), and
   with the allreduce hidden up to the backward's time (layer_wise_reduce,
   the best case). --zoo adds AlexNet and ResNet-50 (their deploy nets,
   forward + backward timed at batch 4 and scaled to batch 64 and 32).

Data: synthetic LMDBs of random images (1x28x28 and 3x32x32 Datums) in a
temporary folder; cifar10_quick's mean_file is replaced by a scale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caffesolve.proto import caffe_pb2  # noqa: E402
from caffesolve.proto.upgrade import read_net_params_from_text_file  # noqa: E402

EXAMPLES = ROOT.parent / "shared" / "caffe-examples"
NETS = {
    # name: (train_test prototxt, image shape, batch per iteration)
    "lenet": (ROOT / "configs" / "lenet_train_test.prototxt", (1, 28, 28), 64),
    "cifar10_quick": (
        EXAMPLES / "cifar10__cifar10_quick_train_test.prototxt",
        (3, 32, 32),
        100,
    ),
}
ZOO = {
    # name: (deploy prototxt, batch a machine trains per iteration)
    "alexnet": (EXAMPLES / "zoo__alexnet_deploy.prototxt", 64),
    "resnet50": (EXAMPLES / "zoo__resnet50_deploy.prototxt", 32),
}
MPIRUN = shutil.which("mpirun")
# No binding to cores: on a machine shared with other users a rank bound to a
# busy core waits, and its partner waits in the allreduce.
MPI_FLAGS = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]


# -- data and nets -----------------------------------------------------------------


def write_lmdb(path: Path, shape: tuple[int, int, int], records: int = 1000) -> None:
    """Random uint8 Datums of `shape` with labels 0..9, keys %08d."""
    import lmdb

    rng = np.random.default_rng(0)
    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i in range(records):
            d = caffe_pb2.Datum(
                channels=shape[0],
                height=shape[1],
                width=shape[2],
                data=rng.integers(0, 256, size=shape, dtype=np.uint8).tobytes(),
                label=int(rng.integers(0, 10)),
            )
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()


def solver_for(name: str, folder: Path, batch: int) -> Path:
    """A solver (SGD, no test, no snapshots) over the net's TRAIN phase with
    its Data layers reading the synthetic LMDB at `batch`."""
    net_file, shape, _ = NETS[name]
    param = read_net_params_from_text_file(net_file)
    keep = []
    for layer in param.layer:
        if layer.type == "Data" and any(
            r.phase == caffe_pb2.TEST for r in layer.include
        ):
            continue
        if layer.type == "Data":
            layer.data_param.source = str(folder / f"{name}_lmdb")
            layer.data_param.batch_size = batch
            layer.transform_param.ClearField("mean_file")
            layer.transform_param.scale = 0.00390625
        keep.append(layer)
    del param.layer[:]
    param.layer.extend(keep)
    net = folder / f"{name}_{batch}.prototxt"
    net.write_text(str(param))
    solver = folder / f"{name}_{batch}_solver.prototxt"
    solver.write_text(
        f'net: "{net}" type: "SGD" base_lr: 0.001 momentum: 0.9 lr_policy: "fixed"\n'
        "weight_decay: 0.0005 max_iter: 100000 display: 0 random_seed: 1701\n"
        "snapshot_after_train: false\n"
    )
    return solver


# -- workers (one process, or one rank) --------------------------------------------


def worker_train(solver_path: str, iterations: int) -> dict[str, float]:
    """ms per iteration of `iterations` steps after 3 warm-up steps."""
    from caffesolve import parallel
    from caffesolve.log import LOG
    from caffesolve.solver_param import load_solver
    from caffesolve.solvers import create_solver

    LOG.quiet = True
    world = parallel.world()
    param = load_solver(solver_path)
    solver = create_solver(parallel.rank_param(world, param), solver_path, log=LOG)
    parallel.attach(solver, world, LOG)
    solver.step(3)
    if world.comm is not None:
        world.comm.Barrier()
    start = time.perf_counter()
    solver.step(iterations)
    if world.comm is not None:
        world.comm.Barrier()
    return {"ms": (time.perf_counter() - start) * 1e3 / iterations}


def worker_comm(solver_path: str, iterations: int) -> dict[str, float]:
    """Under mpirun: one allreduce of the gradients (back to back, after a
    barrier), the forward and backward alone, and the MPI time the
    layer-wise reduction adds to a backward (its per-layer starts and
    progress calls, and the final wait): medians over `iterations`, in ms."""
    from mpi4py import MPI

    from caffesolve import parallel
    from caffesolve.log import LOG
    from caffesolve.solver_param import load_solver
    from caffesolve.solvers import create_solver

    LOG.quiet = True
    world = parallel.world()
    comm = world.comm
    param = load_solver(solver_path)
    solver = create_solver(parallel.rank_param(world, param), solver_path, log=LOG)
    sync = parallel.MPISync(solver, world)  # not attached: driven by hand
    net = solver.net
    flat = np.ones(sum(p.count for p in net.learnable_params), np.float32)
    allreduce = []
    for _ in range(50):
        comm.Barrier()
        t = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        allreduce.append(time.perf_counter() - t)
    clock = time.monotonic  # one clock for every process on a host
    forward, backward, exposed_flat, exposed_lw = [], [], [], []
    for k in range(2 * (iterations + 2)):
        layer_wise = k % 2 == 1
        t = clock()
        net.forward()
        forward.append(clock() - t)
        if layer_wise:
            net.add_after_backward(sync.run)
            sync.passes = 0
        comm.Barrier()
        t = clock()
        net.backward()
        end = clock()
        if layer_wise:
            net.after_backward.remove(sync.run)
            MPI.Request.Waitall(sync.requests)
            sync.requests = []
        else:
            backward.append(end - t)
            comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        done = clock()
        # What the reduction adds once the later rank's backward has ended.
        ends = comm.allgather((end, done))
        after = max(d for _, d in ends) - max(e for e, _ in ends)
        (exposed_lw if layer_wise else exposed_flat).append(after)
    return {
        "allreduce": statistics.median(allreduce[5:]) * 1e3,
        "allreduce_min": min(allreduce) * 1e3,
        "forward": statistics.median(forward[4:]) * 1e3,
        "backward": statistics.median(backward[2:]) * 1e3,
        "exposed_flat": statistics.median(exposed_flat[2:]) * 1e3,
        "exposed": statistics.median(exposed_lw[2:]) * 1e3,
        "bytes": float(flat.nbytes),
    }


def worker_zoo(net_file: str, batch: int, iterations: int) -> dict[str, float]:
    """Forward and backward ms of a deploy net at `batch` (Input filled with
    random values, force_backward), and its gradient bytes."""
    from caffesolve.log import LOG
    from caffesolve.net import Net

    LOG.quiet = True
    param = read_net_params_from_text_file(net_file)
    param.force_backward = True
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    net = Net(param, caffe_pb2.TRAIN, rng=np.random.default_rng(0), quiet=True)
    for blob in net.input_blobs:
        blob.data[...] = np.random.default_rng(1).random(blob.shape, np.float32)
    forward, backward = [], []
    for _ in range(iterations + 1):
        t = time.perf_counter()
        net.forward()
        forward.append(time.perf_counter() - t)
        for blob in net.output_blobs:
            blob.diff[...] = 1.0 / blob.count
        t = time.perf_counter()
        net.backward()
        backward.append(time.perf_counter() - t)
    count = sum(p.count for p in net.learnable_params)
    return {
        "forward": statistics.median(forward[1:]) * 1e3,
        "backward": statistics.median(backward[1:]) * 1e3,
        "bytes": 4.0 * count,
    }


# -- the driver --------------------------------------------------------------------


def run_json(command: list[str], env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[0])


def me(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", *args]


def mpirun(n: int, *args: str) -> list[str]:
    assert MPIRUN is not None
    return [MPIRUN, *MPI_FLAGS, "-n", str(n), *me(*args)]


def env_threads(n: int) -> dict[str, str]:
    env = dict(os.environ)
    env["CAFFESOLVE_THREADS"] = str(n)
    return env


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def efficiency(compute_ms: float, backward_ms: float, nbytes: float, n: int,
               gbit: float, overlap: bool) -> float:  # fmt: skip
    ring_ms = 2 * (n - 1) / n * nbytes / (gbit * 1e9 / 8) * 1e3
    exposed = max(0.0, ring_ms - backward_ms) if overlap else ring_ms
    return compute_ms / (compute_ms + exposed)


def projection(rows: list[tuple[str, float, float, float]]) -> None:
    """rows: (net, compute ms, backward ms, gradient bytes)."""
    machines = (4, 8, 16, 32, 64)
    print(
        "\n3. projection: efficiency = compute / (compute + ring allreduce), "
        "ring = 2(N-1)/N x bytes / bandwidth;\n   no overlap / allreduce hidden "
        "up to the backward's time (layer_wise_reduce, best case)"
    )
    print(
        f"{'net':14} {'MB':>7} {'compute ms':>10} {'link':>9} "
        + " ".join(f"{'N=' + str(n):>11}" for n in machines)
    )
    for name, compute, back, nbytes in rows:
        for gbit in (10, 100):
            cells = [
                f"{efficiency(compute, back, nbytes, n, gbit, False):4.0%}/"
                f"{efficiency(compute, back, nbytes, n, gbit, True):4.0%}"
                for n in machines
            ]
            print(
                f"{name:14} {nbytes / 1e6:7.2f} {compute:10.1f} {gbit:>4} Gb/s "
                + " ".join(f"{c:>11}" for c in cells)
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--nets", default="lenet,cifar10_quick")
    parser.add_argument("--zoo", action="store_true")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        if kind == "train":
            result = worker_train(rest[0], int(rest[1]))
        elif kind == "comm":
            result = worker_comm(rest[0], int(rest[1]))
        else:
            result = worker_zoo(rest[0], int(rest[1]), int(rest[2]))
        from caffesolve import parallel

        if parallel.world().is_root:
            print(json.dumps(result), flush=True)
        return
    if MPIRUN is None:
        sys.exit("bench_mpi.py needs mpirun (apt-get install openmpi-bin)")
    nets = [n for n in args.nets.split(",") if NETS[n][0].exists()]
    print(
        f"bench_mpi.py: {os.cpu_count()} cores, {args.rounds} rounds of "
        f"{args.iterations} iterations, {time.strftime('%Y-%m-%d %H:%M')}; "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in nets:
            write_lmdb(folder / f"{name}_lmdb", NETS[name][1])
        print(
            "\n1. ms per training iteration (median (min-max) over rounds); "
            "images/s from the medians"
        )
        for name in nets:
            b = NETS[name][2]
            one = solver_for(name, folder, b)
            half = solver_for(name, folder, b // 2)
            it = str(args.iterations)
            runs: dict[str, list[float]] = {"1x2": [], "2x1 half": [], "2x1 full": []}
            for _ in range(args.rounds):
                runs["1x2"].append(
                    run_json(me("train", str(one), it), env_threads(2))["ms"]
                )
                runs["2x1 half"].append(
                    run_json(mpirun(2, "train", str(half), it), env_threads(1))["ms"]
                )
                runs["2x1 full"].append(
                    run_json(mpirun(2, "train", str(one), it), env_threads(1))["ms"]
                )
            base = statistics.median(runs["1x2"])
            print(f"{name}, batch {b}:")
            for label, key, images in (
                (f"1 rank x 2 threads, batch {b}", "1x2", b),
                (f"2 ranks x 1 thread, batch {b // 2} each", "2x1 half", b),
                (f"2 ranks x 1 thread, batch {b} each", "2x1 full", 2 * b),
            ):
                med = statistics.median(runs[key])
                print(
                    f"  {label:38} {spread(runs[key]):>22} ms  "
                    f"{images / med * 1e3:7.0f} images/s  "
                    f"({base / med * images / b:.2f}x 1 rank's)"
                )
            comm = run_json(
                mpirun(2, "comm", str(one), str(max(args.iterations, 20))),
                env_threads(1),
            )
            hidden = 1 - comm["exposed"] / comm["exposed_flat"]
            print(
                f"2. {name}, batch {b} a rank: gradients {comm['bytes'] / 1e6:.2f} MB; "
                f"allreduce {comm['allreduce']:.2f} ms (min {comm['allreduce_min']:.2f}"
                f"; 2 ranks, shared memory); forward {comm['forward']:.1f} ms, "
                f"backward {comm['backward']:.1f} ms; after the later rank's "
                f"backward: {comm['exposed_flat']:.2f} ms of one flat allreduce, "
                f"{comm['exposed']:.2f} ms with the layer-wise reduction: "
                f"{max(0.0, min(1.0, hidden)):.0%} of it hidden"
            )
            share = comm["backward"] / (comm["forward"] + comm["backward"])
            rows.append((name, base, base * share, comm["bytes"]))
        if args.zoo:
            for name, (net_file, batch) in ZOO.items():
                if not net_file.exists():
                    continue
                z = run_json(me("zoo", str(net_file), "4", "2"), env_threads(2))
                ms = (z["forward"] + z["backward"]) * batch / 4
                print(
                    f"   {name}: forward {z['forward']:.0f} + backward "
                    f"{z['backward']:.0f} ms at batch 4 -> {ms:.0f} ms at batch "
                    f"{batch} (linear), {z['bytes'] / 1e6:.0f} MB of gradients"
                )
                rows.append(
                    (f"{name} b{batch}", ms, z["backward"] * batch / 4, z["bytes"])
                )
    projection(rows)


if __name__ == "__main__":
    main()
