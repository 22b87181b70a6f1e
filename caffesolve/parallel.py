"""Data-parallel training on MPI: Caffe's multi-GPU semantics across
processes and machines (parallel.cpp's NCCL, over mpi4py).

`mpirun -n N caffesolve train SOLVER` starts N processes (ranks); each builds
the same solver and net, and they train one model, as Caffe's N solvers do:

- rank 0's weights and solver state (its `--weights`, or `--snapshot`,
  restored there only) are broadcast to every rank before the first
  iteration (NCCL::Broadcast), so all ranks start identical;
- each rank's data layers keep every N-th record starting at its rank
  (DataLayer::Skip: rank r of N reads records r, r+N, r+2N, ...), so one
  iteration of N ranks at batch B sees the records one process sees at
  batch N x B; only rank 0 builds and runs the test nets;
- after the backward passes, every learnable param's diff is summed over the
  ranks and scaled by 1/N before ApplyUpdate (NCCL::on_gradients_ready): with
  `layer_wise_reduce` (the default) each param's sum starts, non-blocking,
  as soon as the last layer that writes it has run its backward
  (NCCL::run(layer), hooked in with Net::add_after_backward), overlapping the
  backward of the layers below; without, one flat buffer is summed at the end;
- only rank 0 logs, tests, writes snapshots and reads SIGINT/SIGHUP; its
  requests reach the other ranks at the iteration boundary, so all stop at
  the same iteration.

Every rank then updates its own copy with the same summed diffs, so the
copies stay identical bit for bit (MPI's sum gives every rank the same bits).

A rank that fails at set-up (a missing file, mismatched files) is reported
once, by rank 0, and every rank exits; one that fails mid-run cannot reach
the others, which wait in a collective, so the command line (caffesolve.cli) prints
its one line and aborts the job (World.abort, MPI_Abort).

The world is read from the launcher's environment: without `mpirun` (or with
one process) nothing here imports mpi4py and training is exactly as before.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from caffesolve import backend
from caffesolve.errors import CaffesolveError, ConfigError, MissingExtraError
from caffesolve.log import LOG, Log
from caffesolve.proto import caffe_pb2
from caffesolve.solvers.base import SolverAction, SolverCallback

if TYPE_CHECKING:
    from caffesolve.layers.base import Layer
    from caffesolve.solvers.base import ActionFunction, Solver

F32 = np.float32

# The launchers' variables for the number of processes they started: Open MPI,
# MPICH / Intel MPI (Hydra), MVAPICH. A PMIx launcher (srun --mpi=pmix) may
# only set PMIX_RANK: then MPI itself is asked.
SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
PMIX_RANK = "PMIX_RANK"

# Layers without bottoms whose tops are not records read from a source, so
# there is nothing to shard (the rest should shard or are warned about).
NOT_RECORD_READERS = frozenset({"Input", "Parameter", "DummyData"})


class WorldError(ConfigError):
    """An error every rank raises alike (set-up failed somewhere, files
    differ): rank 0 reports it and every rank exits, no abort needed."""


def launched_size(environ: Mapping[str, str]) -> int | None:
    """The number of processes the MPI launcher started, from its variables;
    None if none says (then: 1, or a PMIx launcher, see `world`)."""
    for name in SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _mpi(size: int | None) -> Any:
    """mpi4py's MPI module (initialises MPI), or a MissingExtraError."""
    started = f"as one of {size} ranks" if size else "as an MPI rank"
    try:
        from mpi4py import MPI
    except ImportError as e:
        detail = "" if isinstance(e, ModuleNotFoundError) else f" ({e})"
        raise MissingExtraError(
            f"this process was started by mpirun {started}, but mpi4py is not "
            f"installed{detail}: pip install 'caffesolve[mpi]' (with an MPI "
            "library such as Debian's openmpi-bin and libopenmpi-dev)"
        ) from None
    return MPI


