"""Solver: Caffe's training loop (solver.cpp), independent of the update rule.

`solve()` runs `step()` to max_iter: each iteration clears the param diffs,
tests when due, runs `iter_size` forward/backward passes, smooths the loss over
`average_loss` iterations, logs at `display`, calls `apply_update()` (the
subclass: SGDSolver fixes the order), then snapshots when due or asked.
Signals arrive through `action_function` (SignalHandler), checked at iteration
boundaries and between test batches, as Caffe's GetRequestedAction.

A fault met mid-run (a bad record, an unreadable file, a full disk, any
exception in a layer) stops training as a SIGINT stop does: a snapshot of the
last completed iteration is written first, so `--snapshot` resumes from it,
and the RunError raised says what failed, and which snapshot to resume from
(the last good one, if this one could not be written). An exception of the
user's own code (a Python layer) gets the same snapshot and is then passed
on unchanged, as pycaffe passes it on; an E line says which snapshot to use.

One np.random.Generator, seeded from `random_seed` (OS entropy if -1), is passed
to every net (fillers, data shuffling, Dropout); snapshots store its state and
the nets' data cursors, so a resumed run is bit-identical to a straight one.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from google.protobuf import text_format

from caffesolve import log as msg
from caffesolve import snapshot as snap
from caffesolve.backend import configure_blas_threads
from caffesolve.blob import Blob, proto_shape
from caffesolve.errors import (
    CaffesolveError,
    ConfigError,
    RunError,
    SnapshotError,
    describe,
)
from caffesolve.log import LOG, Log
from caffesolve.proto import caffe_pb2
from caffesolve.weights import load_weights

if TYPE_CHECKING:
    from caffesolve.net import Net

F32 = np.float32


class SolverAction:
    """Caffe's SolverAction::Enum: what a signal asks the solver to do."""

    NONE = "none"
    STOP = "stop"
    SNAPSHOT = "snapshot"
    ALL = (NONE, STOP, SNAPSHOT)


ActionFunction = Callable[[], str]


class SolverCallback:
    """Caffe's Solver::Callback: hooks into every iteration of `step`.

    `on_start` runs after the param diffs are cleared and any test pass (also
    when that test was stopped: the loop ends after it), before the
    forward/backward passes; `on_gradients_ready` runs after them (the
    diffs are complete, the loss smoothed and displayed), before
    `apply_update`. Both do nothing here; data-parallel training overrides
    them (broadcast, gradient reduction), as Caffe's P2PSync and NCCL do.
    """

    def on_start(self) -> None:
        """Before this iteration's forward/backward passes."""

    def on_gradients_ready(self) -> None:
        """After them, before ApplyUpdate."""


def update_smoothed_loss(
    losses: list[np.float32],
    smoothed: np.float32,
    loss: np.float32,
    index: int,
    average_loss: int,
) -> np.float32:
    """Caffe's UpdateSmoothedLoss, in float: the mean of the last
    `average_loss` losses; `losses` is the ring buffer (updated in place) and
    `index` = iter - start_iter."""
    if len(losses) < average_loss:
        losses.append(loss)
        size = len(losses)
        return F32((smoothed * F32(size - 1) + loss) / F32(size))
    idx = index % average_loss
    smoothed = F32(smoothed + (loss - losses[idx]) / F32(average_loss))
    losses[idx] = loss
    return smoothed


