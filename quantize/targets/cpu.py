"""The x86 CPU target: FP32 graph rewrites around quantization for onnxruntime's CPU kernels.

The ``cpu`` form (`quantize.config.Target`) is made for onnxruntime's x86 CPU execution provider,
which fuses ``DequantizeLinear -> op -> QuantizeLinear`` units into integer QLinear* kernels and runs
them channels-last. `before_quantization` rewrites a copy of the FP32 graph so that the quantized
graph stays integer and channels-last between convolutions (`rewrite_for_cpu`, each rewrite exact up
to float rounding and checked on calibration inputs), gives every conv its own parameters
(`unshare_parameters`) and names the classifier nodes kept in float (`classifier_nodes`);
`after_quantization` runs ``Min`` on the integer tensors (`min_in_integers`). The patterns are the
LANMSFF family's (PWFS, MassAtt, TwoPath's channel shuffle); on other graphs they match nothing and
the graph is quantized as exported.

The quantization methods call these (`quantize.methods.ort_ptq` for the ``cpu`` target).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.backends.ort import make_session
from runtime.errors import ArtifactError, QuantizationError

log = logging.getLogger(__name__)


def before_quantization(
    model, samples: np.ndarray, *, input_name: str | None = None, rewrites: Sequence[str] | None = None
) -> tuple[Any, dict[str, Any], list[str]]:
    """The cpu form's FP32 preparation on a copy of ``model``: (rewritten copy, info, nodes to keep in float).

    ``samples`` (a few calibration inputs) check that the rewrites leave the FP32 outputs unchanged;
    ``rewrites`` picks which of `CPU_REWRITES` apply (None: all).
    """
    work = model.__class__()
    work.CopyFrom(model)
    chosen = CPU_REWRITES if rewrites is None else tuple(rewrites)
    info: dict[str, Any] = {"cpu_rewrites": rewrite_for_cpu(work, samples, input_name=input_name, rewrites=chosen)}
    info["unshared_parameters"] = unshare_parameters(work)
    head = classifier_nodes(work)
    info["float_classifier"] = head
    return work, info, list(head)


def after_quantization(quantized) -> dict[str, Any]:
    """The cpu form's rewrites of the quantized graph (in place); returns what was done."""
    return {"integer_min": min_in_integers(quantized)}


