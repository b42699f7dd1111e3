"""Reading ONNX files with clear errors, and their input/output specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from edgesmith.toolchain.core.artifact import IoSpec, TensorSpec
from edgesmith.toolchain.core.errors import InvalidInput
from edgesmith.toolchain.core.files import require_file, sha256_file, sha256_json


def numpy_dtype(elem_type: int) -> str:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name


def _specs(values) -> tuple[TensorSpec, ...]:
    out = []
    for v in values:
        tt = v.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or f"{v.name}_{i}")
            for i, d in enumerate(tt.shape.dim)
        )
        out.append(TensorSpec(v.name, numpy_dtype(tt.elem_type), dims))
    return tuple(out)


def io_from_onnx(model: onnx.ModelProto) -> IoSpec:
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    return IoSpec(_specs(inputs), _specs(model.graph.output))


def check_onnx(path: Path, full_check: bool = False) -> onnx.ModelProto:
    """Load and check an ONNX file; a truncated or non-ONNX file is an InvalidInput.

    The checker runs on the path (not the proto) so models over 2 GB with external data work.
    `full_check` adds strict shape inference to the same pass (what an export is held to).
    Returns the model without external weights loaded.
    """
    path = require_file(Path(path), "ONNX model")
    if path.is_dir():
        raise InvalidInput(f"{path}: expected an .onnx file, got a directory")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path), full_check=full_check)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInput(f"{path}: not a valid ONNX model ({first})") from None
    except onnx.shape_inference.InferenceError as e:
        raise InvalidInput(f"{path}: shape inference failed ({str(e).splitlines()[0]})") from None
    except Exception as e:  # protobuf DecodeError and friends: the file is not ONNX
        raise InvalidInput(f"{path}: not an ONNX model or truncated ({type(e).__name__})") from None
    if not model.graph.output:
        raise InvalidInput(f"{path}: not an ONNX model (the graph has no outputs)")
    _check_external_extents(path, model)
    return model


def _check_external_extents(path: Path, model: onnx.ModelProto) -> None:
    """Every external tensor lies inside its data file. The checker vets the locations (inside
    the model's folder, no links out) but not the sizes; a short file would fail later, inside
    onnxruntime, as an internal error."""
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        data = Path(path).parent / info.get("location", "")
        offset = int(info.get("offset", 0))
        length = info.get("length")
        if length is None:  # the tensor's own size
            item = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            length = item * int(np.prod(t.dims, dtype=np.int64))
        size = data.stat().st_size if data.is_file() else -1
        if size < offset + int(length):
            raise InvalidInput(
                f"{path}: external data of '{t.name}' needs bytes {offset}..{offset + int(length)}"
                f" of {info.get('location')}, which has {max(size, 0)}"
            )


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """Relative locations of the external data files a model's initializers point to."""
    files = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in t.external_data if e.key == "location")
    return sorted(files)


def onnx_digest(path: Path, model: onnx.ModelProto | None = None) -> str:
    """Content hash of an ONNX model: the file alone, or the file and its external data."""
    path = Path(path)
    model = model if model is not None else onnx.load(str(path), load_external_data=False)
    extra = external_data_files(model)
    if not extra:
        return sha256_file(path)
    return sha256_json(
        {"model": sha256_file(path), **{f: sha256_file(path.parent / f) for f in extra}}
    )


