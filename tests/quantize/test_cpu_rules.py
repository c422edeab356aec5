"""The cpu form's onnxscript pattern rules (quantize/targets/cpu_rules.py): where they apply, where not.

Each case builds a small graph, applies one rule and checks both the structure and that the
rewritten graph computes the same outputs as the original on random inputs.
"""

from __future__ import annotations

import collections
import copy

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from quantize.targets.cpu_rules import reduce_mean_as_pool_and_conv, relu_before_maxpool
from runtime.backends.ort import make_session


def _model(nodes, outputs, *, c=4, opset=17, inits=(), x_shape=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape or ["n", c, 8, 8])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph(nodes, "g", [x], outs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model


def _ops(model):
    return collections.Counter(n.op_type for n in model.graph.node)


def _same_outputs(a, b, c=4):
    x = np.random.default_rng(0).standard_normal((2, c, 8, 8)).astype(np.float32)
    want = make_session(a, threads=1).run(None, {"x": x})
    got = make_session(b, threads=1).run(None, {"x": x})
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def _pool_relu(extra_reader=False, pooled_is_output=False):
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["p"], ["y"], name="relu"),
    ]
    outputs = ["y"]
    if extra_reader:
        nodes.append(helper.make_node("Sigmoid", ["p"], ["s"], name="other"))
        outputs.append("s")
    if pooled_is_output:
        outputs.append("p")
    return _model(nodes, outputs)


def test_relu_moves_before_the_pool_and_keeps_its_attributes():
    model = _pool_relu()
    work = copy.deepcopy(model)
    assert relu_before_maxpool(work) == ["pool"]
    order = [n.op_type for n in work.graph.node]
    assert order == ["Relu", "MaxPool"]
    pool = work.graph.node[1]
    assert pool.name == "pool" and helper.get_attribute_value(pool.attribute[0]) is not None
    assert {a.name: list(helper.get_attribute_value(a)) for a in pool.attribute} == {
        "kernel_shape": [2, 2],
        "strides": [2, 2],
    }
    assert [o.name for o in work.graph.output] == ["y"]
    _same_outputs(model, work)


def test_pool_read_elsewhere_or_returned_is_left_alone():
    for model in (_pool_relu(extra_reader=True), _pool_relu(pooled_is_output=True)):
        work = copy.deepcopy(model)
        assert relu_before_maxpool(work) == []
        assert work == model


def test_pool_with_indices_output_is_left_alone():
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "idx"], name="pool", kernel_shape=[2, 2]),
        helper.make_node("Relu", ["p"], ["y"], name="relu"),
    ]
    model = _model(nodes, ["y"])
    work = copy.deepcopy(model)
    assert relu_before_maxpool(work) == []


def test_spatial_means_become_global_average_pool():
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["k"], name="keep", axes=[2, 3], keepdims=1),
        helper.make_node("ReduceMean", ["x"], ["f"], name="flat", axes=[3, 2], keepdims=0),
    ]
    model = _model(nodes, ["k", "f"])
    work = copy.deepcopy(model)
    assert sorted(reduce_mean_as_pool_and_conv(work)) == ["flat", "keep"]
    assert _ops(work) == {"GlobalAveragePool": 2, "Flatten": 1}
    _same_outputs(model, work)


def test_channel_mean_becomes_a_one_by_one_conv():
    model = _model([helper.make_node("ReduceMean", ["x"], ["m"], name="cm", axes=[1], keepdims=1)], ["m"], c=6)
    work = copy.deepcopy(model)
    assert reduce_mean_as_pool_and_conv(work) == ["cm"]
    assert _ops(work) == {"Conv": 1}
    w = numpy_helper.to_array(next(t for t in work.graph.initializer if t.name == "cm/mean_weight"))
    assert w.shape == (1, 6, 1, 1) and np.allclose(w, 1 / 6)
    _same_outputs(model, work, c=6)


def test_means_the_rules_cannot_rewrite_are_left_alone():
    cases = [
        # channel mean without keepdims: the 1x1 conv would keep the axis
        _model([helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0)], ["m"]),
        # channel count unknown
        _model([helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1)], ["m"], x_shape=["n", "c", 8, 8]),
        # a mean over other axes
        _model([helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=1)], ["m"]),
        # opset 18: axes are an input, not an attribute
        _model(
            [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1)],
            ["m"],
            opset=18,
            inits=[numpy_helper.from_array(np.array([2, 3], np.int64), "axes")],
        ),
    ]
    for model in cases:
        work = copy.deepcopy(model)
        assert reduce_mean_as_pool_and_conv(work) == []
        assert work == model