def unshare_parameters(model) -> int:
    """Give every Conv/ConvTranspose/Gemm its own weight and bias initializers (in place); returns copies made.

    onnxslim merges identical initializers, e.g. the all-zero biases of an untrained model. When a
    quantized conv shares its bias with a float ConvTranspose, the float op reads the quantized
    bias through a DequantizeLinear that runs on every call.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        for k in range(1, len(node.input)):
            name = node.input[k]
            if name not in inits:
                continue
            if name in seen:
                new = f"{name}/{node.name}"
                model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), new))
                node.input[k] = new
                copies += 1
            seen.add(name)
    return copies


def classifier_nodes(model) -> list[str]:
    """The cpu form keeps the classifier in float: the Gemm producing a graph output and a Concat feeding it.

    Their inputs are a few hundred pooled features per image: in INT8 they cost a Q per pooled
    feature vector plus QLinearConcat and QGemm, more than the float Concat + Gemm they replace,
    and the logits lose precision (measured on the dev LANMSFF: 7 QuantizeLinear fewer, mean
    |dlogit| 0.0276 -> 0.0259).
    """
    outputs = {o.name for o in model.graph.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    names = []
    for n in model.graph.node:
        if n.op_type == "Gemm" and any(o in outputs for o in n.output):
            names.append(n.name)
            src = producer.get(n.input[0])
            if src is not None and src.op_type == "Concat":
                names.append(src.name)
    return names


def min_in_integers(model) -> list[str]:
    """Run ``Min`` on the quantized tensors where all its inputs share one scale and zero point (in place).

    ``Min`` is monotonic, so for inputs quantized alike, ``min(DQ(a), DQ(b)) == DQ(min(a, b))``
    exactly; onnxruntime's CPU Min runs on uint8/int8. PWFS's ``Min(Min(a, b), c)`` reads three
    slices of one quantized tensor: this removes their three DequantizeLinear and the float Mins,
    and (when the Min result is requantized) the Quantize/Dequantize pair after them, so the
    pooled mean reads the integer Min directly. Returns the names of the Min nodes moved.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}

    def params(dq):
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) != 3:
            return None
        if dq.input[1] not in inits or dq.input[2] not in inits:
            return None
        scale, zero = numpy_helper.to_array(inits[dq.input[1]]), numpy_helper.to_array(inits[dq.input[2]])
        return (scale, zero) if scale.size == 1 and zero.size == 1 else None

    producer, consumers = _graph_maps(model)
    moved: list[str] = []
    for node in list(model.graph.node):  # topological: an earlier Min's new DQ is seen by the next Min
        if node.op_type != "Min":
            continue
        dqs = [producer.get(i) for i in node.input]
        ps = [params(d) for d in dqs]
        if (
            not ps
            or any(p is None for p in ps)
            or any(
                p[0].item() != ps[0][0].item() or p[1].item() != ps[0][1].item() or p[1].dtype != ps[0][1].dtype
                for p in ps
            )
        ):
            continue
        out = node.output[0]
        integer = f"{out}/integer"
        scale, zero = dqs[0].input[1], dqs[0].input[2]
        del node.input[:]
        node.input.extend(d.input[0] for d in dqs)
        node.output[0] = integer
        dq = helper.make_node("DequantizeLinear", [integer, scale, zero], [out], name=f"{node.name}/dq")
        model.graph.node.append(dq)
        producer[out] = dq
        # A requantization of the Min result (Q -> DQ) becomes the integer tensor with the inputs' scale:
        # its values lie within the inputs' range, so nothing is clipped and no rounding is added.
        for q in consumers.get(out, []):
            if q.op_type != "QuantizeLinear":
                continue
            for later in consumers.get(q.output[0], []):
                if later.op_type == "DequantizeLinear":
                    later.input[0], later.input[1], later.input[2] = integer, scale, zero
        moved.append(node.name)
    if moved:
        _prune(model)
        _toposort(model)
    return moved


# --- cpu form: graph rewrites before quantization ------------------------------------------------
#
# quantize_static quantizes the graph it is given, and onnxruntime's CPU session then fuses
# DQ -> op -> Q units into QLinear* kernels and runs them channels-last. Two LANMSFF patterns keep
# float islands (DQ -> float op -> Q, plus NCHW<->NHWC Transposes) in the middle of the INT8 graph:
#
# - ``Conv -> MaxPool -> Relu`` (the end of every block): the Relu after the pool cannot be folded
#   into the conv's output quantizer, so the pool runs in float between a DQ and a Q of different
#   scales. ``Relu`` and ``MaxPool`` commute exactly (max is monotonic), and ``Conv -> Relu ->
#   MaxPool`` quantizes to QLinearConv (Relu folded into its U8 output range) -> u8 MaxPool with
#   the same scale, both channels-last. (Written as an onnxscript pattern rule, like the
#   ReduceMean rewrites: `quantize.targets.cpu_rules`.)
# - PWFS (0.5·(max + median) over three channel groups, then a spatial mean into the classifier):
#   0.5·(max + median) = 0.5·(a + b + c - min(a, b, c)) because median = a + b + c - min - max, and
#   the spatial mean of the linear part is a linear function of the per-channel means, which folds
#   into the classifier Gemm's weights. What is left per block is ReduceMean(x) and
#   ReduceMean(Min(Min(a, b), c)): no Max, Add, Sub or Mul, and no requantization of their results.
#
# Every rewrite is exact up to float rounding; `rewrite_for_cpu` checks the rewritten FP32 graph
# against the original on the calibration inputs and keeps the original when they differ.