class GraphIndex:
    """Producers, consumers and initializers of one graph, built once per pass over it.

    A pass that rewrites the graph calls `refresh()` after its edits (or builds a new index).
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.refresh()

    def refresh(self) -> None:
        g = self.model.graph
        self.initializers: dict[str, onnx.TensorProto] = {i.name: i for i in g.initializer}
        self.producers: dict[str, onnx.NodeProto] = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.nodes: dict[str, onnx.NodeProto] = {n.name: n for n in g.node}
        self.graph_outputs: set[str] = {o.name for o in g.output}

    def array(self, name: str) -> np.ndarray | None:
        """An initializer's values, or None when `name` is not an initializer."""
        t = self.initializers.get(name)
        return None if t is None else onnx.numpy_helper.to_array(t)

    def constant(self, tensor: str, limit: int = 16) -> np.ndarray | None:
        """The value of `tensor` when it is a small constant: an initializer or a Constant
        node of at most `limit` elements (a shape, a scale, a mask value; a weight is never
        converted to find out); else None."""
        t = self.initializers.get(tensor)
        if t is None:
            node = self.producers.get(tensor)
            if node is None or node.op_type != "Constant" or len(node.attribute) != 1:
                return None
            a = onnx.helper.get_attribute_value(node.attribute[0])
            if isinstance(a, onnx.TensorProto):
                t = a
            elif isinstance(a, int | float) or (
                isinstance(a, list) and all(isinstance(x, int | float) for x in a)
            ):
                v = np.array(a)
                return v if v.size <= limit else None
            else:
                return None
        if int(np.prod(t.dims)) > limit:
            return None
        return onnx.numpy_helper.to_array(t)

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        return self.consumers.get(tensor, [])

    def producer_name(self, tensor: str) -> str:
        """The name of the node that computes `tensor`; "" for graph inputs and initializers."""
        node = self.producers.get(tensor)
        return node.name if node is not None else ""


# torch.onnx's exporter records each node's Python stack trace (absolute paths of the machine
# and checkout that exported it, the user's own source lines) in the node's metadata.
STACK_TRACE = "pkg.torch.onnx.stack_trace"


def strip_stack_traces(model: onnx.ModelProto) -> int:
    """Remove the exporter's per-node stack traces, in place; returns how many. An export is
    then the same bytes wherever it is made, and carries no paths of the machine it was made
    on; the module scopes (which layer a node came from) stay."""
    removed = 0
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            keep = [p for p in node.metadata_props if p.key != STACK_TRACE]
            if len(keep) != len(node.metadata_props):
                removed += len(node.metadata_props) - len(keep)
                del node.metadata_props[:]
                node.metadata_props.extend(keep)
            graphs.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
    return removed


def gelu_as_onnxruntime_fuses(model: onnx.ModelProto) -> int:
    """Reorder each GELU torch's exporter writes, x * (0.5 * (1 + erf(x / √2))), into
    (x * (1 + erf(x / √2))) * 0.5, the order onnxruntime's GeluFusion matches (its two
    patterns put the 0.5 on x or last): without it the engine keeps Div, Erf, Add and two Muls
    per GELU where optimum's export gets one Gelu kernel. Multiplying by 0.5 is exact in
    floating point, so the outputs are the same bits. Returns how many were reordered."""
    index = GraphIndex(model)

    def const(tensor: str, value: float) -> bool:
        a = index.array(tensor)
        if a is None:
            node = index.producers.get(tensor)
            if node is None or node.op_type != "Constant" or not node.attribute:
                return False
            a = onnx.numpy_helper.to_array(node.attribute[0].t)
        return a.size == 1 and abs(float(a.reshape(-1)[0]) - value) < 1e-6

    def erf_of(add: str, x: str) -> bool:
        """add = Add(Erf(Div(x, √2)), 1)"""
        node = index.producers.get(add)
        if node is None or node.op_type != "Add" or len(node.input) != 2:
            return False
        for e, one in (node.input, node.input[::-1]):
            erf = index.producers.get(e)
            div = (
                index.producers.get(erf.input[0])
                if erf is not None and erf.op_type == "Erf"
                else None
            )
            if (
                const(one, 1.0)
                and div is not None
                and div.op_type == "Div"
                and div.input[0] == x
                and const(div.input[1], 2.0**0.5)
            ):
                return True
        return False

    count = 0
    for outer in model.graph.node:
        if outer.op_type != "Mul" or len(outer.input) != 2:
            continue
        for x, h in (outer.input, outer.input[::-1]):
            half = index.producers.get(h)
            if half is None or half.op_type != "Mul" or len(index.readers(h)) != 1:
                continue
            if h in index.graph_outputs:
                continue
            pair = [(c, a) for c, a in (half.input, half.input[::-1]) if const(c, 0.5)]
            if pair and erf_of(pair[0][1], x):
                c, a = pair[0]
                half.input[:] = [x, a]
                outer.input[:] = [h, c]
                count += 1
                break
    return count
