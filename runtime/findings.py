"""The one finding type: what a check saw in a model, how bad it is, and how to fix it.

Export preflight (`export.preflight`: is this ONNX ready for TensorRT?) and the Q/DQ lint
(`runtime.qdq_lint`: does this INT8 graph follow TensorRT's explicit-quantization rules?) both
report `Finding`s; each keeps its own report class and its own stable codes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(str, enum.Enum):
    """How much a finding matters; an ERROR fails the check that found it."""

    ERROR = "error"  # TensorRT rejects it, builds something else than intended, or the numbers are wrong
    WARNING = "warning"  # legal but slow, wasteful, fragile or unverified: read the fix
    INFO = "info"  # facts worth keeping in the report (an inventory, a version)


@dataclass(frozen=True)
class Finding:
    """One observation of a check.

    Attributes:
        severity: error (fails the check), warning or info; a plain string is converted.
        code: Stable identifier the tests, reports and dashboards key on (preflight:
            ``POOL_KERNEL_FROM_SHAPE``; lint: ``asymmetric-zero-point``).
        message: What was found, with the numbers (and, for the lint, what TensorRT expects).
        fix: What to change ("" when the message says it, or for plain information).
        node: ONNX node name, tensor name or PyTorch module path ("" for the whole model).
    """

    severity: Severity
    code: str
    message: str
    fix: str = ""
    node: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity(self.severity))

    def to_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity.value,
            "code": self.code,
            "node": self.node,
            "message": self.message,
            "fix": self.fix,
        }

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.severity.value.upper()} {self.code}{where}: {self.message}{fix}"