CPU_REWRITES = ("relu_before_maxpool", "pwfs_into_head", "fold_channel_shuffle", "reduce_mean_as_pool_and_conv")


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _graph_maps(model):
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


def _toposort(model) -> None:
    """Order ``model.graph.node`` topologically (rewrites append nodes out of order)."""
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise QuantizationError(f"graph rewrite left a cycle or a dangling input at {rest[0].name!r}")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def _pwfs_source(model, out_name, producer, consumers):
    """The tensor X that the PWFS subgraph ending at ``out_name`` reads, and its nodes, or None."""
    allowed = {"Mul", "Add", "Sub", "Min", "Max", "Slice"}
    inits = {i.name for i in model.graph.initializer}
    nodes: dict[str, Any] = {}
    sources: set[str] = set()
    frontier = [out_name]
    while frontier:
        t = frontier.pop()
        node = producer.get(t)
        if node is None or node.op_type not in allowed:
            sources.add(t)
            continue
        if node.name in nodes:
            continue
        nodes[node.name] = node
        data = node.input[:1] if node.op_type == "Slice" else node.input
        for i in data:
            if i in inits or (producer.get(i) is not None and producer[i].op_type == "Constant"):
                continue
            frontier.append(i)
    ops = [n.op_type for n in nodes.values()]
    if len(sources) != 1 or ops.count("Slice") != 3 or "Min" not in ops or "Max" not in ops:
        return None
    (x,) = sources
    # Every intermediate must stay inside the subgraph (nothing else reads max, median, ...).
    for n in nodes.values():
        for o in n.output:
            if o != out_name and any(c.name not in nodes for c in consumers.get(o, [])):
                return None
    return x, list(nodes.values())


