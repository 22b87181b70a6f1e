"""Loading a solver prototxt: parse, upgrade, `--set` overrides, checks, nets.

After Caffe's ReadSolverParamsFromTextFileOrDie (src/caffe/util/upgrade_proto.cpp:
parse, upgrade the deprecated `solver_type` enum, default `snapshot_prefix`) and
Solver::Init / InitTrainNet / InitTestNets (src/caffe/solver.cpp: average_loss,
exactly one train net, test_iter per test net, test_state per test net, the
NetState each net is built with). Caffe CHECK-fails on the first bad field at
run time; here every check runs at load and raises a one-line ConfigError that
starts with the solver file and names the field.

Net files (`net`, `train_net`, `test_net`) are looked up against the working
directory first, as Caffe does, then against the solver file's folder, so
`caffesolve train examples/mnist/lenet_solver.prototxt` works from either place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor

from caffesolve.errors import ConfigError
from caffesolve.log import LOG
from caffesolve.lr_policy import check_lr_policy
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import read_prototxt, suggest

SolverParameter = caffe_pb2.SolverParameter

# Deprecated SolverParameter.solver_type enum -> the `type` string (Caffe's
# UpgradeSolverType).
SOLVER_TYPE_NAMES: dict[int, str] = {
    SolverParameter.SGD: "SGD",
    SolverParameter.NESTEROV: "Nesterov",
    SolverParameter.ADAGRAD: "AdaGrad",
    SolverParameter.RMSPROP: "RMSProp",
    SolverParameter.ADADELTA: "AdaDelta",
    SolverParameter.ADAM: "Adam",
}

TRAIN_NET_FIELDS = ("net", "net_param", "train_net", "train_net_param")


class NetSpec(NamedTuple):
    """A net the solver builds: its NetParameter (state filled in) and origin.

    `net_param.state` equals `state` (as Caffe copies it in), so
    Net(spec.net_param, source=spec.source) builds it; `origin` is Caffe's
    "specified by" text for the log ("net file: x", "test_net_param").
    """

    net_param: caffe_pb2.NetParameter
    state: caffe_pb2.NetState
    source: str
    origin: str


# -- parsing, upgrades, overrides ----------------------------------------------


def solver_type_name(param: SolverParameter, source: str = "<solver>") -> str:
    """The solver's `type` string, read from the deprecated `solver_type` enum
    when that is set (UpgradeSolverType). Both fields set is an error, as in
    Caffe."""
    if not param.HasField("solver_type"):
        return param.type
    if param.HasField("type"):
        raise ConfigError(
            f"{source}: solver_type (deprecated enum) and type cannot both be "
            f'set; keep only type: "{param.type}"'
        )
    return SOLVER_TYPE_NAMES[param.solver_type]


def upgrade_solver_type(param: SolverParameter, source: str = "<solver>") -> bool:
    """Deprecated `solver_type` enum -> `type` string, in place
    (solver_type_name). Returns True if it upgraded."""
    if not param.HasField("solver_type"):
        return False
    param.type = solver_type_name(param, source)
    param.ClearField("solver_type")
    return True


def default_snapshot_prefix(param: SolverParameter, solver_path: str | Path) -> None:
    """Caffe's UpgradeSnapshotPrefixProperty, in place.

    Unset snapshot_prefix -> the solver file's path without its extension; a
    snapshot_prefix that is an existing folder -> folder/<solver file stem>.
    """
    path = Path(solver_path)
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = str(path.with_suffix(""))
    elif os.path.isdir(param.snapshot_prefix):
        param.snapshot_prefix = str(Path(param.snapshot_prefix) / path.stem)


def _override_text(field: FieldDescriptor, value: str) -> list[str]:
    """Text-format lines setting `field` to `value` (commas split numbers)."""
    key = field.name
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        body = value if value.startswith("{") else "{ " + value + " }"
        return [f"{key} {body}"]
    repeated = field.is_repeated
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            return [f"{key}: {value}"]
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return [f'{key}: "{escaped}"']
    parts = [v.strip() for v in value.split(",")] if repeated else [value]
    return [f"{key}: {v}" for v in parts if v]


def apply_overrides(
    param: SolverParameter, overrides: Iterable[str], source: str = "<solver>"
) -> SolverParameter:
    """Apply `key=value` overrides (the CLI's `--set`) to `param`, in place.

    Values parse as text format (`key: value`), so numbers, enums (`GPU`),
    bools and strings (quotes optional) follow the field's type. The first
    `--set` of a repeated field replaces the file's values and later ones for
    the same key append; numbers may also be given comma-separated
    (`stepvalue=5000,7000`). Message fields take text format
    (`train_state=stage: "x"`). Setting `type` clears the deprecated
    `solver_type` and vice versa. Returns `param`.
    """
    fields = SolverParameter.DESCRIPTOR.fields_by_name
    replaced: set[str] = set()
    for item in overrides:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        where = f"{source}: --set {item}"
        if not sep or not key:
            raise ConfigError(f"{where}: expected key=value (e.g. lr_policy=step)")
        field = fields.get(key)
        if field is None:
            raise ConfigError(
                f"{where}: SolverParameter has no field named `{key}`"
                + suggest(key, list(fields))
            )
        update = SolverParameter()
        try:
            text_format.Parse("\n".join(_override_text(field, value)), update)
        except text_format.ParseError as e:
            raise ConfigError(f"{where}: {_value_error(field, e)}") from None
        if key not in replaced:
            param.ClearField(key)
            replaced.add(key)
        if key == "type":
            param.ClearField("solver_type")
        elif key == "solver_type":
            param.ClearField("type")
        param.MergeFrom(update)
    return param


def _value_error(field: FieldDescriptor, error: text_format.ParseError) -> str:
    """A short reason why a --set value does not fit `field`."""
    if field.type == FieldDescriptor.TYPE_ENUM:
        valid = ", ".join(v.name for v in field.enum_type.values)
        return f"{field.name} must be one of: {valid}"
    reason = re.sub(r"^\d+:\d+ : (?:'[^\n]*?': )?", "", str(error))
    return f"bad value for {field.name}: {reason}"


def load_solver(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    validate: bool = True,
) -> SolverParameter:
    """Read a solver prototxt as Caffe does, apply `--set` overrides, check it.

    Order: parse (errors keep file:line:col and suggest field names), upgrade
    `solver_type`, overrides, default `snapshot_prefix`, then validate_solver
    (skipped with validate=False). Net files are not opened here: see
    train_net_spec / test_net_specs.
    """
    source = str(path)
    param = read_prototxt(path, SolverParameter())
    if upgrade_solver_type(param, source):
        LOG.info(
            "upgrade_proto.cpp:1092",
            "Successfully upgraded file specified using deprecated 'solver_type' "
            "field (enum) to 'type' field (string).",
        )
    apply_overrides(param, overrides, source)
    upgrade_solver_type(param, source)
    default_snapshot_prefix(param, path)
    if validate:
        validate_solver(param, source)
    return param


# -- validation ----------------------------------------------------------------


def _count_test_nets(param: SolverParameter) -> tuple[int, int]:
    """(test nets named by test_net/test_net_param, all test net instances)."""
    explicit = len(param.test_net) + len(param.test_net_param)
    generic = param.HasField("net") or param.HasField("net_param")
    instances = len(param.test_iter) if generic else explicit
    return explicit, max(instances, explicit)


def validate_solver(param: SolverParameter, source: str = "<solver>") -> None:
    """Caffe's solver checks, up front; the first failure is a ConfigError.

    Solver::Init: average_loss >= 1. InitTrainNet: exactly one of net,
    net_param, train_net, train_net_param. InitTestNets: with a generic net,
    at least one test_iter per test_net/test_net_param (each extra test_iter is
    one more instance of the generic net), otherwise exactly one each;
    test_state unset or one per test net; test_interval not negative when
    there are test nets (0 is accepted, unlike Caffe: warn_never_tested).
    Added: test_interval without test_iter, iter_size >= 1,
    regularization_type L1/L2, and the lr_policy checks (check_lr_policy).
    """
    if param.average_loss < 1:
        raise ConfigError(
            f"{source}: average_loss must be >= 1 (got {param.average_loss})"
        )
    if param.iter_size < 1:
        raise ConfigError(f"{source}: iter_size must be >= 1 (got {param.iter_size})")
    check_train_net(param, source)
    check_test_nets(param, source)
    if param.regularization_type not in ("L1", "L2"):
        raise ConfigError(
            f"{source}: regularization_type: unknown regularization type "
            f"'{param.regularization_type}' (supported: L1, L2)"
        )
    check_lr_policy(param, source)


def check_train_net(param: SolverParameter, source: str = "<solver>") -> None:
    """Exactly one of net, net_param, train_net, train_net_param (InitTrainNet)."""
    given = [f for f in TRAIN_NET_FIELDS if param.HasField(f)]
    if not given:
        raise ConfigError(
            f"{source}: no train net; set one of: {', '.join(TRAIN_NET_FIELDS)}"
        )
    if len(given) > 1:
        raise ConfigError(
            f"{source}: more than one train net ({', '.join(given)}); keep exactly "
            f"one of: {', '.join(TRAIN_NET_FIELDS)}"
        )


def check_test_nets(param: SolverParameter, source: str = "<solver>") -> None:
    """test_iter / test_state / test_interval against the test nets (InitTestNets).

    With a generic net (net or net_param) at least one test_iter per
    test_net/test_net_param, each extra one a further instance of the generic
    net; without, exactly one each. test_state unset or one per instance.
    """
    explicit, instances = _count_test_nets(param)
    generic = param.HasField("net") or param.HasField("net_param")
    n_iter = len(param.test_iter)
    if (generic and n_iter < explicit) or (not generic and n_iter != explicit):
        raise ConfigError(
            f"{source}: test_iter must be specified for each test network: "
            f"{n_iter} test_iter for {explicit} test net(s) "
            f"({len(param.test_net)} test_net, "
            f"{len(param.test_net_param)} test_net_param)"
        )
    if param.test_state and len(param.test_state) != instances:
        raise ConfigError(
            f"{source}: test_state must be unspecified or specified once per test "
            f"net: {len(param.test_state)} test_state for {instances} test net(s)"
        )
    if param.test_interval > 0 and n_iter == 0:
        raise ConfigError(
            f"{source}: test_interval is {param.test_interval} but test_iter is "
            f"not set; add test_iter (iterations per test) or remove test_interval"
        )
    if instances > 0 and param.test_interval < 0:
        raise ConfigError(
            f"{source}: test_interval must be > 0 when there are test nets "
            f"({instances} from test_iter; got {param.test_interval})"
        )


def warn_never_tested(param: SolverParameter, source: str = "<solver>") -> list[str]:
    """test_iter without test_interval (0, the default): the test nets are
    built and never run. Caffe's InitTestNets refuses this (CHECK_GT
    test_interval 0); caffesolve runs it, with a warning naming the fix."""
    _, instances = _count_test_nets(param)
    if not instances or param.test_interval:
        return []
    message = (
        f"{source}: test_iter is set but test_interval is not: the {instances} "
        "test net(s) are built and never run (set test_interval to test every "
        "N iterations; Caffe itself refuses a solver without it)"
    )
    LOG.warning("solver_param.py:0", message)
    return [message]


# Fields that change Caffe's behaviour but caffesolve does not implement:
# (field, predicate on the parameter, what happens instead). Others are
# handled elsewhere: solver_mode/device_id by the solver (CPU run),
# snapshot_format/snapshot_diff by snapshot.py; layer_wise_reduce only matters
# with several GPUs and test_compute_loss is ignored by Caffe itself.
UNIMPLEMENTED_FIELDS = (
    (
        "debug_info",
        lambda p: p.debug_info,
        "the [Forward] and [Backward] statistics are logged, the per-param "
        "[Update] lines are not",
    ),
)


def warn_unimplemented(param: SolverParameter, source: str = "<solver>") -> list[str]:
    """Log one warning per set field in UNIMPLEMENTED_FIELDS; return the texts."""
    messages = [
        f"{source}: {name} is only partly implemented by caffesolve: {instead}"
        for name, is_set, instead in UNIMPLEMENTED_FIELDS
        if is_set(param)
    ]
    for message in messages:
        LOG.warning("solver_param.py:0", message)
    return messages


# -- nets ----------------------------------------------------------------------


def resolve_net_path(
    param_path: str, solver_path: str | os.PathLike[str], field: str = "net"
) -> Path:
    """The net file a solver field names: as given (cwd), else next to the solver.

    An absolute path is used as is. The ConfigError lists every path tried.
    """
    given = Path(param_path)
    tried = (
        [given] if given.is_absolute() else [given, Path(solver_path).parent / given]
    )
    for candidate in tried:
        if candidate.is_file():
            return candidate
    seen: list[str] = []
    for candidate in tried:
        text = str(candidate.absolute())
        if text not in seen:
            seen.append(text)
    raise ConfigError(
        f"{solver_path}: {field}: net file '{param_path}' not found "
        f"(tried: {', '.join(seen)})"
    )


def _read_net(
    param_path: str, solver_path: str | os.PathLike[str], field: str
) -> tuple[caffe_pb2.NetParameter, str]:
    path = resolve_net_path(param_path, solver_path, field)
    return read_prototxt(path, caffe_pb2.NetParameter()), str(path)


def _with_state(
    net_param: caffe_pb2.NetParameter,
    phase: int,
    override: caffe_pb2.NetState | None,
) -> tuple[caffe_pb2.NetParameter, caffe_pb2.NetState]:
    """Caffe's NetState precedence: phase, then the net's own state, then the
    solver's train_state / test_state; copied into net_param.state."""
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(net_param.state)
    if override is not None:
        state.MergeFrom(override)
    net_param.state.CopyFrom(state)
    return net_param, state


