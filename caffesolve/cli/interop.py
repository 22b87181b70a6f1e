"""`caffesolve export`, `parse-log`, `plot` and `draw`: out of Caffe and into
today's runtimes, and Caffe's log and net pictures.
"""

from __future__ import annotations

import click

from caffesolve.cli import cli


def _batch_choice(value: str | None) -> int | str | None:
    """--batch: None (the net's own), a positive int, or 'dynamic'."""
    if value is None or value == "dynamic":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise click.BadParameter(
        f"'{value}' is neither a positive batch size nor 'dynamic'",
        param_hint="--batch",
    )


@cli.command("export")
@click.argument("net_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("weights", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    metavar="MODEL.onnx",
    help="Where to write the ONNX model.",
)
@click.option(
    "--opset",
    type=int,
    default=22,
    show_default=True,
    help="ONNX opset (22 or later).",
)
@click.option(
    "--batch",
    default=None,
    metavar="N|dynamic",
    help="Fix the batch size at N, or leave it open (dynamic)  "
    "[default: the net's own, fixed]",
)
@click.option(
    "--check",
    is_flag=True,
    help="Also run onnxruntime and caffesolve on the same random inputs and "
    "print the largest difference (fails above 1e-5 relative).",
)
def export_command(
    net_file: str, weights: str, output: str, opset: int, batch: str | None, check: bool
) -> None:
    """Write a deploy net and its weights as an ONNX model.

    \b
    caffesolve export configs/lenet.prototxt lenet_iter_10000.caffemodel -o lenet.onnx
    caffesolve export NET WEIGHTS -o model.onnx --batch dynamic --check

    Every layer maps to ONNX operators that compute what Caffe computes; a
    layer with no exact ONNX form is an error naming it, and nothing is written.
    """
    from caffesolve.errors import require_extra

    size = _batch_choice(batch)
    require_extra("onnx", "onnx", "caffesolve export needs onnx")
    if check:
        require_extra(
            "onnxruntime", "onnx", "caffesolve export --check needs onnxruntime"
        )
    from caffesolve.export import convert
    from caffesolve.log import fmt

    fixed = size if isinstance(size, int) else None
    net = convert.load_deploy_net(net_file, weights, fixed)
    model = convert.export_net(net, opset, dynamic_batch=size == "dynamic")
    if check:
        own = net.input_blobs[0].shape[0] if net.input_blobs else 1
        batches = [own] if size != "dynamic" else [own, 3 if own == 2 else 2]
        diffs = [
            d for n in batches for d in convert.compare_with_onnxruntime(net, model, n)
        ]
        worst = max(diffs, key=lambda d: d.max_rel)
        click.echo(
            f"onnxruntime vs caffesolve: largest difference {fmt(worst.max_abs)} "
            f"({fmt(worst.max_rel)} of the largest output) at output "
            f"'{worst.output}', batch {worst.batch}; {len(diffs)} outputs compared"
        )
        if not worst.max_rel <= convert.TOLERANCE:
            raise click.ClickException(
                f"{net_file}: onnxruntime differs from caffesolve by more than "
                f"{fmt(convert.TOLERANCE)} relative; {output} not written"
            )
    convert.write_model(model, output)
    shown = "dynamic" if size == "dynamic" else str(net.input_blobs[0].shape[0])
    click.echo(
        f"Wrote {output} (opset {opset}, IR version {model.ir_version}, batch "
        f"{shown}, {len(model.graph.node)} nodes)",
        err=True,
    )


@cli.command("parse-log")
@click.argument("log_file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for LOG.train and LOG.test  [default: the log's folder]",
)
def parse_log_command(log_file: str, out_dir: str | None) -> None:
    """Write a training log's train and test tables as CSV (parse_log.py).

    \b
    caffesolve parse-log train.log              # -> train.log.train, train.log.test
    caffesolve parse-log caffe.INFO --out csv/

    Columns: NumIters, Seconds (since "Solving"), LearningRate, then every
    net output. Caffe's logs and caffesolve's alike.
    """
    from caffesolve.logs import write_tables

    for path in write_tables(log_file, out_dir):
        click.echo(str(path))


def _curves(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@cli.command("plot")
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--out",
    default="curves.png",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="The picture (.png, .svg or .pdf).",
)
@click.option(
    "--x",
    "x_axis",
    type=click.Choice(["iters", "seconds"]),
    default="iters",
    show_default=True,
    help="Horizontal axis.",
)
@click.option(
    "--y",
    "curves",
    default="loss,accuracy,lr",
    show_default=True,
    help="Curves: loss (train and test), accuracy (test, own axis), lr.",
)
def plot_command(logs: tuple[str, ...], out: str, x_axis: str, curves: str) -> None:
    """Draw training and test curves from one or more training logs.

    \b
    caffesolve plot train.log
    caffesolve plot sgd.log adam.log --out compare.png --y loss,accuracy
    caffesolve plot train.log --x seconds --y lr
    """
    from caffesolve.plot import plot_logs

    plot_logs(list(logs), out, x_axis, _curves(curves))
    click.echo(f"Wrote {out}", err=True)


@cli.command("draw")
@click.argument("net_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False), metavar="OUT.png|svg")
@click.option(
    "--rankdir",
    type=click.Choice(["LR", "TB", "BT", "RL"]),
    default="LR",
    show_default=True,
    help="Layout direction: left to right, top to bottom, ...",
)
@click.option(
    "--phase",
    type=click.Choice(["TRAIN", "TEST", "ALL"], case_sensitive=False),
    default="ALL",
    show_default=True,
    help="Draw the layers of this phase only (ALL: every layer).",
)
def draw_command(net_file: str, out: str, rankdir: str, phase: str) -> None:
    """Draw a net prototxt as a graph, like Caffe's draw_net.py.

    \b
    caffesolve draw configs/lenet_train_test.prototxt lenet.png
    caffesolve draw NET.prototxt net.svg --rankdir TB --phase TEST
    caffesolve draw NET.prototxt net.dot     # DOT text, no Graphviz needed

    Needs pydot (pip install 'caffesolve[draw]') and Graphviz's dot program.
    """
    from caffesolve.draw import draw_net_file
    from caffesolve.proto import caffe_pb2

    chosen = None if phase.upper() == "ALL" else caffe_pb2.Phase.Value(phase.upper())
    draw_net_file(net_file, out, rankdir, chosen)
    click.echo(f"Wrote {out}", err=True)