def _check_pwfs(model, x_name, nodes, out_name, channels) -> bool:
    """Run the PWFS subgraph on random data and compare it with 0.5·(a + b + c - min(a, b, c))."""
    import onnx

    g = model.graph
    needed = {i for n in nodes for i in n.input}
    inits = [t for t in g.initializer if t.name in needed]
    consts = [n for n in g.node if n.op_type == "Constant" and n.output[0] in needed]
    sub = onnx.helper.make_graph(
        consts + list(nodes),
        "pwfs_check",
        [onnx.helper.make_tensor_value_info(x_name, onnx.TensorProto.FLOAT, [2, channels, 5, 3])],
        [onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None)],
        initializer=inits,
    )
    m = onnx.helper.make_model(sub, opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    x = np.random.default_rng(0).normal(size=(2, channels, 5, 3)).astype(np.float32)
    try:
        got = make_session(m, threads=1, optimization="disable").run(None, {x_name: x})[0]
    except ArtifactError:
        return False
    a, b, c = np.split(x, 3, axis=1)
    want = 0.5 * (a + b + c - np.minimum(np.minimum(a, b), c))
    return got.shape == want.shape and bool(np.allclose(got, want, atol=1e-5))


def pwfs_into_head(model) -> list[str]:
    """Fold PWFS's linear part into the classifier (in place). Returns the ReduceMean names rewritten.

    Pattern: ``X -> PWFS (Slice x3, Min/Max/Add/Sub/Mul) -> ReduceMean(axes 2,3) -> Concat(axis 1) ->
    Gemm`` with constant Gemm weights. Each matched ReduceMean slot of the Concat becomes two slots,
    ``ReduceMean(X)`` (C channels) and ``ReduceMean(Min(Min(a, b), c))`` (C/3), and the Gemm's
    columns for the slot W become [W/2, W/2, W/2, -W/2].
    """
    import onnx
    from onnx import numpy_helper

    producer, consumers = _graph_maps(model)
    inits = {t.name: t for t in model.graph.initializer}
    shapes = _channel_counts(model)
    done = []
    for concat in [n for n in model.graph.node if n.op_type == "Concat" and _attr(n, "axis") == 1]:
        users = consumers.get(concat.output[0], [])
        if len(users) != 1 or users[0].op_type != "Gemm" or users[0].input[1] not in inits:
            continue
        gemm = users[0]
        if _attr(gemm, "transA", 0) or float(_attr(gemm, "alpha", 1.0)) != 1.0:
            continue
        w = numpy_helper.to_array(inits[gemm.input[1]])
        w = w.T if not _attr(gemm, "transB", 0) else w  # (classes, features)
        widths = [shapes.get(i) for i in concat.input]
        if None in widths or sum(widths) != w.shape[1]:
            continue
        new_inputs, new_cols, new_nodes, start = [], [], [], 0
        for slot, width in zip(list(concat.input), widths):
            cols = w[:, start : start + width]
            start += width
            rm = producer.get(slot)
            match = None
            if (
                rm is not None
                and rm.op_type == "ReduceMean"
                and list(_attr(rm, "axes", [])) == [2, 3]
                and not _attr(rm, "keepdims", 1)
            ):
                match = _pwfs_source(model, rm.input[0], producer, consumers)
            if (
                match is None
                or shapes.get(match[0]) != 3 * width
                or not _check_pwfs(model, match[0], match[1], rm.input[0], 3 * width)
            ):
                new_inputs.append(slot)
                new_cols.append(cols)
                continue
            x = match[0]
            p = rm.name
            split_sizes = onnx.numpy_helper.from_array(np.asarray([width] * 3, dtype=np.int64), f"{p}/pwfs_split_sizes")
            model.graph.initializer.append(split_sizes)
            abc = [f"{p}/pwfs_{k}" for k in "abc"]
            new_nodes += [
                onnx.helper.make_node(
                    "ReduceMean", [x], [f"{p}/pwfs_channel_mean"], f"{p}/pwfs_channel_mean", axes=[2, 3], keepdims=0
                ),
                onnx.helper.make_node("Split", [x, split_sizes.name], abc, f"{p}/pwfs_split", axis=1),
                onnx.helper.make_node("Min", abc[:2], [f"{p}/pwfs_min_ab"], f"{p}/pwfs_min_ab"),
                onnx.helper.make_node("Min", [f"{p}/pwfs_min_ab", abc[2]], [f"{p}/pwfs_min"], f"{p}/pwfs_min"),
                onnx.helper.make_node(
                    "ReduceMean",
                    [f"{p}/pwfs_min"],
                    [f"{p}/pwfs_min_mean"],
                    f"{p}/pwfs_min_mean",
                    axes=[2, 3],
                    keepdims=0,
                ),
            ]
            new_inputs += [f"{p}/pwfs_channel_mean", f"{p}/pwfs_min_mean"]
            new_cols += [np.concatenate([cols / 2] * 3, axis=1), -cols / 2]
            done.append(rm.name)
        if len(new_inputs) == len(concat.input):
            continue
        w2 = np.concatenate(new_cols, axis=1).astype(np.float32)
        w2 = w2 if _attr(gemm, "transB", 0) else w2.T
        name = f"{gemm.input[1]}/pwfs_folded"
        model.graph.initializer.append(numpy_helper.from_array(w2, name))
        gemm.input[1] = name
        del concat.input[:]
        concat.input.extend(new_inputs)
        model.graph.node.extend(new_nodes)
    if done:
        _toposort(model)
        _prune(model)
    return done


def _channel_counts(model) -> dict[str, int]:
    """Axis-1 size of every tensor whose shape onnx shape inference knows (batch may be symbolic)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].HasField("dim_value"):
            out[vi.name] = dims[1].dim_value
    return out


def _prune(model) -> None:
    """Drop nodes and initializers nothing reads any more (in place).

    The walk goes from the outputs backwards through the node list, so the list is first put in
    topological order: rewrites append new nodes at the end, after the nodes that read them.
    """
    _toposort(model)
    needed = {o.name for o in model.graph.output}
    keep = []
    for n in reversed(list(model.graph.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(n.input)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    inits = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


def _channel_map(model, x_name, channels, hw, region, outs) -> list[list[int]] | None:
    """Which channels of ``x_name`` each of ``outs`` holds, found by running ``region`` on a channel-coded input."""
    import onnx

    needed = {i for n in region for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in needed]
    sub = onnx.helper.make_graph(
        list(region),
        "channel_map",
        [onnx.helper.make_tensor_value_info(x_name, onnx.TensorProto.FLOAT, [1, channels, *hw])],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs],
        initializer=inits,
    )
    m = onnx.helper.make_model(sub, opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    x = np.broadcast_to(np.arange(channels, dtype=np.float32)[None, :, None, None], (1, channels, *hw)).copy()
    try:
        got = make_session(m, threads=1, optimization="disable").run(None, {x_name: x})
    except ArtifactError:
        return None
    maps = []
    for y in got:
        if y.ndim != 4 or y.shape[2:] != tuple(hw) or not np.all(y == y[:, :, :1, :1]):
            return None
        maps.append([int(v) for v in y[0, :, 0, 0]])
    return maps


def fold_channel_shuffle(model) -> list[str]:
    """Fold TwoPath's channel shuffle + chunk into the producing conv's output order (in place).

    Pattern: ``Conv -> (Relu | MaxPool)* -> X``; X feeds a Reshape/Transpose/Slice region whose
    outputs only feed Convs (the shuffle and split in halves), and otherwise only the classifier
    inputs that `pwfs_into_head` made (``ReduceMean(X)`` and ``Split(X, thirds) -> Min -> Min ->
    ReduceMean``, into ``Concat -> Gemm``). The conv's output channels are permuted so that the two
    halves become a plain ``Split`` and the three PWFS groups stay aligned; the weights of every
    consumer (the two convs, the classifier columns) are permuted to match. Returns the X tensors.
    """
    import onnx
    from onnx import numpy_helper

    shapes = _full_shapes(model)
    done = []
    for x_name in list(_graph_maps(model)[1]):
        # Fresh maps each time: a fold replaces nodes (protobuf copies), so older handles go stale.
        producer, consumers = _graph_maps(model)
        inits = {t.name: t for t in model.graph.initializer}
        users = consumers.get(x_name, [])
        shape = shapes.get(x_name)
        if shape is None or len(shape) != 4 or not any(u.op_type == "Reshape" for u in users):
            continue
        c, hw = shape[1], shape[2:]
        # The conv that makes X, through channel-wise ops with single consumers.
        chain, t = [], x_name
        while (
            (node := producer.get(t)) is not None
            and node.op_type in ("Relu", "MaxPool")
            and len(consumers.get(node.input[0], [])) == 1
        ):
            chain.append(node)
            t = node.input[0]
        conv = producer.get(t)
        if (
            conv is None
            or conv.op_type != "Conv"
            or int(_attr(conv, "group", 1)) != 1
            or conv.input[1] not in inits
            or (len(conv.input) > 2 and conv.input[2] not in inits)
            or len(consumers.get(t, [])) != 1
        ):
            continue
        # The shuffle region: shape ops from X up to tensors read by convs only.
        region, frontier, outs, ok = {}, [u for u in users if u.op_type == "Reshape"], [], True
        while frontier and ok:
            n = frontier.pop()
            if n.name in region:
                continue
            region[n.name] = n
            for o in n.output:
                for u in consumers.get(o, []):
                    if u.op_type in ("Reshape", "Transpose", "Slice", "Split"):
                        frontier.append(u)
                    elif (
                        u.op_type == "Conv"
                        and u.input[0] == o
                        and u.input[1] in inits
                        and int(_attr(u, "group", 1)) == 1
                    ):
                        if o not in outs:
                            outs.append(o)
                    else:
                        ok = False
        if not ok or len(outs) != 2 or any(producer[o].name not in region for o in outs):
            continue
        half = c // 2
        maps = _channel_map(model, x_name, c, hw, [n for n in model.graph.node if n.name in region], outs)
        if maps is None or [len(m) for m in maps] != [half, half] or sorted(maps[0] + maps[1]) != list(range(c)):
            continue
        a_order, b_order = maps
        # Other readers of X: the classifier inputs made by pwfs_into_head.
        others = [u for u in users if u.name not in region]
        mean_node = split_node = None
        for u in others:
            if u.op_type == "ReduceMean" and list(_attr(u, "axes", [])) == [2, 3] and mean_node is None:
                mean_node = u
            elif u.op_type == "Split" and int(_attr(u, "axis", 0)) == 1 and len(u.output) == 3 and split_node is None:
                split_node = u
            else:
                ok = False
        if not ok:
            continue
        perm = None
        if split_node is not None:
            w = c // 3
            min1 = [n for n in consumers.get(split_node.output[0], []) if n.op_type == "Min"]
            if c % 6 or not min1 or len(consumers.get(min1[0].output[0], [])) != 1:
                continue
            a_set = set(a_order)
            triples = [(j, j + w, j + 2 * w) for j in range(w)]
            two = [tr for tr in triples if sum(v in a_set for v in tr) == 2]
            one = [tr for tr in triples if sum(v in a_set for v in tr) == 1]
            if len(two) != w // 2 or len(one) != w // 2:
                continue
            perm = [0] * c
            for k, tr in enumerate(two):
                ins = [v for v in tr if v in a_set]
                perm[k], perm[w + k], perm[2 * w + k] = ins[0], ins[1], next(v for v in tr if v not in a_set)
            for k, tr in enumerate(one, start=w // 2):
                outs_b = [v for v in tr if v not in a_set]
                perm[k], perm[w + k], perm[2 * w + k] = next(v for v in tr if v in a_set), outs_b[0], outs_b[1]
        else:
            perm = list(a_order) + list(b_order)
        # The classifier, when X feeds it.
        head = None
        if mean_node is not None or split_node is not None:
            head = _head_columns(model, [n for n in (mean_node, split_node) if n is not None], consumers, shapes)
            if head is None:
                continue
        # Rewrite: producer conv output order.
        pa = np.asarray(perm)
        wname = conv.input[1]
        inits[wname].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[wname])[pa], wname))
        if len(conv.input) > 2:
            bname = conv.input[2]
            inits[bname].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[bname])[pa], bname))
        # The two convs: input-channel order.
        for out, order, off in ((outs[0], a_order, 0), (outs[1], b_order, half)):
            where = {ch: m for m, ch in enumerate(order)}
            idx = np.asarray([where[perm[off + i]] for i in range(half)])
            for u in consumers.get(out, []):
                name = f"{u.input[1]}/shuffle_folded"
                inits[name] = numpy_helper.from_array(numpy_helper.to_array(inits[u.input[1]])[:, idx], name)
                model.graph.initializer.append(inits[name])
                u.input[1] = name
        # The classifier columns.
        if head is not None:
            gemm, w_all, slots = head
            for node_name, (start, width) in slots.items():
                cols = w_all[:, start : start + width].copy()
                if mean_node is not None and node_name == mean_node.name:
                    w_all[:, start : start + width] = cols[:, pa]
                else:
                    wdt = c // 3
                    w_all[:, start : start + width] = cols[:, pa[:wdt] % wdt]
            name = f"{gemm.input[1]}/shuffle_folded"
            arr = w_all if _attr(gemm, "transB", 0) else w_all.T
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
            gemm.input[1] = name
        # The shuffle becomes a Split in halves.
        sizes = numpy_helper.from_array(np.asarray([half, half], dtype=np.int64), f"{x_name}/shuffle_split_sizes")
        model.graph.initializer.append(sizes)
        keep = [n for n in model.graph.node if n.name not in region]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        model.graph.node.append(
            onnx.helper.make_node("Split", [x_name, sizes.name], list(outs), f"{x_name}/shuffle_split", axis=1)
        )
        done.append(x_name)
    if done:
        _toposort(model)
        _prune(model)
    return done


def _head_columns(model, starts, consumers, shapes):
    """(Gemm, its weight as (classes, features), {start node name: (first column, width)}) or None.

    Each start node must lead, through Min/ReduceMean with single consumers, to an input of one
    Concat(axis 1) whose only consumer is a Gemm with constant weights.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    found, concat = {}, None
    for s in starts:
        t = s.output[0] if s.op_type == "ReduceMean" else None
        if s.op_type == "Split":  # Split -> Min -> Min -> ReduceMean
            n = next((u for u in consumers.get(s.output[0], []) if u.op_type == "Min"), None)
            n = next((u for u in consumers.get(n.output[0], []) if u.op_type == "Min"), None) if n else None
            n = next((u for u in consumers.get(n.output[0], []) if u.op_type == "ReduceMean"), None) if n else None
            t = n.output[0] if n else None
        users = consumers.get(t, []) if t else []
        if len(users) != 1 or users[0].op_type != "Concat" or (concat is not None and users[0] is not concat):
            return None
        concat = users[0]
        found[s.name] = t
    g_users = consumers.get(concat.output[0], [])
    if len(g_users) != 1 or g_users[0].op_type != "Gemm" or g_users[0].input[1] not in inits:
        return None
    gemm = g_users[0]
    w = numpy_helper.to_array(inits[gemm.input[1]])
    w = (w if _attr(gemm, "transB", 0) else w.T).copy()
    offsets, start = {}, 0
    for i in concat.input:
        width = shapes.get(i, [None, None])[1] if shapes.get(i) else None
        if width is None:
            return None
        offsets[i] = (start, width)
        start += width
    if start != w.shape[1]:
        return None
    by_node = {s.name: offsets[found[s.name]] for s in starts}
    return gemm, w, by_node


def _full_shapes(model) -> dict[str, list[int | None]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def rewrite_for_cpu(
    model,
    samples: np.ndarray | None = None,
    *,
    rewrites: Sequence[str] = CPU_REWRITES,
    input_name: str | None = None,
    rtol: float = 1e-4,
) -> dict[str, list[str]]:
    """Apply the cpu-form rewrites to the FP32 ``model`` in place; returns {rewrite: nodes affected}.

    With ``samples``, the rewritten graph is run against the original on them; if any output
    differs by more than ``rtol`` of its range the model is left as it was and {} is returned.
    """
    from quantize.targets import cpu_rules  # onnxscript: imported only when rewriting

    funcs = {
        "relu_before_maxpool": cpu_rules.relu_before_maxpool,
        "pwfs_into_head": pwfs_into_head,
        "fold_channel_shuffle": fold_channel_shuffle,
        "reduce_mean_as_pool_and_conv": cpu_rules.reduce_mean_as_pool_and_conv,
    }
    unknown = [r for r in rewrites if r not in funcs]
    if unknown:
        raise QuantizationError(f"unknown cpu rewrites {unknown}; valid: {', '.join(funcs)}")
    work = model.__class__()
    work.CopyFrom(model)
    done = {}
    for r in rewrites:
        names = funcs[r](work)
        if names:
            done[r] = names
    if not done:
        return {}
    # Shapes recorded for the old graph can be wrong for the new one (relu_before_maxpool gives a
    # pooled tensor's name to the unpooled Relu output); consumers re-infer them.
    del work.graph.value_info[:]
    if samples is not None and len(samples):
        name = input_name or model.graph.input[0].name
        x = np.ascontiguousarray(samples, dtype=np.float32)
        want = make_session(model, threads=1).run(None, {name: x})
        got = make_session(work, threads=1).run(None, {name: x})
        for a, b in zip(want, got):
            scale = float(np.abs(a).max()) or 1.0
            if a.shape != b.shape or float(np.abs(a - b).max()) > rtol * scale:
                log.warning(
                    "cpu rewrites %s change the FP32 outputs (max |diff| %.3g); quantizing the graph as exported",
                    list(done),
                    float(np.abs(a - b).max()) if a.shape == b.shape else float("nan"),
                )
                return {}
    model.CopyFrom(work)
    return done