def train_net_spec(
    param: SolverParameter, solver_path: str | os.PathLike[str]
) -> NetSpec:
    """The train net (Solver::InitTrainNet): its NetParameter and NetState.

    Exactly one of train_net_param, train_net, net_param, net (validated);
    state = TRAIN, merged with the net's own state, then train_state.
    """
    source = str(solver_path)
    check_train_net(param, source)
    field = next(f for f in TRAIN_NET_FIELDS if param.HasField(f))
    if field in ("net_param", "train_net_param"):
        net_param = caffe_pb2.NetParameter()
        net_param.CopyFrom(getattr(param, field))
        where, origin = f"{source}: {field}", field
    else:
        net_param, where = _read_net(getattr(param, field), solver_path, field)
        origin = f"{field} file: {getattr(param, field)}"
    net_param, state = _with_state(net_param, caffe_pb2.TRAIN, param.train_state)
    return NetSpec(net_param, state, where, origin)


def test_net_specs(
    param: SolverParameter, solver_path: str | os.PathLike[str]
) -> list[NetSpec]:
    """The test nets in Caffe's order (Solver::InitTestNets).

    Every test_net_param, then every test_net file, then the generic net
    (net_param or net) once per remaining test_iter. State = TEST, merged with
    the net's own state, then test_state[i] when test_state is given.
    """
    source = str(solver_path)
    check_test_nets(param, source)
    nets: list[tuple[caffe_pb2.NetParameter, str, str]] = []
    for i, inline in enumerate(param.test_net_param):
        net_param = caffe_pb2.NetParameter()
        net_param.CopyFrom(inline)
        nets.append((net_param, f"{source}: test_net_param {i}", "test_net_param"))
    for name in param.test_net:
        net_param, where = _read_net(name, solver_path, "test_net")
        nets.append((net_param, where, f"test_net file: {name}"))
    remaining = len(param.test_iter) - len(nets)
    if remaining > 0 and param.HasField("net_param"):
        for _ in range(remaining):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(param.net_param)
            nets.append((net_param, f"{source}: net_param", "net_param"))
    elif remaining > 0 and param.HasField("net"):
        generic, where = _read_net(param.net, solver_path, "net")
        for _ in range(remaining):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(generic)
            nets.append((net_param, where, f"net file: {param.net}"))
    specs = []
    for i, (net_param, where, origin) in enumerate(nets):
        override = param.test_state[i] if param.test_state else None
        net_param, state = _with_state(net_param, caffe_pb2.TEST, override)
        specs.append(NetSpec(net_param, state, where, origin))
    return specs


# Not a pytest test, though its name starts with `test_`.
test_net_specs.__test__ = False  # type: ignore[attr-defined]