class Solver:
    """The loop shared by every solver; subclasses implement apply_update."""

    type: ClassVar[str] = ""
    history_blocks: ClassVar[int] = 0

    def __init__(
        self,
        param: caffe_pb2.SolverParameter,
        *,
        source: str = "<solver>",
        log: Log = LOG,
        action_function: ActionFunction | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        """`rng` is the Generator to use when random_seed is -1 (pycaffe's
        caffe.set_random_seed); by default OS entropy seeds a new one."""
        self.param = param
        self.source = source
        self.log = log
        self.action_function = action_function
        # Threads: caffesolve.backend's policy, once per process (BLAS at 1
        # thread unless OPENBLAS_NUM_THREADS/OMP_NUM_THREADS say otherwise;
        # CAFFESOLVE_THREADS workers split the big GEMMs).
        configure_blas_threads()
        self.log.info(*msg.initializing_solver(text_format.MessageToString(param)))
        self.check_param()
        if param.random_seed >= 0 or rng is None:
            seed = param.random_seed if param.random_seed >= 0 else None
            rng = np.random.default_rng(seed)
        self.rng = rng
        self.net: Net = self.init_train_net()
        self.test_nets: list[Net] = self.init_test_nets()
        # After the nets (Caffe checks before): a missing data source, which
        # comes with the command that makes it, is the more useful first error.
        snap.check_snapshot_write_permissions(param, source)
        if param.snapshot or param.snapshot_after_train:
            for note in snap.recover_leftovers(param.snapshot_prefix):
                self.log.info("solver.cpp:60", f"Snapshot folder: {note}")
        self.log.info(*msg.scaffolding_done())
        self.iter = 0
        self.current_step = 0
        self.requested_early_exit = False
        self.losses: list[np.float32] = []
        self.smoothed_loss = F32(0)
        self.last_snapshot_iter: int | None = None
        # The last complete snapshot of this run (or the one it resumed
        # from): the solver state's path, named when a later one fails.
        self.last_good_snapshot: str | None = None
        self.testing: Net | None = None  # in test(): a fault names the net
        self.updating = False  # in apply_update(): weights half updated
        self.history: list[Blob] = []
        self.callbacks: list[SolverCallback] = []
        # Caffe::root_solver(): only the root tests, snapshots and logs the
        # display lines; in one process it is always the root.
        self.is_root = True
        self.pre_solve()

    def add_callback(self, callback: SolverCallback) -> None:
        """Caffe's add_callback: `callback`'s hooks run every iteration."""
        self.callbacks.append(callback)

    # -- set-up ----------

    def param_error(self, field: str, message: str) -> ConfigError:
        """A ConfigError naming the solver file and field."""
        return ConfigError(f"{self.source}: {field}: {message}")

    def check_param(self) -> None:
        """Caffe's solver CHECKs (solver_param.validate_solver), before any net
        is built; subclasses add their own (AdaGrad, RMSProp, Adam)."""
        from caffesolve import solver_param as sp

        sp.validate_solver(self.param, self.source)
        sp.warn_unimplemented(self.param, self.source)
        sp.warn_never_tested(self.param, self.source)

    def init_train_net(self) -> Net:
        """Caffe's InitTrainNet (solver_param.train_net_spec), then `weights`."""
        from caffesolve import solver_param as sp
        from caffesolve.net import Net

        spec = sp.train_net_spec(self.param, self.source)
        self.log.info(*msg.creating_train_net(spec.origin))
        net = Net(spec.net_param, rng=self.rng, source=spec.source)
        self.load_weights(net)
        return net

    def init_test_nets(self) -> list[Net]:
        """Caffe's InitTestNets (solver_param.test_net_specs), TEST phase."""
        from caffesolve import solver_param as sp
        from caffesolve.net import Net

        nets = []
        for i, spec in enumerate(sp.test_net_specs(self.param, self.source)):
            self.log.info(*msg.creating_test_net(i, spec.origin))
            try:
                net = Net(spec.net_param, rng=self.rng, source=spec.source)
                self.load_weights(net)
            except CaffesolveError as e:
                raise type(e)(in_test_net(str(e), spec.source)) from e
            nets.append(net)
        return nets

    def load_weights(self, net: Net) -> None:
        """Caffe's LoadNetWeights for each `weights` entry (comma-separated)."""
        for entry in self.param.weights:
            for path in entry.split(","):
                path = path.strip()
                if path:
                    self.log.info(*msg.finetuning_from(path))
                    load_weights(net, path)

    def pre_solve(self) -> None:
        """Allocate the history blobs (SGDSolver and subclasses)."""

    # -- actions from signals ----------

    def get_requested_action(self) -> str:
        if self.action_function is None:
            return SolverAction.NONE
        return self.action_function()

    # -- the loop ----------

    def solve(self, resume_file: str | None = None) -> None:
        """Caffe's Solver::Solve: (restore,) step to max_iter, final snapshot,
        display and test. A stop request snapshots first, so no work is lost;
        so does a fault (stop_on_fault)."""
        self.log.info(*msg.solving(self.net.name))
        self.log.info(*msg.learning_rate_policy(self.param.lr_policy))
        self.requested_early_exit = False
        if resume_file:
            self.log.info(*msg.restoring_solver_state(resume_file))
            self.restore(resume_file)
        start_iter = self.iter
        try:
            self._solve(start_iter)
        except CaffesolveError as e:
            raise self.stop_on_fault(e, start_iter) from e
        except Exception as e:
            # Not caffesolve's: the user's own code (a Python layer, a
            # callback) or a bug. Saved all the same, then passed on as it
            # is, as pycaffe passes a Python layer's exception on.
            self.log.write("E", "solver.cpp:0", str(self.stop_on_fault(e, start_iter)))
            raise

    def _solve(self, start_iter: int) -> None:
        self.step(self.param.max_iter - self.iter)
        if (
            (self.param.snapshot_after_train or self.requested_early_exit)
            and self.last_snapshot_iter != self.iter
            and self.is_root
        ):
            self.snapshot()
        if self.requested_early_exit:
            self.log.info(*msg.optimization_stopped_early())
            return
        if not self.is_root:
            return
        if self.param.display and self.iter % self.param.display == 0:
            loss = F32(self.net.forward())
            self.smoothed_loss = update_smoothed_loss(
                self.losses,
                self.smoothed_loss,
                loss,
                self.iter - start_iter,
                self.param.average_loss,
            )
            self.log.info(*msg.final_loss(self.iter, self.smoothed_loss))
        if self.param.test_interval and self.iter % self.param.test_interval == 0:
            self.test_all()
        self.log.info(*msg.optimization_done())

    def step(self, iters: int) -> None:
        """Caffe's Solver::Step: `iters` iterations of the training loop."""
        start_iter = self.iter
        stop_iter = self.iter + iters
        p = self.param
        self.losses = []
        self.smoothed_loss = F32(0)
        timer = time.perf_counter()
        iterations_last = self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (
                p.test_interval
                and self.iter % p.test_interval == 0
                and (self.iter > 0 or p.test_initialization)
            ):
                if self.is_root:
                    self.test_all()
            # Before the stop check (Caffe: after): data-parallel ranks share
            # a stop that only the root, which tests, was asked for.
            for callback in self.callbacks:
                callback.on_start()
            if self.requested_early_exit:
                break
            display = bool(p.display) and self.iter % p.display == 0
            self.net.debug_info = display and p.debug_info
            loss = F32(0)
            for _ in range(p.iter_size):
                loss += F32(self.net.forward_backward())
            loss /= F32(p.iter_size)
            self.smoothed_loss = update_smoothed_loss(
                self.losses,
                self.smoothed_loss,
                loss,
                self.iter - start_iter,
                p.average_loss,
            )
            if display and self.is_root:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iterations_last) / (lapse or 1.0)
                self.log.info(
                    *msg.iteration_display(
                        self.iter, per_s, lapse, p.display, self.smoothed_loss
                    )
                )
                timer = time.perf_counter()
                iterations_last = self.iter
                self.log_outputs()
            for callback in self.callbacks:
                callback.on_gradients_ready()
            self.updating = True
            self.apply_update()
            self.updating = False
            request = self.get_requested_action()
            if (
                p.snapshot and self.iter % p.snapshot == 0 and self.is_root
            ) or request == SolverAction.SNAPSHOT:
                self.snapshot()
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break

    def log_outputs(self) -> None:
        """`    Train net output #k: name = v (* w = l loss)` per output value."""
        k = 0
        net = self.net
        for name, blob, weight in zip(
            net.output_blob_names, net.output_blobs, net.output_loss_weights
        ):
            for value in blob.data.ravel():
                self.log.info(*msg.train_net_output(k, name, value, weight))
                k += 1

    def apply_update(self) -> None:
        raise NotImplementedError

    # -- testing ----------

    def test_all(self) -> None:
        for test_net_id in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(test_net_id)

    def test(self, test_net_id: int) -> None:
        """Caffe's Solver::Test: mean of each output over test_iter batches."""
        self.log.info(*msg.testing_net(self.iter, test_net_id))
        self.testing = self.test_nets[test_net_id]
        self._test(test_net_id)
        self.testing = None

    def _test(self, test_net_id: int) -> None:
        test_net = self.test_nets[test_net_id]
        test_net.share_trained_layers_with(self.net)
        test_iter = self.param.test_iter[test_net_id]
        scores: np.ndarray | None = None
        loss = F32(0)
        for _ in range(test_iter):
            request = self.get_requested_action()
            while request != SolverAction.NONE:
                if request == SolverAction.SNAPSHOT:
                    self.snapshot()
                elif request == SolverAction.STOP:
                    self.requested_early_exit = True
                request = self.get_requested_action()
            if self.requested_early_exit:
                break
            iter_loss = F32(test_net.forward())
            if self.param.test_compute_loss:
                loss += iter_loss
            values = output_values(test_net)
            scores = values.copy() if scores is None else scores + values
        if self.requested_early_exit:
            self.log.info(*msg.test_interrupted())
            return
        if self.param.test_compute_loss:
            self.log.info(*msg.test_loss(F32(loss / F32(test_iter))))
        if scores is None:
            return
        names, weights = output_names_and_weights(test_net)
        for i, (name, weight) in enumerate(zip(names, weights)):
            mean = F32(scores[i] / F32(test_iter))
            self.log.info(*msg.test_net_output(i, name, mean, weight))

    # -- snapshots ----------

    def snapshot(self) -> None:
        """Caffe's Snapshot: the model and the solver state naming it, written
        as a pair (snapshot.write_snapshot: both or neither)."""
        fmt = self.param.snapshot_format
        hdf5 = fmt == snap.HDF5
        prefix = self.param.snapshot_prefix
        model_path = snap.model_filename(prefix, self.iter, fmt)
        state_path = snap.state_filename(prefix, self.iter, fmt)
        self.log.info(*msg.snapshotting_model(model_path, hdf5))
        self.log.info(*msg.snapshotting_solver_state(state_path, hdf5))
        snap.write_snapshot(
            model_path,
            state_path,
            self.net,
            self.solver_state(model_path),
            self.param.snapshot_diff,
            fmt,
        )
        self.last_snapshot_iter = self.iter
        self.last_good_snapshot = state_path

    def last_good_words(self) -> str:
        """Which snapshot to resume from, for an error message."""
        if self.last_good_snapshot is None:
            return "no snapshot of this run has been written"
        return (
            f"the last good snapshot is {self.last_good_snapshot} "
            f"(resume with --snapshot {self.last_good_snapshot})"
        )

    def stop_on_fault(self, e: Exception, start_iter: int) -> RunError:
        """A fault mid-run as one RunError: what failed, then a snapshot of
        the last completed iteration (as a SIGINT stop writes one) or, if it
        cannot be written, the last good one."""
        what = describe(e)
        if self.testing is not None:
            what = in_test_net(what, self.testing.source)
        stopped = f"training stopped at iteration {self.iter}"
        if not self.is_root:
            return RunError(f"{what}; {stopped}")
        if (
            isinstance(e, SnapshotError)  # the snapshot of this iteration
            or self.updating  # the weights are part updated: nothing to save
            or self.iter == start_iter  # no iteration done: nothing new
            or self.last_snapshot_iter == self.iter  # saved already
        ):
            return RunError(f"{what}; {stopped}; {self.last_good_words()}")
        try:
            self.snapshot()
        except SnapshotError as snapshot_error:
            return RunError(
                f"{what}; {stopped}; {snapshot_error}; {self.last_good_words()}"
            )
        return RunError(
            f"{what}; {stopped} after writing a snapshot of it "
            f"(resume with --snapshot {self.last_good_snapshot})"
        )

    def solver_state(self, model_path: str) -> caffe_pb2.SolverState:
        """SolverState: iter, learned_net, current_step, history, resume JSON."""
        state = caffe_pb2.SolverState(
            iter=self.iter, learned_net=model_path, current_step=self.current_step
        )
        for h in self.history:
            state.history.append(h.to_proto())
        state.caffesolve_resume = snap.encode_resume(self.resume_state())
        return state

    def resume_state(self) -> dict[str, Any]:
        """What bit-exact resume needs beyond Caffe's state."""
        return {
            "train_net": self.net.get_state(),
            "test_nets": [n.get_state() for n in self.test_nets],
            "rng": self.rng.bit_generator.state,
            # What the state was written by and for: checked on resume.
            "solver_type": self.type,
            "sources": self.net.data_sources(),
        }

    def restore(self, state_file: str) -> None:
        """Caffe's Restore (binary or .h5 by suffix), plus caffesolve_resume."""
        state = snap.read_solver_state(state_file)
        self.iter = state.iter
        if state.learned_net:
            model = snap.resolve_learned_net(state.learned_net, state_file)
            load_weights(self.net, model)
        self.current_step = state.current_step
        if len(state.history) != len(self.history):
            raise SnapshotError(
                f"{state_file}: Incorrect length of history blobs: the state has "
                f"{len(state.history)}, this {self.type} solver and net need "
                f"{len(self.history)}"
            )
        self.log.info(*msg.restoring_history())
        for i, (h, proto) in enumerate(zip(self.history, state.history)):
            shape = proto_shape(proto)
            if int(np.prod(shape)) != h.count:
                raise SnapshotError(
                    f"{state_file}: history blob {i} has shape "
                    f"{' '.join(map(str, shape))}, the net needs {h.shape_string()}"
                )
            h.from_proto(proto, reshape=False)
        if state.caffesolve_resume:
            self.log.info(*msg.restoring_data_state())
            resume = snap.decode_resume(state.caffesolve_resume, state_file)
            self.warn_if_other_run(resume, state_file)
            self.set_resume_state(resume, state_file)
        self.last_good_snapshot = state_file

    def warn_if_other_run(self, resume: dict[str, Any], state_file: str) -> None:
        """Warn when a state is resumed by another solver type (its history
        means something else: SGD's momentum is not AdaGrad's sum of squares)
        or against other data sources than it was written with."""
        written_by = resume.get("solver_type")
        if written_by and written_by != self.type:
            self.log.warning(
                "sgd_solver.cpp:0",
                f"{state_file}: written by a {written_by} solver, resumed by "
                f"{self.type}: the history blobs hold {written_by}'s values, "
                f"which {self.type} reads as its own (start from the weights "
                "with --weights instead to begin a fresh history)",
            )
        sources = resume.get("sources")
        if not isinstance(sources, dict):
            return
        for layer, source in self.net.data_sources().items():
            before = sources.get(layer)
            if before is not None and not same_path(before, source):
                self.log.warning(
                    "sgd_solver.cpp:0",
                    f"{state_file}: layer '{layer}' read {before} when this "
                    f"state was written and reads {source} now: its saved data "
                    "position belongs to the other source",
                )

    def set_resume_state(self, resume: dict[str, Any], state_file: str) -> None:
        try:
            self.net.set_state(resume["train_net"])
            for net, net_state in zip(self.test_nets, resume["test_nets"]):
                net.set_state(net_state)
            self.rng.bit_generator.state = resume["rng"]
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotError(
                f"{state_file}: caffesolve_resume does not fit this net ({e})"
            ) from None


