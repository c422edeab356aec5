"""Run the test suite; exit non-zero on failures *and* when no test was collected.

pytest exits with 5 when it collects nothing, which a naive `|| true`-style wrapper would
treat as success. CI must never pass by accident, so 5 is mapped to a failure here.
"""

from __future__ import annotations

import sys

import pytest


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    code = int(pytest.main(args))
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("run_tests: pytest collected no tests; treating that as a failure", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
