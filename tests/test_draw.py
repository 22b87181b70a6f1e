"""`caffesolve draw` (Caffe's draw_net.py): the picture Graphviz makes holds
every layer of the phase, as "name (Type)" boxes coloured by type, every blob
as a grey octagon, and one edge per bottom and top; the expectations are
LeNet's layers as configs/lenet_train_test.prototxt lists them."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffesolve.cli import cli

pytest.importorskip("pydot")

ROOT = Path(__file__).resolve().parents[1]
LENET = ROOT / "configs" / "lenet_train_test.prototxt"
SVG = "{http://www.w3.org/2000/svg}"


def draw(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["draw", *args])
    return result.exit_code, result.output


def svg_nodes(path: Path) -> tuple[dict[str, tuple[str, str]], int, list[str]]:
    """{text of a node: (its shape's fill, polygon point count)}, the edge
    count, and the edge labels."""
    root = ET.parse(path).getroot()
    nodes, edges, labels = {}, 0, []
    for g in root.iter(f"{SVG}g"):
        kind = g.get("class")
        texts = [t.text or "" for t in g.iter(f"{SVG}text")]
        if kind == "node":
            poly = g.find(f"{SVG}polygon")
            points = len(poly.get("points").split()) if poly is not None else 0
            fill = poly.get("fill") if poly is not None else ""
            nodes[" ".join(texts)] = (fill, points)
        elif kind == "edge":
            edges += 1
            labels += texts
    return nodes, edges, labels


def test_lenet_test_phase_svg(tmp_path: Path) -> None:
    out = tmp_path / "lenet.svg"
    code, output = draw(str(LENET), str(out), "--phase", "TEST")
    assert code == 0, output
    nodes, edges, labels = svg_nodes(out)
    red, orange, purple, blue, green = (
        "#ff5050",
        "#ff9900",
        "#cc33ff",
        "#6495ed",
        "#90ee90",
    )
    expected_layers = {
        "mnist (Data)": blue,
        "conv1 (Convolution) kernel size: 5 stride: 1 pad: 0": red,
        "pool1 (Pooling MAX) kernel size: 2 stride: 2 pad: 0": orange,
        "conv2 (Convolution) kernel size: 5 stride: 1 pad: 0": red,
        "pool2 (Pooling MAX) kernel size: 2 stride: 2 pad: 0": orange,
        "ip1 (InnerProduct)": purple,
        "relu1 (ReLU)": green,
        "ip2 (InnerProduct)": purple,
        "accuracy (Accuracy)": blue,
        "loss (SoftmaxWithLoss)": blue,
    }
    for text, fill in expected_layers.items():
        assert nodes[text][0] == fill, text
    blobs = ["data", "label", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2"]
    for name in blobs + ["accuracy", "loss"]:
        fill, points = nodes[name]
        assert (fill, points) == ("#e0e0e0", 9), name  # octagon: 8 points + close
    assert len(nodes) == len(expected_layers) + len(blobs) + 2
    # one edge per bottom and per top, layer by layer in prototxt order
    bottoms = 0 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 2 + 2
    tops = 2 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1
    assert edges == bottoms + tops
    assert sorted(t for t in labels if t) == sorted(
        ["Batch 100", "Batch 100", "20", "50", "500", "10"]
    )


def test_all_phases_png_top_to_bottom(tmp_path: Path) -> None:
    out = tmp_path / "lenet.png"
    code, output = draw(str(LENET), str(out), "--rankdir", "TB")
    assert code == 0, output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert height > width  # top to bottom
    dot = tmp_path / "lenet.dot"
    assert draw(str(LENET), str(dot))[0] == 0
    assert dot.read_text().count("(Data)") == 2  # ALL: the TRAIN and TEST inputs


def test_dot_text_needs_no_graphviz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "lenet.dot"
    code, output = draw(str(LENET), str(out), "--phase", "TRAIN")
    assert code == 0, output
    text = out.read_text()
    assert "rankdir=LR" in text and "(SoftmaxWithLoss)" in text
    assert "(Accuracy)" not in text  # a TEST-only layer
    code, output = draw(str(LENET), str(tmp_path / "lenet.png"))
    assert code == 1
    assert "needs Graphviz's `dot` program (not found)" in output
    assert "apt-get install graphviz" in output
    assert not (tmp_path / "lenet.png").exists()


def test_missing_pydot_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pydot", None)
    code, output = draw(str(LENET), str(tmp_path / "x.png"))
    assert code == 1
    assert (
        "caffesolve draw needs pydot (not installed): pip install 'caffesolve[draw]'"
        in output
    )


def test_unknown_format(tmp_path: Path) -> None:
    code, output = draw(str(LENET), str(tmp_path / "x.gif2"))
    assert code == 1
    assert "Graphviz does not write .gif2 files" in output
