"""Data-parallel training on MPI (caffesolve/parallel.py), after Caffe's
multi-GPU semantics (parallel.cpp, data_layer.cpp's Skip, solver.cpp).

In process: the data layers' shares of the records against one layer at
N x batch_size, the world read from the launcher's variables, what a non-root
rank builds, the file hashes. Under mpirun (tests/mpi_driver.py): N ranks at
batch B against one process at batch N x B over the same records (SGD and
Adam, layer_wise_reduce true and false, N = 2 and 3), resuming a run whose
rank was killed, a raising rank, signals, files that differ across ranks.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from image_helpers import write_images
from mpi_helpers import (
    CONFIGS,
    ITERATIONS,
    lmdb_net,
    make_hdf5,
    make_lmdb,
    require_mpi,
    run_mpi,
    solver_files,
)

from caffesolve import backend, parallel, tools
from caffesolve.blob import Blob
from caffesolve.errors import MissingExtraError
from caffesolve.layers import Layer, create_layer
from caffesolve.log import LOG, Log
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text
from caffesolve.solver_param import load_solver
from caffesolve.solvers import SolverAction, create_solver
from caffesolve.solvers.base import SolverCallback

SEED = 1701


def data_layer(text: str, phase: int = caffe_pb2.TRAIN) -> Layer:
    """A data layer set up from its text, with Caffe's test seed; its tops
    are kept as `test_tops`."""
    param = parse_prototxt_text(text, caffe_pb2.LayerParameter(), "<test>")
    layer = create_layer(param, phase, np.random.default_rng(SEED))
    tops = [Blob() for _ in param.top]
    layer.setup([], tops)
    layer.test_tops = tops  # type: ignore[attr-defined]
    return layer


def next_batch(layer: Layer) -> list[np.ndarray]:
    layer.forward([], layer.test_tops)  # type: ignore[attr-defined]
    return [t.data.copy() for t in layer.test_tops]  # type: ignore[attr-defined]


def interleave(shares: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The batch of N x B rows whose row j*N + r is rank r's row j."""
    n = len(shares)
    out = []
    for top in range(len(shares[0])):
        rows = [shares[r][top] for r in range(n)]
        merged = np.empty((rows[0].shape[0] * n, *rows[0].shape[1:]), rows[0].dtype)
        for r in range(n):
            merged[r::n] = rows[r]
        out.append(merged)
    return out


def assert_shares_make_the_big_batch(
    one: Layer, ranks: list[Layer], batches: int
) -> None:
    """Shard ranks[r] as rank r of N; then for `batches` batches the N ranks'
    batches, interleaved, are `one`'s batch of N x B, and every rank's state
    is `one`'s."""
    for r, layer in enumerate(ranks):
        layer.shard(r, len(ranks))
    for _ in range(batches):
        expected = next_batch(one)
        got = interleave([next_batch(layer) for layer in ranks])
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(g, e)
        assert all(layer.get_state() == one.get_state() for layer in ranks)


# -- the data layers' shares (DataLayer::Skip) ---------------------------------------


@pytest.mark.parametrize("n", [2, 3])
def test_data_layer_ranks_share_the_records_of_one_big_batch(
    tmp_path: Path, n: int, quiet_log: None
) -> None:
    # Rank r of N keeps records r, r+N, ... (Caffe's Skip): together the N
    # batches of 4 are the batch of N x 4 one process reads, also across the
    # wrap of the 53 records and after rand_skip (the same seed on every
    # rank); every rank's cursor state is that of the one process.
    db = make_lmdb(tmp_path / "db")
    text = """name: "data" type: "Data" top: "data" top: "label"
      transform_param {{ scale: 0.5 }}
      data_param {{ source: "{db}" batch_size: {b} backend: LMDB rand_skip: 9
        {extra} }}"""
    one = data_layer(text.format(db=db, b=4 * n, extra=""))
    ranks = [  # rank 1 prefetches: shard() restarts its thread
        data_layer(text.format(db=db, b=4, extra="prefetch: 2" if r == 1 else ""))
        for r in range(n)
    ]
    assert_shares_make_the_big_batch(one, ranks, 8)  # 8 x 4n records: wraps at 53
    for layer in ranks:
        layer.close()