@dataclass(frozen=True)
class World:
    """The processes training together: this one's rank among `size`, the
    communicator (None for one process) and every rank's host name."""

    rank: int = 0
    size: int = 1
    comm: Any = None
    local_size: int = 1
    hosts: tuple[str, ...] = field(default=())

    @property
    def is_root(self) -> bool:
        """Caffe::root_solver(): rank 0 tests, snapshots and logs."""
        return self.rank == 0

    def where(self, rank: int | None = None) -> str:
        """ "rank 1 of 3 (host)", the prefix of a rank's messages."""
        r = self.rank if rank is None else rank
        host = f" ({self.hosts[r]})" if r < len(self.hosts) else ""
        return f"rank {r} of {self.size}{host}"

    def abort(self, code: int = 1) -> None:
        """MPI_Abort: end every rank of the job now (does not return)."""
        if self.comm is not None:
            self.comm.Abort(code)

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Run a set-up step on every rank, then agree: if it raised a
        CaffesolveError on any rank, every rank raises one WorldError naming
        the failing rank (set-up has no collectives, so all ranks get here)."""
        if self.size == 1:
            yield
            return
        error: CaffesolveError | None = None
        try:
            yield
        except CaffesolveError as e:
            error = e
        messages = self.comm.allgather(None if error is None else str(error))
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if not failed:
            return
        if len(failed) == self.size and len({m for _, m in failed}) == 1:
            message = failed[0][1]  # the same on every rank: say it once
        else:
            rank, message = failed[0]
            message = f"{self.where(rank)}: {message}"
            others = [str(r) for r, _ in failed[1:]]
            if others:
                message += f" (rank {', '.join(others)} failed too)"
        raise WorldError(message) from error

    @contextlib.contextmanager
    def quiet_unless_root(self, *logs: Log) -> Iterator[None]:
        """Silence the logs on ranks other than 0 (Caffe's LOG_IF(INFO,
        Caffe::root_solver())): one rank speaks for the job."""
        if self.is_root:
            yield
            return
        before = [log.quiet for log in logs]
        for log in logs:
            log.quiet = True
        try:
            yield
        finally:
            for log, quiet in zip(logs, before):
                log.quiet = quiet


def world(environ: Mapping[str, str] | None = None) -> World:
    """This process's World: one process unless an MPI launcher started
    several; then mpi4py is imported, which initialises MPI, and the World
    found is kept (MPI starts once per process)."""
    env = os.environ if environ is None else environ
    size = launched_size(env)
    if (size is None and PMIX_RANK not in env) or (size is not None and size <= 1):
        return World()
    return _mpi_world(size)


@functools.cache
def _mpi_world(size: int | None) -> World:
    comm = _mpi(size).COMM_WORLD
    if comm.Get_size() == 1:
        return World()
    rank = comm.Get_rank()
    hosts = tuple(comm.allgather(socket.gethostname()))
    return World(
        rank=rank,
        size=comm.Get_size(),
        comm=comm,
        local_size=hosts.count(hosts[rank]),
        hosts=hosts,
    )


def running_world() -> World | None:
    """The World of the multi-rank run this process is part of, if one was
    started (for the command line's error path; no MPI call); else None."""
    if _mpi_world.cache_info().currsize == 0:
        return None
    w = world()
    return w if w.size > 1 else None


# -- set-up --------------------------------------------------------------------


def files_digest(param: caffe_pb2.SolverParameter, source: str) -> dict[str, str]:
    """sha256 of the solver (as read, with overrides) and of its train net
    (as parsed: comments and spacing do not count), the same on every rank
    that trains from the same files."""
    from caffesolve.solver_param import train_net_spec

    net = train_net_spec(param, source).net_param
    return {
        "solver": hashlib.sha256(
            param.SerializeToString(deterministic=True)
        ).hexdigest(),
        "train net": hashlib.sha256(
            net.SerializeToString(deterministic=True)
        ).hexdigest(),
    }


def check_same_files(w: World, param: caffe_pb2.SolverParameter, source: str) -> None:
    """Refuse to start when the ranks read different solver or net files
    (a stale copy on one host would silently train another model)."""
    if w.size == 1:
        return
    with w.together():
        digest = files_digest(param, source)
    digests = w.comm.allgather(digest)
    for what, root_sha in digests[0].items():
        differ = [r for r, d in enumerate(digests) if d[what] != root_sha]
        if differ:
            ranks = ", ".join(w.where(r) for r in differ)
            raise WorldError(
                f"{source}: the {what} differs across the MPI ranks: {ranks} read "
                f"another one than rank 0 (sha256 {digests[differ[0]][what][:12]} "
                f"against {root_sha[:12]}); give every host the same files (or "
                "one shared folder)"
            )


def rank_param(w: World, param: caffe_pb2.SolverParameter) -> caffe_pb2.SolverParameter:
    """The SolverParameter rank `w.rank` builds its solver from: rank 0's as
    given; the others' without test nets (Caffe's Solver::Init builds them on
    the root solver only), snapshots (rank 0 writes them) or `weights` (rank
    0's are broadcast), so other hosts need none of those files."""
    if w.is_root:
        return param
    p = caffe_pb2.SolverParameter()
    p.CopyFrom(param)
    for name in ("test_net", "test_net_param", "test_iter", "test_state", "weights"):
        p.ClearField(name)
    p.test_interval = 0
    p.snapshot = 0
    p.snapshot_after_train = False
    return p


def shard_data_layers(w: World, layers: list[Layer], log: Log = LOG) -> None:
    """Give every data layer of the train net its share of the records
    (Layer.shard, after Caffe's DataLayer::Skip); rank 0 warns about a layer
    that reads records but cannot share them out."""
    from caffesolve.layers.base import Layer

    for layer in layers:
        layer.shard(w.rank, w.size)
        param = layer.layer_param
        if (
            w.is_root
            and not param.bottom
            and param.type not in NOT_RECORD_READERS
            and type(layer).shard is Layer.shard
        ):
            log.warning(
                "parallel.py:0",
                f"layer '{param.name}' ({param.type}) does not share its records "
                f"out among the {w.size} ranks: every rank reads the same ones "
                "(Data, HDF5Data and ImageData do)",
            )


def set_threads(w: World) -> int:
    """Worker threads for this rank: CAFFESOLVE_THREADS if set, else the
    cores this process may use shared among the ranks on its host (so N
    ranks on N cores run one thread each); the count chosen."""
    share = (os.cpu_count() or 1) // w.local_size
    if hasattr(os, "sched_getaffinity"):  # mpirun may bind a rank to its cores
        share = min(share, len(os.sched_getaffinity(0)))
    n = backend.workers_policy(os.environ, max(1, share))
    backend.set_workers(n)
    return n


# -- the solver callback -------------------------------------------------------


class MPISync(SolverCallback):
    """Caffe's NCCL solver callback over MPI: broadcast at start, the sum of
    the diffs (and 1/N) before ApplyUpdate, rank 0's signal requests shared.

    `attach` builds one and hooks it into the solver and its train net.
    """

    def __init__(self, solver: Solver, w: World) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        self.solver = solver
        self.world = w
        self.comm = w.comm
        net = solver.net
        self.params = net.learnable_params
        # Caffe's (Dtype) 1.0 / Caffe::solver_count(): the scale of the sum.
        self.scale = F32(1.0 / w.size)
        self.layer_wise = bool(solver.param.layer_wise_reduce)
        self.iter_size = solver.param.iter_size
        # Per layer, the learnable params whose diff is complete once its
        # backward has run: those of no lower layer (shared params are
        # written by several layers; the lowest one runs last).
        lowest: dict[int, int] = {}
        for layer_id, ids in enumerate(net.param_id_vecs):
            for net_param_id in ids:
                param_id = net.learnable_param_ids[net_param_id]
                lowest[param_id] = min(lowest.get(param_id, layer_id), layer_id)
        self.ready_after: list[list[int]] = [[] for _ in net.layers]
        for param_id in sorted(lowest):
            self.ready_after[lowest[param_id]].append(param_id)
        self.requests: list[Any] = []
        self.passes = 0
        count = sum(p.count for p in self.params)
        self.flat = np.zeros(0 if self.layer_wise else count, F32)
        self.flag = np.zeros(1, np.int8)
        self.local_action: ActionFunction | None = solver.action_function
        self.agreed: str | None = None

    # -- start -----------------------------------------------------------------

    def broadcast(self) -> None:
        """Rank 0's weights (NCCL::Broadcast) and solver state (iter,
        current_step, history, data cursors, random state) to every rank,
        so all start identical, also when resuming from rank 0's snapshot."""
        comm, solver = self.comm, self.solver
        for blob in self.params:
            comm.Bcast(blob.data, root=0)
        for blob in solver.history:
            comm.Bcast(blob.data, root=0)
        state = None
        if self.world.is_root:
            state = {
                "iter": solver.iter,
                "current_step": solver.current_step,
                "resume": solver.resume_state(),
            }
        state = comm.bcast(state, root=0)
        if not self.world.is_root:
            solver.iter = state["iter"]
            solver.current_step = state["current_step"]
            solver.set_resume_state(state["resume"], "rank 0's solver state")

    # -- every iteration -------------------------------------------------------

    def on_start(self) -> None:
        """Agree on a stop rank 0 was asked for while it tested (the others
        skip the test), so every rank leaves the loop together."""
        self.passes = 0
        self.flag[0] = bool(self.solver.requested_early_exit)
        self.comm.Bcast(self.flag, root=0)
        self.solver.requested_early_exit = bool(self.flag[0])

    def run(self, layer_id: int) -> None:
        """Net::add_after_backward hook (NCCL::run(layer)): in the last of
        the iter_size backward passes, start summing the params whose diffs
        are complete, and let MPI progress the sums already started."""
        if self.passes == self.iter_size - 1:
            MPI = self.MPI
            for param_id in self.ready_after[layer_id]:
                diff = self.params[param_id].diff
                self.requests.append(
                    self.comm.Iallreduce(MPI.IN_PLACE, diff, op=MPI.SUM)
                )
            if self.requests:
                MPI.Request.Testall(self.requests)
        if layer_id == 0:
            self.passes += 1

    def on_gradients_ready(self) -> None:
        """Sum every learnable param's diff over the ranks and scale it by
        1/N (NCCL::on_gradients_ready), then share rank 0's signal request."""
        if self.layer_wise:
            self.MPI.Request.Waitall(self.requests)
            self.requests = []
            for blob in self.params:
                blob.diff *= self.scale
        elif self.flat.size:
            offset = 0
            for blob in self.params:
                self.flat[offset : offset + blob.count] = blob.diff.reshape(-1)
                offset += blob.count
            self.comm.Allreduce(self.MPI.IN_PLACE, self.flat, op=self.MPI.SUM)
            self.flat *= self.scale
            offset = 0
            for blob in self.params:
                blob.diff[...] = self.flat[offset : offset + blob.count].reshape(
                    blob.diff.shape
                )
                offset += blob.count
        self.share_request()

    def share_request(self) -> None:
        """Rank 0 reads its signal handler once per iteration and every rank
        gets the answer: all stop at the same iteration."""
        action = SolverAction.NONE
        if self.world.is_root and self.local_action is not None:
            action = self.local_action()
        self.flag[0] = SolverAction.ALL.index(action)
        self.comm.Bcast(self.flag, root=0)
        self.agreed = SolverAction.ALL[int(self.flag[0])]

    def action(self) -> str:
        """The solver's action function: at the iteration boundary the
        agreed request (a SNAPSHOT only on rank 0, which writes it); rank 0's
        own handler elsewhere (between test batches, which only it runs)."""
        if self.agreed is not None:
            action, self.agreed = self.agreed, None
            if self.world.is_root or action == SolverAction.STOP:
                return action
            return SolverAction.NONE
        if self.world.is_root and self.local_action is not None:
            return self.local_action()
        return SolverAction.NONE


def attach(solver: Solver, w: World, log: Log = LOG) -> MPISync | None:
    """Make `solver` rank `w.rank` of a data-parallel run: root switch,
    sharded data, the MPISync callback, rank 0's state broadcast. Call after
    rank 0 restored any snapshot. Does nothing for one process."""
    if w.size == 1:
        return None
    solver.is_root = w.is_root
    threads = set_threads(w)
    shard_data_layers(w, solver.net.layers, log)
    sync = MPISync(solver, w)
    solver.add_callback(sync)
    if sync.layer_wise:
        solver.net.add_after_backward(sync.run)
    # Only rank 0 acts on SIGINT/SIGHUP: the others' handlers may record a
    # signal, but their answer is never asked for.
    solver.action_function = sync.action
    log_world(w, threads, sync.layer_wise, log)
    sync.broadcast()
    return sync


def log_world(w: World, threads: int, layer_wise: bool, log: Log = LOG) -> None:
    """Caffe's "Using GPUs 0, 1" and per-device lines, for MPI ranks."""
    threads_of = w.comm.allgather(threads)
    pids = w.comm.allgather(os.getpid())
    if not w.is_root:
        return
    log.info("caffe.cpp:210", f"Using MPI ranks {', '.join(map(str, range(w.size)))}")
    for r in range(w.size):
        log.info(
            "caffe.cpp:215",
            f"Rank {r}: {w.hosts[r]} (pid {pids[r]}, {threads_of[r]} "
            f"thread{'s' if threads_of[r] > 1 else ''})",
        )
    how = (
        "layer by layer, overlapping backward (layer_wise_reduce)"
        if layer_wise
        else "in one buffer after backward (layer_wise_reduce: false)"
    )
    log.info(
        "parallel.cpp:0",
        f"Gradients summed over {w.size} ranks and scaled by 1/{w.size}, {how}",
    )
