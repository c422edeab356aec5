"""The cpu form's fixed-shape rewrites, written as onnxscript rewriter patterns.

Two of the four cpu-form rewrites (`quantize.targets.cpu.CPU_REWRITES`) replace a fixed pattern of
one or two nodes, so they are expressed with onnxscript's pattern rewriter (``pattern`` / ``check``
/ ``rewrite`` rules applied by ``onnxscript.rewriter.rewrite``) instead of protobuf edits. The
matcher refuses a match whose inner values are read outside the pattern or are graph outputs, so a
rule never changes what another node sees. The other two (``pwfs_into_head``,
``fold_channel_shuffle``) find subgraphs of varying size and arithmetic, and stay graph walks in
`quantize.targets.cpu`.

Each entry point takes an ``onnx.ModelProto``, rewrites it in place and returns the names of the
nodes it replaced; `quantize.targets.cpu.rewrite_for_cpu` then checks the rewritten graph against
the original on calibration inputs.
"""

from __future__ import annotations

import logging

import numpy as np
from onnxscript import ir
from onnxscript.rewriter import MatchResult, RewriteRule, RewriteRuleClassBase, rewrite

from runtime.cli import loggers_held

log = logging.getLogger(__name__)


class _Recording(RewriteRuleClassBase):
    """A rule that records the name of the node each applied match replaces."""

    def __init__(self) -> None:
        super().__init__()
        self.replaced: list[str] = []

    def recording_rule(self) -> RewriteRule:
        """This instance as a rule (``RewriteRuleClassBase.rule`` would build a fresh instance)."""
        return RewriteRule(self.pattern, self.rewrite, self.check, name=self.name)

    def _record(self, node: ir.Node) -> str:
        self.replaced.append(node.name or "")
        return node.name or "node"


class ReluBeforeMaxPool(_Recording):
    """``Relu(MaxPool(x))`` becomes ``MaxPool(Relu(x))`` (exact: max and ReLU commute).

    In the quantized graph the pool then reads the conv's INT8 output directly (an integer
    NhwcMaxPool on onnxruntime) and the pooled tensor is quantized once, not twice.
    """

    def pattern(self, op, x):
        return op.Relu(op.MaxPool(x, _allow_other_attributes=True, _outputs=["pooled"]))

    def check(self, context, x, pooled, **_):
        if len(pooled.producer().outputs) != 1:
            return MatchResult().fail("MaxPool also returns indices")
        return MatchResult()

    def rewrite(self, op, x, pooled, **_):
        pool = pooled.producer()
        name = self._record(pool)
        relu = op.Relu(x, _name=f"{name}/relu_first")
        return op.MaxPool(relu, _name=name, **dict(pool.attributes))


def _mean_attrs(node: ir.Node) -> tuple[list[int], int]:
    axes = node.attributes.get_ints("axes", None)
    return sorted(axes or []), node.attributes.get_int("keepdims", 1)


class SpatialMeanAsPool(_Recording):
    """``ReduceMean(x, axes=[2, 3])`` becomes ``GlobalAveragePool`` (+ ``Flatten`` when keepdims=0).

    onnxruntime quantizes it as QLinearGlobalAveragePool instead of dequantizing the whole feature
    map for a float reduction. Only the opset < 18 form (axes as an attribute) matches.
    """

    def pattern(self, op, x):
        return op.ReduceMean(x, _allow_other_attributes=True, _outputs=["mean"])

    def check(self, context, x, mean, **_):
        axes, _keep = _mean_attrs(mean.producer())
        if axes != [2, 3] or x.shape is None or len(x.shape) != 4:
            return MatchResult().fail("not a spatial mean of a 4-D tensor")
        return MatchResult()

    def rewrite(self, op, x, mean, **_):
        node = mean.producer()
        name = self._record(node)
        if _mean_attrs(node)[1]:
            return op.GlobalAveragePool(x, _name=f"{name}/gap")
        gap = op.GlobalAveragePool(x, _name=f"{name}/gap")
        return op.Flatten(gap, axis=1, _name=f"{name}/flatten")


class ChannelMeanAsConv(_Recording):
    """``ReduceMean(x, axes=[1], keepdims=1)`` becomes a 1×1 ``Conv`` with one output and weights 1/C.

    The mean (MassAtt's channel mean) then runs as a QLinearConv in the channels-last chain; 1/C is
    exact in symmetric per-channel INT8 (127 × scale). Needs C known from shape inference.
    """

    def pattern(self, op, x):
        return op.ReduceMean(x, _allow_other_attributes=True, _outputs=["mean"])

    def check(self, context, x, mean, **_):
        axes, keep = _mean_attrs(mean.producer())
        if axes != [1] or not keep:
            return MatchResult().fail("not a kept channel mean")
        if x.shape is None or len(x.shape) != 4 or not isinstance(x.shape[1], int):
            return MatchResult().fail("channel count unknown")
        return MatchResult()

    def rewrite(self, op, x, mean, **_):
        name = self._record(mean.producer())
        c = x.shape[1]
        weight = op.initializer(ir.tensor(np.full((1, c, 1, 1), 1.0 / c, np.float32)), name=f"{name}/mean_weight")
        return op.Conv(x, weight, kernel_shape=[1, 1], _name=f"{name}/conv")


def _apply(model, rules: list[_Recording]) -> list[str]:
    """Run ``rules`` on ``model`` (a ModelProto, rewritten in place); returns the replaced nodes' names."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)  # the rules read channel counts and ranks
    with loggers_held(("onnxscript", "onnx_ir"), unless=log):  # they log every pass at INFO
        out = rewrite(inferred, [r.recording_rule() for r in rules])
    replaced = [name for r in rules for name in r.replaced]
    if replaced:
        del out.graph.value_info[:]  # shapes of the old graph; consumers re-infer them
        model.CopyFrom(out)
    return replaced


def relu_before_maxpool(model) -> list[str]:
    """``MaxPool -> Relu`` becomes ``Relu -> MaxPool`` (in place; exact). Returns the MaxPool names moved."""
    return _apply(model, [ReluBeforeMaxPool()])


def reduce_mean_as_pool_and_conv(model) -> list[str]:
    """Spatial means become GlobalAveragePool, kept channel means a 1×1 Conv (in place; exact).

    Returns the names of the ReduceMean nodes replaced.
    """
    return _apply(model, [SpatialMeanAsPool(), ChannelMeanAsConv()])
