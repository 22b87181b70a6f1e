"""Loading a solver prototxt (upgrade_proto.cpp, solver.cpp Init/InitTrainNet/
InitTestNets): parse errors, the solver_type upgrade, --set overrides, every
validation error, net path resolution and the NetState each net gets."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import EXAMPLES

from caffesolve import log
from caffesolve.errors import ConfigError
from caffesolve.proto import caffe_pb2
from caffesolve.solver_param import (
    apply_overrides,
    load_solver,
    resolve_net_path,
    test_net_specs,
    train_net_spec,
    validate_solver,
    warn_unimplemented,
)

NET = 'name: "tiny"\nlayer { name: "data" type: "Input" top: "data" }\n'
BASE = 'net: "net.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 100\n'


def write(folder: Path, text: str, name: str = "solver.prototxt") -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def solver(tmp_path: Path) -> Path:
    write(tmp_path, NET, "net.prototxt")
    return write(tmp_path, BASE)


def error_of(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as e:
        load_solver(path, overrides)
    text = str(e.value)
    assert "\n" not in text
    return text


# -- Caffe's own example solvers -------------------------------------------------

EXAMPLE_SOLVERS = (
    sorted(EXAMPLES.glob("*solver*.prototxt")) if EXAMPLES.is_dir() else []
)


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="caffe-examples absent")
@pytest.mark.parametrize("path", EXAMPLE_SOLVERS, ids=lambda p: p.name)
def test_caffe_example_solvers_load_unchanged(path: Path) -> None:
    param = load_solver(path)
    assert param.lr_policy
    assert param.type in ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="caffe-examples absent")
def test_lenet_solver_fields() -> None:
    param = load_solver(EXAMPLES / "mnist__lenet_solver.prototxt")
    assert param.net == "examples/mnist/lenet_train_test.prototxt"
    assert (param.lr_policy, param.max_iter, param.display) == ("inv", 10000, 100)
    assert param.type == "SGD"
    assert param.snapshot_prefix == "examples/mnist/lenet"
    assert param.solver_mode == caffe_pb2.SolverParameter.GPU


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="caffe-examples absent")
def test_example_multistep_and_adam() -> None:
    multi = load_solver(EXAMPLES / "mnist__lenet_multistep_solver.prototxt")
    assert list(multi.stepvalue) == [5000, 7000, 8000, 9000, 9500]
    adam = load_solver(EXAMPLES / "mnist__lenet_solver_adam.prototxt")
    assert adam.type == "Adam"
    assert adam.momentum2 == pytest.approx(0.999)


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="caffe-examples absent")
def test_consolidated_solver_inline_net_and_test_states() -> None:
    path = EXAMPLES / "mnist__lenet_consolidated_solver.prototxt"
    param = load_solver(path)
    train = train_net_spec(param, path)
    assert train.state.phase == caffe_pb2.TRAIN
    assert train.net_param.state == train.state
    assert train.origin == "net_param"
    assert len(train.net_param.layers) > 0  # V1 `layers` parse as they are
    tests = test_net_specs(param, path)
    assert [list(t.state.stage) for t in tests] == [
        ["test-on-test-set"],
        ["test-on-train-set"],
    ]
    assert all(t.state.phase == caffe_pb2.TEST for t in tests)
    assert all(t.origin == "net_param" for t in tests)


# -- parse errors --------------------------------------------------------------


def test_syntax_error_keeps_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'net: "n.prototxt"\nbase_lr: 0.01\nmax_iter: {\n')
    text = error_of(path)
    assert text.startswith(f"{path}:3:")


def test_unknown_field_suggests_the_real_one(tmp_path: Path) -> None:
    path = write(tmp_path, 'net: "n.prototxt"\nbase_lR: 0.01\n')
    text = error_of(path)
    assert text.startswith(f"{path}:2:")
    assert "base_lR" in text and "did you mean `base_lr`" in text


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in error_of(tmp_path / "nope.prototxt")


# -- solver_type upgrade, snapshot_prefix ----------------------------------------


@pytest.mark.parametrize(
    ("enum", "name"),
    [
        ("SGD", "SGD"),
        ("NESTEROV", "Nesterov"),
        ("ADAGRAD", "AdaGrad"),
        ("RMSPROP", "RMSProp"),
        ("ADADELTA", "AdaDelta"),
        ("ADAM", "Adam"),
    ],
)
def test_solver_type_enum_upgrades_to_type(
    tmp_path: Path, enum: str, name: str
) -> None:
    write(tmp_path, NET, "net.prototxt")
    param = load_solver(write(tmp_path, BASE + f"solver_type: {enum}\n"))
    assert param.type == name
    assert not param.HasField("solver_type")


def test_solver_type_and_type_both_set(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + 'solver_type: ADAM\ntype: "Adam"\n')
    text = error_of(path)
    assert str(path) in text and "solver_type" in text and "type" in text


def test_set_type_replaces_file_solver_type(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "solver_type: NESTEROV\n")
    assert load_solver(path, ["type=Adam"]).type == "Adam"
    assert load_solver(path, ["solver_type=ADAGRAD"]).type == "AdaGrad"


def test_snapshot_prefix_defaults_like_caffe(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert load_solver(path).snapshot_prefix == str(tmp_path / "solver")
    (tmp_path / "snaps").mkdir()
    given = write(tmp_path, BASE + f'snapshot_prefix: "{tmp_path / "snaps"}"\n')
    assert load_solver(given).snapshot_prefix == str(tmp_path / "snaps" / "solver")
    plain = write(tmp_path, BASE + 'snapshot_prefix: "out/lenet"\n')
    assert load_solver(plain).snapshot_prefix == "out/lenet"


# -- --set overrides -----------------------------------------------------------


def test_set_overrides_types_and_enums(solver: Path) -> None:
    param = load_solver(
        solver,
        [
            "lr_policy=step",
            "stepsize=2000",
            "gamma=0.5",
            "solver_mode=CPU",
            "debug_info=true",
            "net=other.prototxt",
            'snapshot_prefix="quoted/x"',
        ],
    )
    assert (param.lr_policy, param.stepsize) == ("step", 2000)
    assert param.gamma == 0.5
    assert param.solver_mode == caffe_pb2.SolverParameter.CPU
    assert param.debug_info is True
    assert param.net == "other.prototxt"
    assert param.snapshot_prefix == "quoted/x"


def test_set_repeated_replaces_then_appends(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "stepvalue: 10\nstepvalue: 20\n")
    assert list(load_solver(path, ["stepvalue=1000,2000"]).stepvalue) == [1000, 2000]
    appended = load_solver(path, ["stepvalue=5", "stepvalue=6,7"])
    assert list(appended.stepvalue) == [5, 6, 7]
    assert list(load_solver(path).stepvalue) == [10, 20]


def test_set_message_field() -> None:
    param = caffe_pb2.SolverParameter()
    apply_overrides(param, ['train_state=stage: "big" level: 2'])
    assert list(param.train_state.stage) == ["big"]
    assert param.train_state.level == 2
    apply_overrides(param, ['train_state={stage: "small"}'])
    assert list(param.train_state.stage) == ["small"]
    assert param.train_state.level == 0


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("base_lR=0.1", ["base_lR", "did you mean `base_lr`"]),
        ("stepsize", ["expected key=value"]),
        ("=3", ["expected key=value"]),
        ("base_lr=fast", ["base_lr", "fast"]),
        ("stepsize=1.5", ["stepsize", "1.5"]),
        ("solver_mode=TPU", ["solver_mode", "CPU, GPU"]),
    ],
)
def test_set_errors_name_the_key(solver: Path, item: str, words: list[str]) -> None:
    text = error_of(solver, (item,))
    assert text.startswith(f"{solver}: --set {item}: ")
    for w in words:
        assert w in text


# -- validation: every check ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (BASE + "average_loss: 0\n", "average_loss"),
        (BASE + "iter_size: 0\n", "iter_size"),
        ("base_lr: 0.1\nlr_policy: 'fixed'\n", "train net"),
        (BASE + 'train_net: "t.prototxt"\n', "net, train_net"),
        (BASE.replace('"fixed"', '"foo"'), "lr_policy"),
        (BASE.replace('"fixed"', '"step"'), "stepsize"),
        (BASE.replace('"fixed"', '"sigmoid"'), "stepsize"),
        (BASE.replace('"fixed"', '"exp"') + "gamma: -1\n", "gamma"),
        (BASE.replace('"fixed"', '"step"') + "stepsize: 5\ngamma: -1\n", "gamma"),
        (BASE.replace('"fixed"', '"inv"') + "gamma: -1\n", "gamma"),
        (BASE.replace('"fixed"', '"multistep"') + "gamma: -1\n", "gamma"),
        (
            BASE.replace('"fixed"', '"multistep"') + "stepvalue: 50\nstepvalue: 40\n",
            "stepvalue",
        ),
        (BASE.replace('"fixed"', '"poly"').replace("max_iter: 100", ""), "max_iter"),
        (BASE + "test_interval: 500\n", "test_iter"),
        (BASE + "test_iter: 10\ntest_interval: -5\n", "test_interval"),
        (
            BASE + "test_iter: 10\ntest_interval: 5\ntest_state {}\ntest_state {}\n",
            "test_state",
        ),
        (BASE + 'regularization_type: "L3"\n', "regularization_type"),
        (
            BASE.replace('net: "net.prototxt"', 'train_net: "net.prototxt"')
            + 'test_net: "net.prototxt"\ntest_interval: 5\n',
            "test_iter",
        ),
        (
            BASE.replace('net: "net.prototxt"', 'train_net: "net.prototxt"')
            + 'test_net: "net.prototxt"\ntest_iter: 1\ntest_iter: 2\n'
            + "test_interval: 5\n",
            "test_iter",
        ),
        (
            BASE + 'test_net: "a.prototxt"\ntest_net: "b.prototxt"\ntest_iter: 1\n'
            "test_interval: 5\n",
            "test_iter",
        ),
    ],
)
def test_validation_errors_name_file_and_field(
    tmp_path: Path, text: str, field: str
) -> None:
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}: ")
    assert field in message


def test_generic_net_gives_one_test_net_per_extra_test_iter(tmp_path: Path) -> None:
    write(tmp_path, NET, "net.prototxt")
    write(tmp_path, NET.replace("tiny", "special"), "special.prototxt")
    path = write(
        tmp_path,
        BASE + 'test_net: "special.prototxt"\ntest_iter: 1\ntest_iter: 2\n'
        "test_iter: 3\ntest_interval: 10\n"
        'test_state { stage: "a" }\ntest_state { stage: "b" }\n'
        'test_state { stage: "c" level: 4 }\n',
    )
    param = load_solver(path)
    specs = test_net_specs(param, path)
    assert [s.net_param.name for s in specs] == ["special", "tiny", "tiny"]
    assert [s.origin for s in specs] == [
        "test_net file: special.prototxt",
        "net file: net.prototxt",
        "net file: net.prototxt",
    ]
    assert [list(s.state.stage) for s in specs] == [["a"], ["b"], ["c"]]
    assert specs[2].state.level == 4
    assert all(s.net_param.state == s.state for s in specs)


def test_test_net_param_comes_before_test_net_files(tmp_path: Path) -> None:
    write(tmp_path, NET, "net.prototxt")
    path = write(
        tmp_path,
        'train_net: "net.prototxt"\ntest_net: "net.prototxt"\n'
        'test_net_param { name: "inline" }\ntest_iter: 1\ntest_iter: 1\n'
        'test_interval: 1\nlr_policy: "fixed"\n',
    )
    specs = test_net_specs(load_solver(path), path)
    assert [s.net_param.name for s in specs] == ["inline", "tiny"]
    assert specs[0].origin == "test_net_param"


def test_no_test_nets_without_test_iter(solver: Path) -> None:
    assert test_net_specs(load_solver(solver), solver) == []


# -- NetState precedence -------------------------------------------------------


def test_train_state_precedence(tmp_path: Path) -> None:
    write(tmp_path, NET + 'state { stage: "from-net" level: 1 }\n', "net.prototxt")
    path = write(tmp_path, BASE + 'train_state { stage: "from-solver" level: 3 }\n')
    spec = train_net_spec(load_solver(path), path)
    assert spec.state.phase == caffe_pb2.TRAIN
    assert list(spec.state.stage) == ["from-net", "from-solver"]
    assert spec.state.level == 3
    assert spec.net_param.state == spec.state
    assert spec.origin == "net file: net.prototxt"


def test_net_own_phase_overrides_solver_default_as_in_caffe(tmp_path: Path) -> None:
    """Caffe merges the net's state over phase TRAIN: an explicit phase wins."""
    write(tmp_path, NET + "state { phase: TEST }\n", "net.prototxt")
    path = write(tmp_path, BASE)
    assert train_net_spec(load_solver(path), path).state.phase == caffe_pb2.TEST


