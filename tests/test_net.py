"""Net: filtering, wiring, splits, loss weights, backward flags, sharing, weights I/O.

After Caffe's test_net.cpp; every gradient is checked against a closed form
worked out here by hand (InnerProduct + EuclideanLoss), never against the
Net's own output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES

from caffesolve.blob import Blob
from caffesolve.errors import ConfigError, ShapeError
from caffesolve.layers import LAYERS
from caffesolve.layers.base import Layer
from caffesolve.net import Net
from caffesolve.net_param import (
    filter_net,
    insert_splits,
    split_blob_name,
    split_layer_name,
    state_meets_rule,
)
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import parse_prototxt_text, read_binaryproto, write_binaryproto

SRC = "test.prototxt"


def net_param(text: str) -> caffe_pb2.NetParameter:
    return parse_prototxt_text(text, caffe_pb2.NetParameter(), SRC)


def make_net(text: str, phase: int | None = None, seed: int = 1701, **kw) -> Net:
    return Net(
        net_param(text),
        phase,
        rng=np.random.default_rng(seed),
        source=SRC,
        quiet=True,
        **kw,
    )


def input_layer(name: str, tops: dict[str, tuple[int, ...]]) -> str:
    top_lines = "".join(f' top: "{t}"' for t in tops)
    shapes = "".join(
        " shape {" + "".join(f" dim: {d}" for d in s) + " }" for s in tops.values()
    )
    head = f'layer {{ name: "{name}" type: "Input"{top_lines}'
    return f"{head} input_param {{{shapes} }} }}\n"


def ip_layer(name: str, bottom: str, top: str, n: int | str, extra: str = "") -> str:
    return (
        f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" '
        f'top: "{top}" {extra} inner_product_param {{ num_output: {n} '
        'weight_filler { type: "gaussian" std: 0.5 } '
        'bias_filler { type: "gaussian" std: 0.5 } } }\n'
    )


def euclid(name: str, a: str, b: str, extra: str = "") -> str:
    return (
        f'layer {{ name: "{name}" type: "EuclideanLoss" bottom: "{a}" '
        f'bottom: "{b}" top: "{name}" {extra} }}\n'
    )


def fill_inputs(net: Net, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for blob in net.input_blobs:
        blob.data[...] = rng.uniform(-1, 1, blob.shape)


def W(net: Net, layer: str, i: int = 0) -> np.ndarray:
    return net.layer_by_name(layer).blobs[i].data.astype(np.float64)


def dW(net: Net, layer: str, i: int = 0) -> np.ndarray:
    return net.layer_by_name(layer).blobs[i].diff.astype(np.float64)


def x64(net: Net, blob: str) -> np.ndarray:
    return net.blob_by_name(blob).data.astype(np.float64)


def ip(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1) @ w.T + b


# -- filtering by NetState (Caffe's FilterNet tests) -------------------------

FILTER_NET = (
    input_layer("always", {"a": (1,)})
    + 'layer { name: "train" type: "Input" top: "b" include { phase: TRAIN } }\n'
    + 'layer { name: "test" type: "Input" top: "c" include { phase: TEST } }\n'
    + 'layer { name: "not_test" type: "Input" top: "d" exclude { phase: TEST } }\n'
    + 'layer { name: "s1" type: "Input" top: "e" include { stage: "s1" } }\n'
    + 'layer { name: "s1_and_s2" type: "Input" top: "f" '
    + 'include { stage: "s1" stage: "s2" } }\n'
    + 'layer { name: "s1_or_s2" type: "Input" top: "g" '
    + 'include { stage: "s1" } include { stage: "s2" } }\n'
    + 'layer { name: "not_s1" type: "Input" top: "h" include { not_stage: "s1" } }\n'
    + 'layer { name: "level_ge2" type: "Input" top: "i" include { min_level: 2 } }\n'
    + 'layer { name: "level_le1" type: "Input" top: "j" include { max_level: 1 } }\n'
    + 'layer { name: "test_s2" type: "Input" top: "k" '
    + "include { phase: TEST stage: "
    + '"s2" } }\n'
)


@pytest.mark.parametrize(
    ("phase", "stages", "level", "expected"),
    [
        (
            caffe_pb2.TRAIN,
            [],
            0,
            ["always", "train", "not_test", "not_s1", "level_le1"],
        ),
        (caffe_pb2.TEST, [], 0, ["always", "test", "not_s1", "level_le1"]),
        (
            caffe_pb2.TRAIN,
            ["s1"],
            0,
            ["always", "train", "not_test", "s1", "s1_or_s2", "level_le1"],
        ),
        (
            caffe_pb2.TRAIN,
            ["s1", "s2"],
            0,
            ["always", "train", "not_test", "s1", "s1_and_s2", "s1_or_s2", "level_le1"],
        ),
        (
            caffe_pb2.TEST,
            ["s2"],
            2,
            ["always", "test", "s1_or_s2", "not_s1", "level_ge2", "test_s2"],
        ),
        (
            caffe_pb2.TRAIN,
            [],
            1,
            ["always", "train", "not_test", "not_s1", "level_le1"],
        ),
    ],
)
def test_filter_net_phase_stage_level(
    phase: int, stages: list[str], level: int, expected: list[str]
) -> None:
    param = net_param(FILTER_NET)
    param.state.phase = phase
    param.state.stage.extend(stages)
    param.state.level = level
    assert [lp.name for lp in filter_net(param, log=False).layer] == expected
    # The Net applies the same filter from its phase/stages/level arguments.
    net = Net(net_param(FILTER_NET), phase, stages=stages, level=level, quiet=True)
    assert net.layer_names == expected
    assert net.phase == phase


def test_state_meets_rule_uses_state_phase_by_default() -> None:
    param = net_param(FILTER_NET)
    param.state.phase = caffe_pb2.TEST
    assert "test" in Net(param, quiet=True).layer_names
    assert "train" in Net(param, caffe_pb2.TRAIN, quiet=True).layer_names
    rule = caffe_pb2.NetStateRule(min_level=1, max_level=3)
    assert [state_meets_rule(caffe_pb2.NetState(level=v), rule, "x", False)
            for v in range(5)] == [False, True, True, True, False]  # fmt: skip


def test_include_and_exclude_together_is_an_error() -> None:
    text = (
        'layer { name: "bad" type: "Input" top: "a" include { phase: TRAIN } '
        "exclude { phase: TEST } }"
    )
    with pytest.raises(ConfigError, match="layer 'bad'.*either include rules or"):
        make_net(text)


# -- wiring ------------------------------------------------------------------


def test_unknown_bottom_names_layer_and_index() -> None:
    text = input_layer("data", {"data": (2, 3)}) + ip_layer("ip", "dat", "ip", 2)
    with pytest.raises(ConfigError) as e:
        make_net(text)
    assert str(e.value) == (
        "test.prototxt: Unknown bottom blob 'dat' (layer 'ip', bottom index 0)"
        " (did you mean `data`?)"
    )


def test_unknown_layer_type_names_source_and_layer() -> None:
    text = 'layer { name: "x" type: "Foo" top: "x" }'
    with pytest.raises(ConfigError, match=r"^test\.prototxt: layer 'x'.*Unknown layer "
                       r"type: Foo \(known types: .*InnerProduct"):  # fmt: skip
        make_net(text)


def test_incompatible_shapes_name_the_layer() -> None:
    text = input_layer("data", {"a": (4, 2), "b": (4, 3)}) + euclid("loss", "a", "b")
    with pytest.raises(ShapeError, match=r"^test\.prototxt: layer 'loss' "
                       r"\(EuclideanLoss\)"):  # fmt: skip
        make_net(text)


def test_duplicate_top_is_an_error_unless_in_place() -> None:
    text = (
        input_layer("data", {"data": (2, 3)})
        + ip_layer("ip1", "data", "out", 2)
        + ip_layer("ip2", "data", "out", 2)
    )
    with pytest.raises(ConfigError, match="Top blob 'out' produced by multiple"):
        make_net(text)


def test_in_place_layer_shares_its_blob() -> None:
    text = (
        input_layer("data", {"data": (2, 3)})
        + ip_layer("ip", "data", "ip", 4)
        + 'layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }'
    )
    net = make_net(text)
    relu = net.layer_names.index("relu")
    assert net.top_vecs[relu][0] is net.bottom_vecs[relu][0]
    assert net.blob_names == ["data", "ip"]
    assert net.output_blob_names == ["ip"]
    fill_inputs(net)
    net.forward()
    expected = np.maximum(ip(x64(net, "data"), W(net, "ip"), W(net, "ip", 1)), 0)
    np.testing.assert_allclose(net.blob_by_name("ip").data, expected, rtol=1e-5)


def test_outputs_are_unconsumed_tops_in_name_order() -> None:
    text = (
        input_layer("data", {"data": (4, 3), "label": (4,)})
        + ip_layer("ip", "data", "ip", 5)
        + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" '
        'bottom: "label" top: "loss" }\n'
        + 'layer { name: "accuracy" type: "Accuracy" bottom: "ip" '
        'bottom: "label" top: "accuracy" }\n'
    )
    net = make_net(text)
    assert net.output_blob_names == ["accuracy", "loss"]
    assert net.output_loss_weights == [0.0, 1.0]
    assert net.output_blobs[1] is net.blob_by_name("loss")
    assert net.input_blobs == [net.blob_by_name("data"), net.blob_by_name("label")]
    # The Accuracy layer and the label contribute no gradient.
    assert not net.layer_need_backward[net.layer_names.index("accuracy")]
    assert net.bottom_need_backward[net.layer_names.index("loss")] == [True, False]


def test_auto_top_blobs_are_anonymous(monkeypatch: pytest.MonkeyPatch) -> None:
    class TwoTops(Layer):
        type = "TestTwoTops"
        exact_num_bottom_blobs = 1
        exact_num_top_blobs = 2
        auto_top_blobs = True

        def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
            for t in top:
                t.reshape(bottom[0].shape)

        def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
            for t in top:
                t.data[...] = bottom[0].data

    monkeypatch.setitem(LAYERS, "TestTwoTops", TwoTops)
    text = input_layer("data", {"data": (2,)}) + (
        'layer { name: "two" type: "TestTwoTops" bottom: "data" top: "one" }'
    )
    net = make_net(text)
    assert net.blob_names == ["data", "one", "(automatic)"]
    assert len(net.top_vecs[1]) == 2
    assert net.output_blob_names == ["one"]


# -- splits ------------------------------------------------------------------


def test_insert_splits_names_like_caffe() -> None:
    text = (
        input_layer("data", {"data": (2, 3)})
        + ip_layer("ipA", "data", "a", 2)
        + ip_layer("ipB", "data", "b", 2)
    )
    split = insert_splits(net_param(text))
    assert [lp.name for lp in split.layer] == [
        "data",
        "data_data_0_split",
        "ipA",
        "ipB",
    ]
    s = split.layer[1]
    assert s.type == "Split" and list(s.bottom) == ["data"]
    assert list(s.top) == ["data_data_0_split_0", "data_data_0_split_1"]
    assert list(split.layer[2].bottom) == ["data_data_0_split_0"]
    assert list(split.layer[3].bottom) == ["data_data_0_split_1"]
    assert split_layer_name("L", "b", 1) == "b_L_1_split"
    assert split_blob_name("L", "b", 1, 2) == "b_L_1_split_2"


TWO_BRANCHES = (
    input_layer("data", {"data": (4, 3), "ta": (4, 2), "tb": (4, 2)})
    + ip_layer("ip0", "data", "h", 5)
    + ip_layer("ipA", "h", "a", 2)
    + ip_layer("ipB", "h", "b", 2)
    + euclid("lossA", "a", "ta", "{wa}")
    + euclid("lossB", "b", "tb")
)


def two_branch_reference(net: Net, wa: float) -> tuple[float, dict[str, np.ndarray]]:
    """Closed form: L = wa*|a-ta|^2/2N + |b-tb|^2/2N, a = ipA(ip0(x)), ..."""
    x, ta, tb = x64(net, "data"), x64(net, "ta"), x64(net, "tb")
    n = len(x)
    h = ip(x, W(net, "ip0"), W(net, "ip0", 1))
    a = ip(h, W(net, "ipA"), W(net, "ipA", 1))
    b = ip(h, W(net, "ipB"), W(net, "ipB", 1))
    loss = wa * ((a - ta) ** 2).sum() / (2 * n) + ((b - tb) ** 2).sum() / (2 * n)
    da, db = wa * (a - ta) / n, (b - tb) / n
    dh = da @ W(net, "ipA") + db @ W(net, "ipB")  # the Split's sum
    return loss, {
        "ipA": da.T @ h,
        "ipB": db.T @ h,
        "ip0": dh.T @ x,
        "ip0_bias": dh.sum(0),
    }


@pytest.mark.parametrize("wa", [1.0, 2.5, 0.0])
def test_split_sums_gradients_and_loss_weight_scales(wa: float) -> None:
    extra = f"loss_weight: {wa}" if wa != 1.0 else ""
    net = make_net(TWO_BRANCHES.replace("{wa}", extra))
    assert "h_ip0_0_split" in net.layer_names
    fill_inputs(net)
    loss = net.forward_backward()
    ref_loss, ref = two_branch_reference(net, wa)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name in ("ipA", "ipB", "ip0"):
        np.testing.assert_allclose(dW(net, name), ref[name], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dW(net, "ip0", 1), ref["ip0_bias"], rtol=1e-4, atol=1e-6)
    if wa == 0.0:
        # lossA weighs nothing: neither it nor ipA needs backward.
        assert not net.layer_need_backward[net.layer_names.index("ipA")]
        assert not net.layer_need_backward[net.layer_names.index("lossA")]


def test_param_diffs_accumulate_over_backward_calls() -> None:
    net = make_net(TWO_BRANCHES.replace("{wa}", ""))
    fill_inputs(net)
    net.forward_backward()
    once = dW(net, "ip0").copy()
    net.forward_backward()
    np.testing.assert_allclose(dW(net, "ip0"), 2 * once, rtol=1e-6)
    net.clear_param_diffs()
    assert not dW(net, "ip0").any()


def test_loss_weighted_top_also_consumed_gets_a_split() -> None:
    """An IP top with loss_weight 0.5 that also feeds a loss (TestLossWeightMidNet):
    L = 0.5*sum(h) + |ipA(h) - ta|^2/2N."""
    text = (
        input_layer("data", {"data": (4, 3), "ta": (4, 2)})
        + ip_layer("ip0", "data", "h", 5, "loss_weight: 0.5")
        + ip_layer("ipA", "h", "a", 2)
        + euclid("lossA", "a", "ta")
    )
    param = insert_splits(net_param(text))
    split = param.layer[2]
    assert split.name == "h_ip0_0_split"
    assert list(split.top) == ["h_ip0_0_split_0", "h_ip0_0_split_1"]
    assert list(split.loss_weight) == [0.5, 0.0]
    assert not param.layer[1].loss_weight  # moved to the split
    assert list(param.layer[3].bottom) == ["h_ip0_0_split_1"]

    net = make_net(text)
    assert net.output_blob_names == ["h_ip0_0_split_0", "lossA"]
    assert net.output_loss_weights == [0.5, 1.0]
    fill_inputs(net)
    loss = net.forward_backward()
    x, ta = x64(net, "data"), x64(net, "ta")
    h = ip(x, W(net, "ip0"), W(net, "ip0", 1))
    a = ip(h, W(net, "ipA"), W(net, "ipA", 1))
    assert loss == pytest.approx(0.5 * h.sum() + ((a - ta) ** 2).sum() / 8, rel=1e-5)
    dh = 0.5 + ((a - ta) / 4) @ W(net, "ipA")
    np.testing.assert_allclose(dW(net, "ip0"), dh.T @ x, rtol=1e-4, atol=1e-6)


# -- which layers need backward ----------------------------------------------


def lr(mult: float) -> str:
    return f"param {{ lr_mult: {mult} }} param {{ lr_mult: {mult} }}"


def test_lr_mult_zero_no_param_diff_and_layers_below_skipped() -> None:
    text = (
        input_layer("data", {"data": (4, 3), "t": (4, 2)})
        + ip_layer("ip0", "data", "h0", 5, lr(0))
        + ip_layer("ip1", "h0", "h1", 4, lr(0))
        + ip_layer("ip2", "h1", "out", 2)
        + euclid("loss", "out", "t")
    )
    net = make_net(text)
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need == {
        "data": False,
        "ip0": False,
        "ip1": False,
        "ip2": True,
        "loss": True,
    }
    assert net.bottom_need_backward[net.layer_names.index("ip2")] == [False]
    assert net.layer_by_name("ip0").param_propagate_down == [False, False]
    assert net.params_lr == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    fill_inputs(net)
    net.forward_backward()
    assert not dW(net, "ip0").any() and not dW(net, "ip1").any()
    assert dW(net, "ip2").any()


def test_lr_mult_zero_in_the_middle_still_passes_gradient_down() -> None:
    text = (
        input_layer("data", {"data": (4, 3), "t": (4, 2)})
        + ip_layer("ip0", "data", "h0", 5)
        + ip_layer("ip1", "h0", "h1", 4, lr(0))
        + ip_layer("ip2", "h1", "out", 2)
        + euclid("loss", "out", "t")
    )
    net = make_net(text)
    assert net.layer_need_backward[net.layer_names.index("ip1")]
    fill_inputs(net)
    net.forward_backward()
    assert not dW(net, "ip1").any()
    x, t = x64(net, "data"), x64(net, "t")
    h0 = ip(x, W(net, "ip0"), W(net, "ip0", 1))
    h1 = ip(h0, W(net, "ip1"), W(net, "ip1", 1))
    out = ip(h1, W(net, "ip2"), W(net, "ip2", 1))
    dh0 = ((out - t) / 4) @ W(net, "ip2") @ W(net, "ip1")
    np.testing.assert_allclose(dW(net, "ip0"), dh0.T @ x, rtol=1e-4, atol=1e-6)


def test_propagate_down_false_skips_the_layers_below() -> None:
    text = (
        input_layer("data", {"data": (4, 3), "t": (4, 2)})
        + ip_layer("ip0", "data", "h0", 5)
        + ip_layer("ip1", "h0", "out", 2, "propagate_down: false")
        + euclid("loss", "out", "t")
    )
    net = make_net(text)
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need == {"data": False, "ip0": False, "ip1": True, "loss": True}
    fill_inputs(net)
    net.forward_backward()
    assert not dW(net, "ip0").any() and dW(net, "ip1").any()


def test_propagate_down_count_must_match_bottoms() -> None:
    text = input_layer("data", {"a": (4, 2), "b": (4, 2)}) + euclid(
        "loss", "a", "b", "propagate_down: true"
    )
    with pytest.raises(ConfigError, match="layer 'loss'.*propagate_down"):
        make_net(text)


@pytest.mark.parametrize("force", [False, True])
def test_force_backward(force: bool) -> None:
    text = (
        ("force_backward: true\n" if force else "")
        + input_layer("data", {"data": (4, 3), "label": (4,)})
        + ip_layer("ip", "data", "ip", 5)
        + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" '
        'bottom: "label" top: "loss" }\n'
    )
    net = make_net(text)
    fill_inputs(net)
    net.blob_by_name("label").data[...] = [0, 3, 1, 4]
    net.forward_backward()
    data = net.blob_by_name("data")
    assert net.bottom_need_backward[net.layer_names.index("ip")] == [force]
    # SoftmaxWithLoss never back-propagates into its labels.
    assert net.bottom_need_backward[net.layer_names.index("loss")] == [True, False]
    if not force:
        assert not data.diff.any()
        return
    x = x64(net, "data")
    z = ip(x, W(net, "ip"), W(net, "ip", 1))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(4), [0, 3, 1, 4]] -= 1
    np.testing.assert_allclose(data.diff, (p / 4) @ W(net, "ip"), rtol=1e-4, atol=1e-6)


# -- shared params -----------------------------------------------------------

SHARED = (
    input_layer("data", {"x1": (4, 3), "x2": (4, 3), "t1": (4, 2), "t2": (4, 2)})
    + ip_layer("ipA", "x1", "a", 2, 'param { name: "w" } param { lr_mult: 2 }')
    + ip_layer("ipB", "x2", "b", "{nb}", 'param { name: "w" {modeB} }')
    + euclid("lossA", "a", "t1")
    + euclid("lossB", "b", "t2")
)


def test_shared_weights_accumulate_diffs_in_one_blob() -> None:
    net = make_net(SHARED.replace("{nb}", "2").replace("{modeB}", "lr_mult: 3"))
    wa, wb = net.layer_by_name("ipA").blobs[0], net.layer_by_name("ipB").blobs[0]
    assert wa is wb
    assert len(net.params) == 4 and len(net.learnable_params) == 3
    assert net.param_owners == [-1, -1, 0, -1]
    # ipA's weight gave no lr_mult, so ipB's 3 becomes the shared one.
    assert net.params_lr == [3.0, 2.0, 1.0]
    fill_inputs(net)
    net.forward_backward()
    w = wa.data.astype(np.float64)
    x1, x2, t1, t2 = (x64(net, n) for n in ("x1", "x2", "t1", "t2"))
    a = ip(x1, w, W(net, "ipA", 1))
    b = ip(x2, w, W(net, "ipB", 1))
    expected = ((a - t1) / 4).T @ x1 + ((b - t2) / 4).T @ x2
    np.testing.assert_allclose(wa.diff, expected, rtol=1e-4, atol=1e-6)
    net.update()
    assert net.layer_by_name("ipB").blobs[0].data is wa.data


def test_shared_weights_shape_mismatch_names_layers_and_shapes() -> None:
    with pytest.raises(ShapeError) as e:
        make_net(SHARED.replace("{nb}", "3").replace("{modeB}", ""))
    assert (
        "Cannot share param 'w' owned by layer 'ipA' with layer 'ipB'; shape "
        "mismatch.  Owner layer param shape is 2 3 (6); sharing layer expects "
        "shape 3 3 (9)"
    ) in str(e.value)
    assert str(e.value).startswith("test.prototxt: layer 'ipB' (InnerProduct)")


def test_shared_weights_mismatched_lr_mult() -> None:
    text = SHARED.replace("{nb}", "2").replace("{modeB}", "lr_mult: 3")
    text = text.replace('param { name: "w" }', 'param { name: "w" lr_mult: 1 }', 1)
    with pytest.raises(ConfigError, match="Shared param 'w' has mismatched lr_mult"):
        make_net(text)


def test_permissive_sharing_checks_counts_and_shares_memory() -> None:
    text = SHARED.replace("{nb}", "2").replace("{modeB}", "share_mode: PERMISSIVE")
    # ipB transposed: weights 3x2 over ipA's 2x3 memory (counts agree).
    text = text.replace(
        'top: "b" param { name: "w" share_mode: PERMISSIVE } inner_product_param {',
        'top: "b" param { name: "w" share_mode: PERMISSIVE } inner_product_param { '
        "transpose: true",
    )
    net = make_net(text)
    wa, wb = net.layer_by_name("ipA").blobs[0], net.layer_by_name("ipB").blobs[0]
    assert wa.shape == (2, 3) and wb.shape == (3, 2)
    assert np.shares_memory(wa.data, wb.data) and np.shares_memory(wa.diff, wb.diff)
    bad = SHARED.replace("{nb}", "3").replace("{modeB}", "share_mode: PERMISSIVE")
    with pytest.raises(ShapeError, match="count mismatch"):
        make_net(bad)


def test_same_seed_same_weights() -> None:
    text = TWO_BRANCHES.replace("{wa}", "")
    a, b, c = make_net(text, seed=5), make_net(text, seed=5), make_net(text, seed=6)
    for pa, pb, pc in zip(a.learnable_params, b.learnable_params, c.learnable_params):
        assert np.array_equal(pa.data, pb.data)
        assert not np.array_equal(pa.data, pc.data)


def test_share_trained_layers_with_shares_data_not_diff() -> None:
    text = TWO_BRANCHES.replace("{wa}", "")
    train, test = make_net(text, seed=1), make_net(text, caffe_pb2.TEST, seed=2)
    test.share_trained_layers_with(train)
    for name in ("ip0", "ipA", "ipB"):
        t, s = test.layer_by_name(name).blobs[0], train.layer_by_name(name).blobs[0]
        assert t.data is s.data and t.diff is not s.diff


# -- weights in and out ------------------------------------------------------

IP_NET = input_layer("data", {"data": (2, 3)}) + ip_layer("ip", "data", "out", 4)


def test_caffemodel_round_trip_bit_for_bit(tmp_path: Path) -> None:
    src = make_net(TWO_BRANCHES.replace("{wa}", ""), seed=1)
    path = tmp_path / "w.caffemodel"
    write_binaryproto(path, src.to_proto())
    dst = make_net(TWO_BRANCHES.replace("{wa}", ""), seed=2)
    dst.copy_trained_layers_from(path)
    for a, b in zip(src.params, dst.params):
        assert a.data.tobytes() == b.data.tobytes()
    assert dst.to_proto().SerializeToString() == path.read_bytes()
    # The file is a NetParameter whose layers carry shapes and float data.
    saved = read_binaryproto(path, caffe_pb2.NetParameter())
    assert [lp.name for lp in saved.layer] == src.layer_names
    ip0 = saved.layer[src.layer_names.index("ip0")]
    assert list(ip0.blobs[0].shape.dim) == [5, 3] and len(ip0.blobs[1].data) == 5


def test_to_proto_write_diff() -> None:
    net = make_net(IP_NET)
    net.layer_by_name("ip").blobs[0].diff[...] = 0.25
    assert list(net.to_proto(write_diff=True).layer[1].blobs[0].diff) == [0.25] * 12
    assert not net.to_proto().layer[1].blobs[0].diff


def test_copy_trained_layers_absent_layer_keeps_filler_extra_ignored() -> None:
    text = TWO_BRANCHES.replace("{wa}", "")
    src, dst = make_net(text, seed=1), make_net(text, seed=2)
    before = dst.layer_by_name("ipB").blobs[0].data.copy()
    param = src.to_proto()
    del param.layer[src.layer_names.index("ipB")]
    param.layer.add(name="not_in_net", type="InnerProduct").blobs.add()
    dst.copy_trained_layers_from(param)
    assert np.array_equal(dst.layer_by_name("ipB").blobs[0].data, before)
    assert np.array_equal(W(dst, "ip0"), W(src, "ip0"))


def test_copy_trained_layers_mismatch_errors() -> None:
    net = make_net(IP_NET)
    param = make_net(IP_NET.replace("num_output: 4", "num_output: 5")).to_proto()
    with pytest.raises(ShapeError) as e:
        net.copy_trained_layers_from(param)
    assert str(e.value) == (
        "<NetParameter>: layer 'ip' (InnerProduct): Cannot copy param 0 weights "
        "from layer 'ip'; shape mismatch.  Source param shape is 5 3 (15); target "
        "param shape is 4 3 (12). To learn this layer's parameters from scratch "
        "rather than copying from a saved net, rename the layer."
    )
    param = net.to_proto()
    del param.layer[1].blobs[1]
    with pytest.raises(ShapeError, match="Incompatible number of blobs for layer ip "
                       r"\(file has 1, net has 2\)"):  # fmt: skip
        net.copy_trained_layers_from(param)


def test_copy_trained_layers_accepts_legacy_4d_shapes() -> None:
    net = make_net(IP_NET)
    param = caffe_pb2.NetParameter()
    lp = param.layer.add(name="ip")
    w = lp.blobs.add(num=1, channels=1, height=4, width=3)
    w.data.extend(range(12))
    b = lp.blobs.add(num=1, channels=1, height=1, width=4)
    b.data.extend([1, 2, 3, 4])
    net.copy_trained_layers_from(param)
    assert np.array_equal(W(net, "ip"), np.arange(12).reshape(4, 3))
    assert np.array_equal(W(net, "ip", 1), [1, 2, 3, 4])


def test_v1_caffemodel_loads(tmp_path: Path) -> None:
    """A legacy file: `layers { name type: INNER_PRODUCT blobs ... }`."""
    v1 = caffe_pb2.NetParameter(name="old")
    layer = v1.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    layer.bottom.append("data")
    layer.top.append("out")
    layer.blobs_lr.extend([1, 2])
    layer.inner_product_param.num_output = 4
    w = layer.blobs.add(num=1, channels=1, height=4, width=3)
    w.data.extend(np.linspace(-1, 1, 12).tolist())
    b = layer.blobs.add(num=1, channels=1, height=1, width=4)
    b.data.extend([0.5, -0.5, 0.25, 0])
    path = tmp_path / "old.caffemodel"
    write_binaryproto(path, v1)
    net = make_net(IP_NET)
    net.copy_trained_layers_from(path)
    np.testing.assert_array_equal(
        W(net, "ip"), np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    )
    np.testing.assert_array_equal(W(net, "ip", 1), [0.5, -0.5, 0.25, 0])
    # The same V1 message also builds a net of its own (its blobs are the
    # params; legacy 4-D shapes stay 4-D as in Caffe, so give N-D ones here).
    for blob, shape in zip(layer.blobs, [(4, 3), (4,)]):
        for f in ("num", "channels", "height", "width"):
            blob.ClearField(f)
        blob.shape.dim.extend(shape)
    v1.input.append("data")
    v1.input_dim.extend([2, 3, 1, 1])
    built = Net(v1, quiet=True)
    assert built.layer_names == ["input", "ip"]
    assert built.params_lr == [1.0, 2.0]
    fill_inputs(built)
    built.forward()
    expected = ip(x64(built, "data"), W(net, "ip"), W(net, "ip", 1))
    np.testing.assert_allclose(built.blob_by_name("out").data, expected, rtol=1e-6)


def test_hdf5_weights_round_trip(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    src = make_net(TWO_BRANCHES.replace("{wa}", ""), seed=1)
    path = tmp_path / "w.caffemodel.h5"
    src.to_hdf5(path)
    with h5py.File(path, "r") as f:
        assert f["data/ip0/0"].shape == (5, 3)
    dst = make_net(TWO_BRANCHES.replace("{wa}", ""), seed=2)
    dst.copy_trained_layers_from(path)
    for a, b in zip(src.params, dst.params):
        assert a.data.tobytes() == b.data.tobytes()
    bad = make_net(IP_NET)
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f.create_dataset("data/ip/0", data=np.zeros((4, 2), np.float32))
    with pytest.raises(ShapeError, match="layer 'ip'.*Source shape is 4 2 \\(8\\)"):
        bad.copy_trained_layers_from(tmp_path / "bad.h5")


def test_get_set_state_round_trip() -> None:
    net = make_net(IP_NET)
    state = net.get_state()
    assert isinstance(state, dict)
    net.set_state(state)


# -- LeNet from Caffe's own prototxt -----------------------------------------


def _conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Valid convolution, stride 1, by summing shifted products."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    out = np.zeros((n, o, h - kh + 1, wd - kw + 1))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + h - kh + 1, j : j + wd - kw + 1]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def _maxpool2_ref(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def test_lenet_deploy_forward_matches_numpy_reference() -> None:
    path = EXAMPLES / "mnist__lenet.prototxt"
    if not path.exists():
        pytest.skip("Caffe's examples are not here")
    if not {"Convolution", "Pooling"} <= set(LAYERS):
        pytest.skip("Convolution/Pooling not registered yet")
    from caffesolve.proto.upgrade import read_net_params_from_text_file

    param = read_net_params_from_text_file(path)
    param.layer[0].input_param.shape[0].dim[0] = 8  # a small batch
    net = Net(param, caffe_pb2.TEST, rng=np.random.default_rng(3), quiet=True)
    assert net.layer_names == [
        "data", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "prob"
    ]  # fmt: skip
    assert net.output_blob_names == ["prob"]
    rng = np.random.default_rng(4)
    for blob in net.learnable_params:  # fixed, non-trivial biases too
        blob.data[...] = rng.normal(0, 0.1, blob.shape)
    x = rng.uniform(0, 1, (8, 1, 28, 28)).astype(np.float32)
    net.blob_by_name("data").data[...] = x
    net.forward()
    h = _maxpool2_ref(
        _conv_ref(x.astype(np.float64), W(net, "conv1"), W(net, "conv1", 1))
    )
    h = _maxpool2_ref(_conv_ref(h, W(net, "conv2"), W(net, "conv2", 1)))
    h = np.maximum(ip(h, W(net, "ip1"), W(net, "ip1", 1)), 0)
    z = ip(h, W(net, "ip2"), W(net, "ip2", 1))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(net.blob_by_name("prob").data, p, rtol=1e-4, atol=1e-6)


def test_lenet_train_test_builds_both_phases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = EXAMPLES / "mnist__lenet_train_test.prototxt"
    if not path.exists():
        pytest.skip("Caffe's examples are not here")
    lmdb_source = pytest.importorskip("caffesolve.data.lmdb_source")
    pytest.importorskip("lmdb")
    from caffesolve.proto.upgrade import read_net_params_from_text_file

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for name in ("mnist_train_lmdb", "mnist_test_lmdb"):
        images = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, 16).astype(np.uint8)
        (tmp_path / "examples" / "mnist").mkdir(parents=True, exist_ok=True)
        lmdb_source.write_datum_lmdb(
            tmp_path / "examples" / "mnist" / name, images, labels
        )
    param = read_net_params_from_text_file(path)
    body = ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1"]

    train = Net(param, caffe_pb2.TRAIN, rng=np.random.default_rng(1), quiet=True)
    assert train.layer_names == ["mnist", *body, "ip2", "loss"]
    assert train.output_blob_names == ["loss"]
    assert train.blob_by_name("data").shape == (64, 1, 28, 28)
    loss = train.forward_backward()
    assert 1.5 < loss < 4  # about log(10) for a fresh net
    assert all(p.diff.any() for p in train.learnable_params)

    test = Net(param, caffe_pb2.TEST, rng=np.random.default_rng(1), quiet=True)
    assert test.layer_names == [
        "mnist", "label_mnist_1_split", *body, "ip2", "ip2_ip2_0_split",
        "accuracy", "loss",
    ]  # fmt: skip
    assert test.output_blob_names == ["accuracy", "loss"]
    assert test.output_loss_weights == [0.0, 1.0]
    test.share_trained_layers_with(train)
    test.forward()
    assert 0 <= float(test.blob_by_name("accuracy").data) <= 1


def test_construction_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from caffesolve.log import LOG

    buffer = io.StringIO()
    monkeypatch.setattr(LOG, "streams", [buffer])
    monkeypatch.setattr(LOG, "quiet", False)
    text = (
        input_layer("data", {"data": (2, 3), "t": (2, 4)})
        + ip_layer("ip", "data", "out", 4, 'param { name: "w" }')
        + ip_layer("ip_b", "data", "out_b", 4, 'param { name: "w" }')
        + euclid("loss", "out", "t", "loss_weight: 2")
    )
    Net(net_param(text), rng=np.random.default_rng(0), source=SRC)
    lines = [line.split("] ", 1)[1] for line in buffer.getvalue().splitlines()
             if "net.cpp:" in line]  # fmt: skip
    for expected in [
        "Creating Layer ip",
        "ip <- data_data_0_split_0",
        "ip -> out",
        "Setting up ip",
        "Top shape: 2 4 (8)",
        "    with loss weight 2",
        "Sharing parameters 'w' owned by layer 'ip', param index 0",
        "loss needs backward computation.",
        "ip_b does not need backward computation.",
        "This network produces output loss",
        "This network produces output out_b",
        "Network initialization done.",
    ]:
        assert expected in lines
    assert lines.index("Network initialization done.") == len(lines) - 1


def test_debug_info_logs_mean_abs_values(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from caffesolve.log import LOG

    text = "debug_info: true\n" + (
        input_layer("data", {"data": (4, 3), "t": (4, 2)})
        + ip_layer("ip", "data", "out", 2)
        + euclid("loss", "out", "t")
    )
    net = make_net(text)
    fill_inputs(net)
    buffer = io.StringIO()
    monkeypatch.setattr(LOG, "streams", [buffer])
    monkeypatch.setattr(LOG, "quiet", False)
    net.forward_backward()
    lines = [line.split("] ", 1)[1] for line in buffer.getvalue().splitlines()]

    def logged(prefix: str) -> float:
        (match,) = [x for x in lines if x.startswith(prefix)]
        return float(match[len(prefix) :])

    out = net.blob_by_name("out").data.astype(np.float64)
    mean_out = logged("    [Forward] Layer ip, top blob out data: ")
    assert mean_out == pytest.approx(np.abs(out).mean(), rel=1e-5)
    mean_diff = logged("    [Backward] Layer ip, param blob 0 diff: ")
    assert mean_diff == pytest.approx(np.abs(dW(net, "ip")).mean(), rel=1e-5)
    assert any(x.startswith("    [Backward] All net params (data, diff): L1 norm")
               for x in lines)  # fmt: skip


def test_reshape_follows_the_input_and_from_to_ranges(tmp_path: Path) -> None:
    """Caffe's TestReshape and TestFromTo: a new batch size flows through on
    the next forward; forward/backward over sub-ranges compose."""
    path = tmp_path / "net.prototxt"
    path.write_text(TWO_BRANCHES.replace("{wa}", ""))
    net = Net.from_prototxt(path, rng=np.random.default_rng(0), quiet=True)
    assert net.source == str(path)
    for name, shape in (("data", (7, 3)), ("ta", (7, 2)), ("tb", (7, 2))):
        net.blob_by_name(name).reshape(shape)
    fill_inputs(net)
    loss = net.forward()
    assert net.blob_by_name("h").shape == (7, 5)
    ref_loss, ref = two_branch_reference(net, 1.0)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    n = len(net.layers)
    split = net.layer_names.index("h_ip0_0_split")
    part = net.forward_from_to(0, split) + net.forward_from_to(split + 1, n - 1)
    assert part == pytest.approx(loss, rel=1e-6)
    net.backward_from_to(n - 1, split + 1)
    assert not dW(net, "ip0").any()  # not reached yet
    net.backward_from_to(split, 0)
    np.testing.assert_allclose(dW(net, "ip0"), ref["ip0"], rtol=1e-4, atol=1e-6)


class CountingNumpy:
    """numpy with a count of the arrays made by zeros/full: stands in for
    another backend's array module."""

    def __init__(self) -> None:
        self.made = 0

    def __getattr__(self, name: str) -> object:
        return getattr(np, name)

    def zeros(self, *args: object, **kwargs: object) -> np.ndarray:
        self.made += 1
        return np.zeros(*args, **kwargs)

    def full(self, *args: object, **kwargs: object) -> np.ndarray:
        self.made += 1
        return np.full(*args, **kwargs)


def test_backend_is_the_one_array_module_of_blobs_and_layers() -> None:
    from caffesolve.backend import Backend

    xp = CountingNumpy()
    param = parse_prototxt_text(IP_NET, caffe_pb2.NetParameter(), "<test>")
    net = Net(param, backend=Backend("TEST", xp), quiet=True)
    assert all(layer.xp is xp for layer in net.layers)
    blobs = net.blobs + [p for layer in net.layers for p in layer.blobs]
    assert all(b.xp is xp for b in blobs)
    assert xp.made >= 2 * len(blobs)  # data and diff of each, through xp
    default = Net(param, quiet=True)
    assert all(layer.xp is np for layer in default.layers)
