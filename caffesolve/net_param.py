"""NetParameter passes before a Net exists (net.cpp's static helpers): the
include/exclude state rules, FilterNet, and InsertSplits (insert_splits.cpp).
The twin of solver_param.py: protos in, protos out, no layers.
"""

from __future__ import annotations

from collections import defaultdict

from caffesolve.errors import ConfigError
from caffesolve.log import LOG
from caffesolve.proto import caffe_pb2
from caffesolve.proto.io import suggest


def state_meets_rule(
    state: caffe_pb2.NetState,
    rule: caffe_pb2.NetStateRule,
    layer_name: str,
    log: bool = True,
) -> bool:
    """Caffe's Net::StateMeetsRule: phase equal, level within [min, max],
    every `stage` of the rule in the state, no `not_stage` in it."""
    why, line = "", 0
    if rule.HasField("phase") and rule.phase != state.phase:
        line = 296
        why = (
            f"The NetState phase ({state.phase}) differed from the phase "
            f"({rule.phase}) specified by a rule in layer {layer_name}"
        )
    elif rule.HasField("min_level") and state.level < rule.min_level:
        line = 306
        why = (
            f"The NetState level ({state.level}) is above the min_level "
            f"({rule.min_level}) specified by a rule in layer {layer_name}"
        )
    elif rule.HasField("max_level") and state.level > rule.max_level:
        line = 316
        why = (
            f"The NetState level ({state.level}) is above the max_level "
            f"({rule.max_level}) specified by a rule in layer {layer_name}"
        )
    else:
        stages = set(state.stage)
        missing = [s for s in rule.stage if s not in stages]
        present = [s for s in rule.not_stage if s in stages]
        if missing:
            line = 332
            why = (
                f"The NetState did not contain stage '{missing[0]}' specified "
                f"by a rule in layer {layer_name}"
            )
        elif present:
            line = 347
            why = (
                f"The NetState contained a not_stage '{present[0]}' specified "
                f"by a rule in layer {layer_name}"
            )
    if why and log:
        LOG.info(f"net.cpp:{line}", why)
    return not why


def filter_net(
    param: caffe_pb2.NetParameter, source: str = "<net>", log: bool = True
) -> caffe_pb2.NetParameter:
    """Caffe's Net::FilterNet: the layers `param.state` includes.

    With no include rules a layer is in unless an exclude rule is met; with
    include rules it is in only if one is met. Both kinds at once is an error.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for lp in param.layer:
        if len(lp.include) and len(lp.exclude):
            raise ConfigError(
                f"{source}: layer '{lp.name}' ({lp.type}): Specify either include "
                "rules or exclude rules; not both."
            )
        if lp.include:
            included = any(
                state_meets_rule(param.state, r, lp.name, log) for r in lp.include
            )
        else:
            included = not any(
                state_meets_rule(param.state, r, lp.name, log) for r in lp.exclude
            )
        if included:
            out.layer.add().CopyFrom(lp)
    return out


def split_layer_name(layer_name: str, blob_name: str, blob_idx: int) -> str:
    """Caffe's SplitLayerName: '{blob}_{layer}_{top index}_split'."""
    return f"{blob_name}_{layer_name}_{blob_idx}_split"


def split_blob_name(
    layer_name: str, blob_name: str, blob_idx: int, split_idx: int
) -> str:
    """Caffe's SplitBlobName: '{blob}_{layer}_{top index}_split_{j}'."""
    return f"{split_layer_name(layer_name, blob_name, blob_idx)}_{split_idx}"


def insert_splits(
    param: caffe_pb2.NetParameter, source: str = "<net>"
) -> caffe_pb2.NetParameter:
    """Caffe's InsertSplits: a Split layer after every top used more than once.

    A top counts one use per consuming bottom, plus one if it has a non-zero
    explicit loss_weight. A used-more-than-once top gets a Split layer right
    after its producer; consumers read the split's tops in order. If the top
    was weighted, the split's first top carries the weight (and is consumed
    by nobody) and the producer's loss_weight list is cleared.
    """
    last_top: dict[str, tuple[int, int]] = {}
    source_top: dict[tuple[int, int], tuple[int, int]] = {}
    use_count: dict[tuple[int, int], int] = defaultdict(int)
    loss_weight: dict[tuple[int, int], float] = defaultdict(float)
    for i, lp in enumerate(param.layer):
        for j, blob_name in enumerate(lp.bottom):
            if blob_name not in last_top:
                raise ConfigError(
                    f"{source}: Unknown bottom blob '{blob_name}' (layer "
                    f"'{lp.name}', bottom index {j})"
                    + suggest(blob_name, list(last_top))
                )
            top_idx = last_top[blob_name]
            source_top[(i, j)] = top_idx
            use_count[top_idx] += 1
        for j, blob_name in enumerate(lp.top):
            last_top[blob_name] = (i, j)
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            top_idx = last_top[lp.top[j]]
            loss_weight[top_idx] = lp.loss_weight[j]
            if lp.loss_weight[j]:
                use_count[top_idx] += 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = defaultdict(int)
    for i, original in enumerate(param.layer):
        lp = out.layer.add()
        lp.CopyFrom(original)
        for j in range(len(lp.bottom)):
            top_idx = source_top[(i, j)]
            if use_count[top_idx] > 1:
                producer = param.layer[top_idx[0]].name
                lp.bottom[j] = split_blob_name(
                    producer, lp.bottom[j], top_idx[1], next_split[top_idx]
                )
                next_split[top_idx] += 1
        for j, blob_name in enumerate(lp.top):
            count = use_count[(i, j)]
            if count <= 1:
                continue
            weight = loss_weight[(i, j)]
            split = out.layer.add()
            split.name = split_layer_name(lp.name, blob_name, j)
            split.type = "Split"
            split.bottom.append(blob_name)
            for k in range(count):
                split.top.append(split_blob_name(lp.name, blob_name, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                lp.ClearField("loss_weight")
                next_split[(i, j)] += 1
    return out