def test_test_phase_data_layer_is_not_sharded(tmp_path: Path, quiet_log: None) -> None:
    # Caffe: "In test mode, only rank 0 runs, so avoid skipping".
    db = make_lmdb(tmp_path / "db")
    text = f"""name: "data" type: "Data" top: "data" top: "label"
      data_param {{ source: "{db}" batch_size: 5 backend: LMDB }}"""
    one = data_layer(text, caffe_pb2.TEST)
    sharded = data_layer(text, caffe_pb2.TEST)
    sharded.shard(1, 3)
    for _ in range(3):
        for e, g in zip(next_batch(one), next_batch(sharded)):
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("n", [2, 3])
def test_hdf5_data_ranks_share_the_rows_of_one_big_batch(
    tmp_path: Path, n: int, quiet_log: None
) -> None:
    # Two files of 20 and 21 rows, shuffled (files and rows, the same
    # Generator seed on every rank): a batch of N x 4 rows crosses files and
    # reshuffles; the ranks' rows interleave into it (HDF5DataLayer::Skip).
    listing = make_hdf5(tmp_path)
    text = """name: "data" type: "HDF5Data" top: "data" top: "label"
      hdf5_data_param {{ source: "{listing}" batch_size: {b} shuffle: true }}"""
    one = data_layer(text.format(listing=listing, b=4 * n))
    ranks = [data_layer(text.format(listing=listing, b=4)) for _ in range(n)]
    assert_shares_make_the_big_batch(one, ranks, 9)


@pytest.mark.parametrize("n", [2, 3])
def test_image_data_ranks_share_the_lines_of_one_big_batch(
    tmp_path: Path, n: int, quiet_log: None
) -> None:
    # 11 listed images of two sizes resized alike, shuffled at start and at
    # every wrap (the same Generator seed on every rank); ImageData prefetches
    # by default, so shard() must drop the batches loaded unsharded.
    paths = write_images(tmp_path / "img", [(6, 8), (5, 7)] * 5 + [(6, 8)])
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p.name} {i}\n" for i, p in enumerate(paths)))
    text = """name: "data" type: "ImageData" top: "data" top: "label"
      image_data_param {{ source: "{listing}" root_folder: "{root}/"
        batch_size: {b} shuffle: true new_height: 6 new_width: 8 }}"""
    root = tmp_path / "img"
    one = data_layer(text.format(listing=listing, root=root, b=2 * n))
    ranks = [data_layer(text.format(listing=listing, root=root, b=2)) for _ in range(n)]
    assert_shares_make_the_big_batch(one, ranks, 6)
    for layer in [one, *ranks]:
        layer.close()


def test_unsharded_record_readers_are_warned_about(tmp_path: Path) -> None:
    # A layer that reads records but has no Layer.shard (a user's Python
    # data layer, say) would give every rank the same records: rank 0 says so.
    import solver_helpers  # noqa: F401  (registers TestFixedData)

    db = make_lmdb(tmp_path / "db")
    layers = [
        data_layer(
            f"""name: "lmdb" type: "Data" top: "data" top: "label"
            data_param {{ source: "{db}" batch_size: 2 backend: LMDB }}"""
        ),
        create_layer(
            parse_prototxt_text(
                'name: "fixed" type: "TestFixedData" top: "x" top: "y"',
                caffe_pb2.LayerParameter(),
                "<test>",
            )
        ),
        create_layer(
            parse_prototxt_text(
                'name: "in" type: "Input" top: "x"', caffe_pb2.LayerParameter(), "<t>"
            )
        ),
    ]
    stream = io.StringIO()
    parallel.shard_data_layers(parallel.World(rank=0, size=2), layers, Log(stream))
    warnings = [line for line in stream.getvalue().splitlines() if line]
    assert len(warnings) == 1 and warnings[0].startswith("W")
    assert "layer 'fixed' (TestFixedData) does not share its records" in warnings[0]
    quiet = io.StringIO()
    parallel.shard_data_layers(parallel.World(rank=1, size=2), layers, Log(quiet))
    assert quiet.getvalue() == ""  # only rank 0 speaks


# -- the world and what each rank builds ---------------------------------------------