def same_path(a: str, b: str) -> bool:
    """The same path, written alike or resolving to the same place."""
    return a == b or os.path.realpath(a) == os.path.realpath(b)


def in_test_net(message: str, source: str) -> str:
    """`message` placed in the TEST net: "net.prototxt: in the TEST net: ..."."""
    if message.startswith(source + ": "):
        return f"{source}: in the TEST net: {message[len(source) + 2 :]}"
    return f"in the TEST net: {message}"


def output_values(net: Net) -> np.ndarray:
    """All output blobs' values, flattened in order, as float32."""
    if not net.output_blobs:
        return np.zeros(0, F32)
    return np.concatenate(
        [b.data.ravel().astype(F32, copy=False) for b in net.output_blobs]
    )


def output_names_and_weights(net: Net) -> tuple[list[str], list[float]]:
    """Per output value: its blob name and loss weight."""
    names: list[str] = []
    weights: list[float] = []
    for name, blob, w in zip(
        net.output_blob_names, net.output_blobs, net.output_loss_weights
    ):
        names += [name] * blob.count
        weights += [w] * blob.count
    return names, weights


class SignalHandler:
    """Caffe's SignalHandler: SIGINT/SIGHUP set flags that the solver reads at
    iteration boundaries as a SolverAction (SIGHUP first, then SIGINT)."""

    def __init__(
        self,
        sigint_action: str = SolverAction.STOP,
        sighup_action: str = SolverAction.SNAPSHOT,
        log: Log = LOG,
    ) -> None:
        for action in (sigint_action, sighup_action):
            if action not in SolverAction.ALL:
                raise ConfigError(
                    f'Invalid signal effect "{action}" was specified '
                    f"(use {', '.join(SolverAction.ALL)})"
                )
        self.actions = {"SIGINT": sigint_action, "SIGHUP": sighup_action}
        self.log = log
        self.got = {"SIGINT": False, "SIGHUP": False}
        self.previous: dict[int, Any] = {}

    def handle_signal(self, signum: int, frame: FrameType | None = None) -> None:
        """The handler: only records that the signal came."""
        self.got[signal.Signals(signum).name] = True

    def hook_up(self) -> None:
        for name in self.actions:
            sig = getattr(signal, name, None)
            if sig is not None:
                self.previous[sig] = signal.signal(sig, self.handle_signal)

    def unhook(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def __enter__(self) -> SignalHandler:
        self.hook_up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unhook()

    def check_for_signals(self) -> str:
        """Caffe's CheckForSignals: the action of a pending SIGHUP, else SIGINT."""
        for name in ("SIGHUP", "SIGINT"):
            if self.got[name]:
                self.got[name] = False
                action = self.actions[name]
                self.log.info(*msg.signal_received(name, action))
                return action
        return SolverAction.NONE
