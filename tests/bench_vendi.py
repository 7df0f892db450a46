"""Benchmark: Vendi score by the n x n kernel vs the d x d accumulator (not a pytest test).

Run: ``.venv/bin/python tests/bench_vendi.py [--dim 384] [--sizes 1000 3000 6000]``.
For each n, D holds n - batch random unit rows; the candidate batch is scored once with the
n x n reference (``vendi_score`` of D ∪ batch) and once with ``VendiAccumulator.score_with``
(D already accumulated, as in the Reveal loop). Prints the median of a few repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 6000])
    parser.add_argument("--batch", type=int, default=8, help="candidate batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, d = {args.dim}")
    header = f"{'n':>6} | {'n x n (s)':>10} | {'d x d score_with (s)':>20} | {'add (s)':>8} | "
    print(header + f"{'speed-up':>8} | {'|diff|':>8}")
    print("-" * (len(header) + 20))
    for n in args.sizes:
        data = torch.randn(n - args.batch, args.dim, generator=gen)
        batch = torch.randn(args.batch, args.dim, generator=gen)
        _row(n, data, batch, args.repeats)


def _row(n: int, data: object, batch: object, repeats: int) -> None:
    import torch

    from rrtool.reveal.vendi import VendiAccumulator, vendi_score

    assert isinstance(data, torch.Tensor) and isinstance(batch, torch.Tensor)
    dim = data.shape[1]
    everything = torch.cat([data, batch])
    t_add = _median_seconds(lambda: VendiAccumulator(dim).add(data), repeats)
    acc = VendiAccumulator(dim)
    acc.add(data)
    t_full = _median_seconds(lambda: vendi_score(everything), repeats)
    t_fast = _median_seconds(lambda: acc.score_with(batch), repeats)
    diff = abs(vendi_score(everything) - acc.score_with(batch))
    print(
        f"{n:>6} | {t_full:>10.3f} | {t_fast:>20.4f} | {t_add:>8.4f} | "
        f"{t_full / t_fast:>7.0f}x | {diff:>8.1e}"
    )


if __name__ == "__main__":
    main()