def test_one_process_without_mpirun_needs_no_mpi(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Without a launcher (or with one process) mpi4py is never imported.
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    for environ in ({}, {"OMPI_COMM_WORLD_SIZE": "1"}, {"PMI_SIZE": "1"}):
        w = parallel.world(environ)
        assert (w.rank, w.size, w.comm, w.is_root) == (0, 1, None, True)
    assert parallel.launched_size({"PMI_SIZE": "4"}) == 4
    assert parallel.launched_size({"MV2_COMM_WORLD_SIZE": "8"}) == 8


def test_mpirun_without_mpi4py_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(
        MissingExtraError, match=r"as one of 3 ranks.*caffesolve\[mpi\]"
    ):
        parallel.world({"OMPI_COMM_WORLD_SIZE": "3"})


def test_other_ranks_build_no_test_nets_snapshots_or_weights() -> None:
    # Caffe's Solver::Init builds test nets on the root solver only; rank 0
    # alone snapshots, and its weights are broadcast.
    param = caffe_pb2.SolverParameter(
        net="net.prototxt",
        test_iter=[5],
        test_interval=10,
        snapshot=100,
        snapshot_prefix="x",
        weights=["w.caffemodel"],
        base_lr=0.01,
    )
    assert parallel.rank_param(parallel.World(rank=0, size=3), param) is param
    other = parallel.rank_param(parallel.World(rank=2, size=3), param)
    assert (other.test_interval, list(other.test_iter), other.snapshot) == (0, [], 0)
    assert not other.snapshot_after_train and not other.weights
    assert (other.net, other.base_lr, other.snapshot_prefix) == (
        "net.prototxt",
        param.base_lr,
        "x",
    )
    assert param.test_interval == 10 and list(param.weights) == ["w.caffemodel"]


def test_files_digest_sees_the_files_not_their_layout(tmp_path: Path) -> None:
    db = tmp_path / "db"
    solver = solver_files(tmp_path / "a", "SGD", "lmdb", True, 4, data_path=db)
    source = str(solver)
    base = parallel.files_digest(load_solver(solver), source)
    net = solver.parent / "net.prototxt"
    text = net.read_text()
    net.write_text("# a comment\n" + text.replace(" top:", "  top:"))
    assert parallel.files_digest(load_solver(solver), source) == base
    net.write_text(text.replace("num_output: 4", "num_output: 5"))
    changed = parallel.files_digest(load_solver(solver), source)
    assert (
        changed["solver"] == base["solver"]
        and changed["train net"] != base["train net"]
    )
    assert (
        parallel.files_digest(load_solver(solver, ["base_lr=0.2"]), source)["solver"]
        != base["solver"]
    )


def test_ranks_on_one_host_share_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backend.THREADS_ENV, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    try:
        assert parallel.set_threads(parallel.World(rank=0, size=4, local_size=4)) == 2
        assert parallel.set_threads(parallel.World(rank=0, size=8, local_size=8)) == 1
        # mpirun bound this rank to one core
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3})
        assert parallel.set_threads(parallel.World(rank=0, size=2, local_size=2)) == 1
        monkeypatch.setenv(backend.THREADS_ENV, "3")
        assert parallel.set_threads(parallel.World(rank=0, size=2, local_size=2)) == 3
    finally:
        backend.set_workers(None)


def test_a_stop_asked_for_while_testing_reaches_on_start(
    tmp_path: Path, quiet_log: None
) -> None:
    # The loop ends after on_start when the root was stopped in its test, so
    # the data-parallel callback can tell the ranks that did not test.
    make_lmdb(tmp_path / "db")
    solver_path = solver_files(
        tmp_path / "s",
        "SGD",
        "lmdb",
        True,
        4,
        'lr_policy: "fixed" test_iter: 2 test_interval: 5',
        net=lmdb_net(tmp_path / "db", 4, test=True),
    )
    events: list[tuple[str, int, bool]] = []

    class Spy(SolverCallback):
        def on_start(self) -> None:
            events.append(("on_start", solver.iter, solver.requested_early_exit))

        def on_gradients_ready(self) -> None:
            events.append(("on_gradients_ready", solver.iter, False))

    calls = iter([SolverAction.NONE] * 7 + [SolverAction.STOP])
    solver = create_solver(
        load_solver(solver_path),
        str(solver_path),
        log=Log(io.StringIO()),
        action_function=lambda: next(calls, SolverAction.NONE),
    )
    solver.add_callback(Spy())
    solver.solve()
    # test at 0 (2 calls), iterations 0..4 (5 calls), test at 5: stopped
    assert events[-1] == ("on_start", 5, True)
    assert [e[0] for e in events].count("on_gradients_ready") == 5
    assert solver.iter == 5 and solver.requested_early_exit


# -- under mpirun ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mpi_data")
    make_lmdb(root / "db")
    (root / "h5").mkdir()
    make_hdf5(root / "h5")
    return root


def data_path(data: Path, kind: str) -> Path:
    return data / "db" if kind == "lmdb" else data / "h5" / "list.txt"


def weights_of(solver) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    arrays = {f"param{i}": p.data for i, p in enumerate(solver.net.learnable_params)}
    arrays.update({f"history{i}": h.data for i, h in enumerate(solver.history)})
    return arrays


