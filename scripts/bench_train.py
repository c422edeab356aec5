"""Training-step throughput of a registered model: memory formats and batch sizes side by side.

    python scripts/bench_train.py --model lanmsff --threads 2 --batches 32,64 --rounds 3

Variants are interleaved round by round (the machines are shared and noisy), and the script prints
images/s per variant (median over rounds) and the ratio to the first variant.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lanmsff")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="32")
    p.add_argument("--steps", type=int, default=12, help="timed optimizer steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from runtime.cli import parse_int_list
    from train.models import create_model, get_model_info

    torch.set_num_threads(args.threads)
    shape = get_model_info(args.model).preprocess.input_shape
    variants = [(b, cl) for b in parse_int_list(args.batches, "--batches") for cl in (False, True)]
    state = {}
    for b, cl in variants:
        torch.manual_seed(0)
        m = create_model(args.model, num_classes=7)
        x = torch.randn(b, *shape)
        if cl:
            m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        state[(b, cl)] = (m, torch.optim.Adam(m.parameters(), 1e-3), x, torch.randint(0, 7, (b,)))

    def step(m, opt, x, y):
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rates = {v: [] for v in variants}
    for _round in range(args.rounds):
        for v in variants:
            m, opt, x, y = state[v]
            for _ in range(2):  # warm-up
                step(m, opt, x, y)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(m, opt, x, y)
            rates[v].append(args.steps * v[0] / (time.perf_counter() - t0))
    base = statistics.median(rates[variants[0]])
    print(
        f"model {args.model}, input {shape}, {args.threads} threads, {args.rounds} interleaved rounds of {args.steps} steps"
    )
    print(f"{'batch':>6} {'channels_last':>14} {'img/s (median)':>15} {'min..max':>16} {'ratio':>7}")
    for v in variants:
        med = statistics.median(rates[v])
        print(f"{v[0]:>6} {str(v[1]):>14} {med:>15.1f} {min(rates[v]):>7.1f}..{max(rates[v]):<7.1f} {med / base:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
