"""README.md quotes only speed figures that `make bench` reproduces (issue 13).

The README's speed-ups live in one block, ``<!-- headline:start -->`` … ``<!-- headline:end -->``,
which is `make bench`'s own table (scripts/bench_headline.py prints it; BENCHMARKS.md records the
same run with its date, machine and command). A speed-up written anywhere else in the README — the
kind of figure that once outlived the code that produced it — fails this test.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _block(text: str, name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", text, re.S)
    assert m, f"no <!-- {name}:start --> … <!-- {name}:end --> block"
    return m.group(1)


def _speedups(text: str) -> list[str]:
    # "64×64" and "1×" in shapes/scales are not speed-ups: a speed-up is a decimal number followed by ×
    # and not followed by another digit.
    return [m.group(0) for m in re.finditer(r"\b\d+\.\d+×(?!\d)", text)]


def test_readme_speedups_come_only_from_the_bench_block():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = _block(readme, "headline")
    outside = readme.replace(block, "")
    assert _speedups(outside) == [], "speed-ups outside the make-bench block: " + ", ".join(_speedups(outside))


def test_the_bench_block_is_the_recorded_make_bench_output():
    readme_block = _block((ROOT / "README.md").read_text(encoding="utf-8"), "headline").strip()
    bench = _block((ROOT / "BENCHMARKS.md").read_text(encoding="utf-8"), "headline").strip()
    assert readme_block == bench, "README's headline block differs from the make bench run recorded in BENCHMARKS.md"
    assert "make bench" in readme_block and "median" in readme_block
    rows = [r for r in readme_block.splitlines() if r.startswith("| `model.")]
    assert len(rows) >= 4, "the block should hold the 1/2-thread x batch 1/32 rows"
    for row in rows:
        median, low, high = (float(x) for x in re.search(r"([\d.]+)× \[([\d.]+)–([\d.]+)\]", row).groups())
        assert low <= median <= high, row