@pytest.mark.parametrize("n", [2, 3])
def test_n_ranks_train_as_one_process_with_n_times_the_batch(
    data: Path, tmp_path: Path, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Caffe's multi-GPU contract: N solvers at batch B, gradients summed and
    # scaled by 1/N, update the weights as one solver at batch N x B over the
    # same records would; here within float32 rounding of the reordered sums
    # (1e-5 of each blob's largest value) after 20 iterations, and every rank
    # holds the same bits.
    require_mpi()
    solvers = []
    for name, kind, source, layer_wise, extra in CONFIGS:
        solvers.append(
            solver_files(
                tmp_path / name,
                kind,
                source,
                layer_wise,
                4,
                extra,
                data_path(data, source),
            )
        )
    out = tmp_path / "out"
    out.mkdir()
    done = run_mpi(n, ["train", str(out), *map(str, solvers)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    monkeypatch.setattr(LOG, "quiet", True)
    for name, kind, source, layer_wise, extra in CONFIGS:
        one_path = solver_files(
            tmp_path / "one" / name,
            kind,
            source,
            layer_wise,
            4 * n,
            extra,
            data_path(data, source),
        )
        one = tools.train(one_path, log=Log(io.StringIO()))
        assert one.iter == ITERATIONS
        expected = weights_of(one)
        ranks = [np.load(out / f"{name}_rank{r}.npz") for r in range(n)]
        assert int(ranks[0]["iter"]) == ITERATIONS
        for key, e in expected.items():
            got = ranks[0][key]
            scale = float(np.abs(e).max())
            assert np.abs(got - e).max() <= 1e-5 * scale, (name, key)
            for other in ranks[1:]:
                np.testing.assert_array_equal(other[key], got, err_msg=f"{name} {key}")


def cli_solver(folder: Path, data: Path, extra: str = "") -> Path:
    """The LMDB net with a test net and the TestFault layer, snapshots every 10."""
    return solver_files(
        folder,
        "SGD",
        "lmdb",
        True,
        4,
        f'lr_policy: "fixed" snapshot: 10 test_iter: 2 test_interval: 10 {extra}',
        net=lmdb_net(data / "db", 4, test=True, fault=True),
    )


def errors_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


def test_a_run_whose_rank_was_killed_resumes_from_its_snapshot(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rank 1 dies (SIGKILL) in iteration 14: mpirun ends the job, non-zero;
    # the snapshot of iteration 10 rank 0 wrote is whole, and `--snapshot`
    # resumes it on 2 ranks to the same bits as a run never stopped.
    require_mpi()
    solver = cli_solver(tmp_path / "run", data)
    monkeypatch.setenv("CAFFESOLVE_TEST_FAULT", "1:15:kill")
    killed = run_mpi(2, ["cli", "train", str(solver)])
    assert killed.returncode != 0
    assert "snap_iter_10.solverstate" in killed.stderr
    assert not (tmp_path / "run" / "snap_iter_20.caffemodel").exists()
    monkeypatch.delenv("CAFFESOLVE_TEST_FAULT")
    state = tmp_path / "run" / "snap_iter_10.solverstate"
    resumed = run_mpi(2, ["cli", "train", str(solver), "--snapshot", str(state)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr
    straight_solver = cli_solver(tmp_path / "straight", data)
    straight = run_mpi(2, ["cli", "train", str(straight_solver)])
    assert straight.returncode == 0, straight.stderr[-3000:]
    model = "snap_iter_20.caffemodel"
    assert (tmp_path / "run" / model).read_bytes() == (
        tmp_path / "straight" / model
    ).read_bytes()
    resumed_state, straight_state = (
        caffe_pb2.SolverState.FromString(
            (tmp_path / run / "snap_iter_20.solverstate").read_bytes()
        )
        for run in ("run", "straight")
    )
    resumed_state.ClearField("learned_net")  # each names its own .caffemodel
    straight_state.ClearField("learned_net")
    assert resumed_state == straight_state  # iter, history, data cursors, rng


@pytest.mark.parametrize("rank", [0, 1])
def test_a_raising_rank_ends_the_job_with_one_line(
    data: Path, tmp_path: Path, rank: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other rank waits in the gradient sum: without MPI_Abort it would
    # hang. One line, from the failing rank, no traceback; exit status 1.
    require_mpi()
    solver = cli_solver(tmp_path, data)
    monkeypatch.setenv("CAFFESOLVE_TEST_FAULT", f"{rank}:7:raise")
    done = run_mpi(2, ["cli", "train", str(solver)], timeout=90)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    (line,) = errors_in(output)
    assert line.startswith(
        f"Error: rank {rank} of 2 ({parallel.socket.gethostname()}): "
    )
    assert (
        "layer 'fault' (TestFault): injected fault at forward 7; training stopped "
        "at iteration 6" in line
    )
    assert "Traceback" not in output
    # Rank 0 saves the last whole iteration before it ends the job (as one
    # process does on a fault); a failing rank 1 cannot ask it to.
    state = tmp_path / "snap_iter_6.solverstate"
    assert state.exists() == (rank == 0)
    if rank == 0:
        assert str(state) in line
        assert caffe_pb2.SolverState.FromString(state.read_bytes()).iter == 6


def test_rank_0s_signals_act_on_every_rank(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only rank 0 reads SIGHUP and SIGINT; the others learn of them at the
    # iteration boundary: rank 0 alone snapshots after iteration 2 (SIGHUP:
    # rank 1 ignores its own), and all leave the loop after iteration 6,
    # rank 0 snapshotting it.
    require_mpi()
    solver = cli_solver(tmp_path, data)
    monkeypatch.setenv("CAFFESOLVE_TEST_FAULT", "0:3:sighup,1:5:sighup,0:7:sigint")
    done = run_mpi(2, ["cli", "train", str(solver)], timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stderr
    assert log.count("Received SIGHUP: snapshot requested") == 1
    assert "Received SIGINT: stop requested" in log
    assert "Optimization stopped early." in log
    snapshots = sorted(p.name for p in tmp_path.glob("snap_iter_*.solverstate"))
    assert snapshots == ["snap_iter_3.solverstate", "snap_iter_7.solverstate"]
    assert re.search(r"\] Using MPI ranks 0, 1\n", log)
    assert len(re.findall(r"\] Rank [01]: ", log)) == 2
    assert "Solving TinyConv" in log and log.count("Solving TinyConv") == 1


def test_a_stop_during_rank_0s_test_stops_every_rank(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rank 0 alone tests; stopped there, it must still take the others along.
    require_mpi()
    solver = cli_solver(tmp_path, data)
    monkeypatch.setenv("CAFFESOLVE_TEST_FAULT", "0:3:sigint:TEST")  # test at 10
    done = run_mpi(2, ["cli", "train", str(solver)], timeout=90)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Test interrupted." in done.stderr
    assert "Optimization stopped early." in done.stderr
    assert not (tmp_path / "snap_iter_20.caffemodel").exists()


def two_folders(tmp_path: Path, data: Path) -> tuple[Path, Path]:
    """Folders a and b with the same solver.prototxt and net.prototxt, the
    data given by relative path `db` (only a has it)."""
    folders = (tmp_path / "a", tmp_path / "b")
    for folder in folders:
        folder.mkdir()
        (folder / "net.prototxt").write_text(lmdb_net(Path("db"), 4))
        (folder / "solver.prototxt").write_text(
            'net: "net.prototxt" type: "SGD" base_lr: 0.1 lr_policy: "fixed"\n'
            "max_iter: 4 display: 1 random_seed: 1701 snapshot_after_train: false\n"
        )
    make_lmdb(folders[0] / "db")
    return folders


def train_in(a: Path, b: Path) -> tuple[str, str]:
    """Rank 0 trains solver.prototxt in folder a, rank 1 in folder b; the
    job must fail with one Error: line: (that line, the whole output)."""
    done = run_mpi(
        [(1, ["-wdir", str(a)]), (1, ["-wdir", str(b)])],
        ["cli", "train", "solver.prototxt"],
        timeout=90,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    (line,) = errors_in(output)
    return line, output


def test_files_that_differ_across_ranks_are_refused(data: Path, tmp_path: Path) -> None:
    require_mpi()
    a, b = two_folders(tmp_path, data)
    make_lmdb(b / "db")
    net = b / "net.prototxt"
    net.write_text(net.read_text().replace("num_output: 3", "num_output: 2"))
    line, _ = train_in(a, b)
    assert line.startswith(
        "Error: solver.prototxt: the train net differs across the MPI ranks: "
        "rank 1 of 2"
    )


def test_a_set_up_error_on_one_rank_is_reported_once(
    data: Path, tmp_path: Path
) -> None:
    # Rank 1's folder lacks the database: rank 0 reports rank 1's error and
    # every rank exits (they agree before any collective, no abort needed).
    require_mpi()
    line, output = train_in(*two_folders(tmp_path, data))
    assert line.startswith("Error: rank 1 of 2 (")
    assert "data_param.source db does not exist" in line
    assert "MPI_ABORT" not in output
