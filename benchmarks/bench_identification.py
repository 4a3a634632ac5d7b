"""Benchmark 1:N open-set identification on synthetic embeddings (CPU).

Default size: a 10,000-identity gallery and 100,000 probes (half mated, half unmated) of
512-d embeddings. Prints a Markdown table of wall time and peak memory per stage. Peak
memory is what ``tracemalloc`` sees numpy allocate during the stage (inputs excluded); a
full ``probes × gallery`` float64 score matrix would need ``probes × gallery × 8`` bytes.

    python benchmarks/bench_identification.py                 # 10k × 100k × 512
    python benchmarks/bench_identification.py --dim 128 --threads 1
"""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc
from typing import Any, Callable

import numpy as np


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gallery", type=int, default=10_000, help="gallery identities")
    p.add_argument("--probes", type=int, default=100_000, help="probes (half mated)")
    p.add_argument("--dim", type=int, default=512, help="embedding size")
    p.add_argument("--chunk", type=int, default=None, help="probes per scoring block")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads (sets OMP/OPENBLAS/MKL_NUM_THREADS before numpy loads)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def _stage(name: str, fn: Callable[[], Any], rows: list[dict]) -> Any:
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    out = fn()
    rows.append({"stage": name, "seconds": time.perf_counter() - t,
                 "peak MiB": (tracemalloc.get_traced_memory()[1] - base) / 2 ** 20})
    return out


def main() -> None:
    args = _parse()
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    from btnet_adapters.evaluate import (build_gallery, cmc, markdown_table,
                                         open_set_identification, score_probes)

    rng = np.random.default_rng(args.seed)
    g, n, d = args.gallery, args.probes, args.dim
    gallery_emb = rng.standard_normal((g, d), dtype=np.float32)
    n_mated = n // 2
    mated_ids = rng.integers(0, g, n_mated)
    mated = gallery_emb[mated_ids] + rng.standard_normal((n_mated, d), dtype=np.float32) * 6.0
    unmated = rng.standard_normal((n - n_mated, d), dtype=np.float32)

    tracemalloc.start()
    rows: list[dict] = []
    t0 = time.perf_counter()
    gal = _stage("build gallery", lambda: build_gallery(gallery_emb, np.arange(g)), rows)
    ms = _stage(f"score {n_mated:,} mated probes (k=20)",
                lambda: score_probes(gal, mated, mated_ids, k=20, chunk_size=args.chunk), rows)
    us = _stage(f"score {n - n_mated:,} unmated probes",
                lambda: score_probes(gal, unmated, None, k=20, chunk_size=args.chunk), rows)
    ref = _stage("TPIR/AUC, mode=reference",
                 lambda: open_set_identification(ms, us, mode="reference"), rows)
    ex = _stage("TPIR/AUC, mode=exact", lambda: open_set_identification(ms, us, mode="exact"),
                rows)
    _stage("CMC rank 1/5/10/20", lambda: cmc(ms), rows)
    total = time.perf_counter() - t0
    tracemalloc.stop()
    rows.append({"stage": "total", "seconds": total,
                 "peak MiB": max(r["peak MiB"] for r in rows)})
    print(f"gallery {g:,} × probes {n:,} × dim {d}; a full float64 score matrix would be "
          f"{g * n * 8 / 2 ** 30:.1f} GiB; process max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10:.0f} MiB "
          f"(inputs {(gallery_emb.nbytes + mated.nbytes + unmated.nbytes) / 2 ** 20:.0f} MiB)\n")
    print(markdown_table(rows, floatfmt=".2f"))
    for r in (ref, ex):
        tpir = ", ".join(f"{f:g}: {100 * v:.2f}" for f, v in r.tpir.items())
        print(f"{r.mode:9s} AUC {100 * r.auc:.2f}  TPIR20@FPIR {tpir}")


if __name__ == "__main__":
    main()
