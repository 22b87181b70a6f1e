"""pycaffe's NetSpec: nets written as Python calls that build a NetParameter
(python/caffe/net_spec.py), for `caffe.NetSpec`, `caffe.layers`,
`caffe.params` and `caffe.to_proto`.

    from caffe import layers as L, params as P
    n = caffe.NetSpec()
    n.data, n.label = L.Data(source='train_lmdb', backend=P.Data.LMDB,
                             batch_size=64, ntop=2, transform_param=dict(scale=1/255))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20,
                            weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    open('train.prototxt', 'w').write(str(n.to_proto()))

The rules, which give the same layers (and so the same prototxt text) as
pycaffe for the same code:
- `L.<Type>(*bottoms, **fields)` is one layer; `ntop=k` gives k tops (a tuple;
  0 returns the layer itself), `in_place=True` makes its tops its bottoms.
- A keyword ending in `param` (`param=[dict(lr_mult=1)]`, `transform_param=`)
  is a LayerParameter field; any other goes into the type's own
  `<type>_param` message if that has the field, else into LayerParameter
  (`include=dict(phase=caffe.TRAIN)`, `loss_weight=`, `name=`).
- Values: a dict fills a message, a list of dicts adds repeated messages, a
  list extends a repeated field, a single value of a repeated field is a list
  of one.
- Names: a top assigned to the NetSpec (`n.conv1 = ...`) takes that name, and
  a layer is named after its first top; anything unnamed is `<Type><k>`,
  counting per type in the order the layers are first reached (bottoms
  first). Layers come out in that order.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from caffesolve.proto import caffe_pb2

Layers_ = OrderedDict[Any, caffe_pb2.LayerParameter]
Names = dict[Any, str]


def param_name_dict() -> dict[str, str]:
    """Layer type name -> its LayerParameter field prefix ('InnerProduct' ->
    'inner_product'), from the `<prefix>_param` fields of `<Type>Parameter`."""
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        message = field.message_type
        if field.name.endswith("_param") and message is not None:
            names[message.name.removesuffix("Parameter")] = field.name[: -len("_param")]
    return names


_PARAM_NAMES = param_name_dict()


def assign_proto(proto: Any, name: str, value: Any) -> None:
    """Set field `name` of `proto` from a Python value (the rules above);
    an unknown field raises AttributeError."""
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and isinstance(value, tuple):
        value = list(value)
    elif repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                message = field.add()
                for key, v in item.items():
                    assign_proto(message, key, v)
        else:
            field.extend(value)
    elif isinstance(value, dict):
        for key, v in value.items():
            assign_proto(field, key, v)
    else:
        setattr(proto, name, value)


class Top:
    """Top `n` of the layer `fn`: what layer calls take as bottoms."""

    def __init__(self, fn: Function, n: int) -> None:
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """Every layer this top needs, with generated names."""
        return to_proto(self)

    def _to_proto(self, layers: Layers_, names: Names, autonames: Counter[str]) -> None:
        self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer call: its type, bottoms (Tops) and fields."""

    def __init__(self, type_name: str, inputs: tuple[Any, ...], params: dict) -> None:
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(
                    f"{type_name} input {index} is not a Top (type is {type(bottom)})"
                )
        self.type_name = type_name
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = int(self.params.pop("ntop", 1))
        self.in_place = bool(self.params.pop("in_place", False))
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top: Top, names: Names, autonames: Counter[str]) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _name(self, names: Names, autonames: Counter[str]) -> str:
        """The layer's name: its first top's, or `<Type><k>` if it has none."""
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers: Layers_, names: Names, autonames: Counter[str]) -> None:
        if self in layers:
            return
        bottoms = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottoms.append(layers[bottom.fn].top[bottom.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(t, names, autonames) for t in self.tops)
        layer.name = self._name(names, autonames)
        for key, value in self.params.items():
            if key.endswith("param"):
                assign_proto(layer, key, value)
                continue
            try:
                own = getattr(layer, _PARAM_NAMES[self.type_name] + "_param")
                assign_proto(own, key, value)
            except (AttributeError, KeyError):
                assign_proto(layer, key, value)
        layers[self] = layer


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer the tops need (names generated)."""
    layers: Layers_ = OrderedDict()
    autonames: Counter[str] = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Named tops (`n.conv1 = L.Convolution(...)`, or `n['conv1']`); to_proto()
    builds the layers they need, named after them."""

    def __init__(self) -> None:
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name: str, value: Any) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["tops"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: str, value: Any) -> None:
        self.tops[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.tops[key]

    def to_proto(self) -> caffe_pb2.NetParameter:
        names: Names = {top: name for name, top in self.tops.items()}
        autonames: Counter[str] = Counter()
        layers: Layers_ = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """`L.<Type>(*bottoms, **fields)`: a layer call (caffe.layers)."""

    def __getattr__(self, type_name: str) -> Any:
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer(*bottoms: Top, **fields: Any) -> Any:
            fn = Function(type_name, bottoms, fields)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops

        return layer


class _Enums:
    """The constants of caffe_pb2.<Name>Parameter (`P.Pooling.MAX`)."""

    def __init__(self, name: str) -> None:
        self._message = getattr(caffe_pb2, name + "Parameter")

    def __getattr__(self, constant: str) -> Any:
        return getattr(self._message, constant)


class Parameters:
    """`P.<Name>.<CONSTANT>`: enum values of <Name>Parameter (caffe.params)."""

    def __getattr__(self, name: str) -> _Enums:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Enums(name)


layers = Layers()
params = Parameters()