# -- net path resolution -------------------------------------------------------


def test_net_path_cwd_first_then_solver_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    solver_dir, work = tmp_path / "solvers", tmp_path / "work"
    solver_dir.mkdir()
    work.mkdir()
    write(solver_dir, NET, "net.prototxt")
    solver = write(solver_dir, BASE)
    monkeypatch.chdir(work)
    assert resolve_net_path("net.prototxt", solver) == solver_dir / "net.prototxt"
    write(work, NET.replace("tiny", "cwd"), "net.prototxt")
    assert resolve_net_path("net.prototxt", solver) == Path("net.prototxt")
    assert train_net_spec(load_solver(solver), solver).net_param.name == "cwd"
    absolute = solver_dir / "net.prototxt"
    assert resolve_net_path(str(absolute), solver) == absolute


def test_missing_net_names_every_path_tried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    solver_dir, work = tmp_path / "solvers", tmp_path / "work"
    solver_dir.mkdir()
    work.mkdir()
    solver = write(solver_dir, BASE.replace("net.prototxt", "nets/lenet.prototxt"))
    monkeypatch.chdir(work)
    with pytest.raises(ConfigError) as e:
        train_net_spec(load_solver(solver), solver)
    text = str(e.value)
    assert text.startswith(f"{solver}: net: ")
    assert str(work / "nets" / "lenet.prototxt") in text
    assert str(solver_dir / "nets" / "lenet.prototxt") in text


def test_net_file_syntax_error_names_net_file(tmp_path: Path) -> None:
    write(tmp_path, "layer { name: 'x' typo: 1 }\n", "net.prototxt")
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"net\.prototxt:1:"):
        train_net_spec(load_solver(path), path)


# -- misc ----------------------------------------------------------------------


def test_validate_false_skips_checks(tmp_path: Path) -> None:
    path = write(tmp_path, "base_lr: 0.1\n")
    param = load_solver(path, validate=False)
    with pytest.raises(ConfigError):
        validate_solver(param, str(path))


def test_warn_unimplemented(monkeypatch: pytest.MonkeyPatch, solver: Path) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(log.LOG, "streams", [buf])
    assert warn_unimplemented(load_solver(solver), str(solver)) == []
    param = load_solver(solver, ["debug_info=true", "snapshot_format=HDF5"])
    messages = warn_unimplemented(param, str(solver))
    assert len(messages) == 1
    assert messages[0].startswith(f"{solver}: debug_info ")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("W") and "debug_info" in lines[0]
