"""The K-way head alone: loss + backward from given features, naive vs chunked vs factorised (CFM's head too).

For every backbone width and K, side by side in one run (each measurement in a fresh process): median time of
``loss.backward()`` through the head only (features in, gradients w.r.t. features and head weights out), the
achieved GFLOP/s (FLOPs from shapes: forward + 2x backward matmuls), and memory, each as a ratio to the naive head:
peak (CPU: ``ru_maxrss`` growth of the child after imports; GPU: ``max_memory_allocated``) and what one call adds
above the memory held between calls ("step"; see ``_harness``).

Examples:
    python bench/head.py
    python bench/head.py --device cuda --dtype bf16 --backbones DiT-B/2 --latent 32 --batch 32 --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    VARIANTS,
    add_common_args,
    case_flops,
    cases_from_args,
    machine_line,
    measure_all,
    mib,
    ratio,
    table,
    with_variant,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args()
    print(machine_line(args.device, args.threads))
    print(f"latents {args.latent}x{args.latent}x{args.latent_dim}, batch {args.batch}, dtype {args.dtype}, "
          f"factorised rank {args.rank}, chunk budget {args.chunk_mib or 'default'} MiB")
    cases = cases_from_args(args, "head")
    results = measure_all(cases, args.rounds)
    rows = []
    for c in cases:
        r, naive = results[c], results.get(with_variant(c, VARIANTS[c.variant].reference))
        flops = case_flops(c) * c.batch
        rows.append([c.backbone.spec, c.K, c.variant, f"{r['head_params'] / 1e6:.2f}", f"{r['seconds'] * 1e3:.1f}",
                     f"{flops / r['seconds'] / 1e9:.1f}",
                     f"{r['seconds'] / naive['seconds']:.2f}" if naive else "-",
                     f"{flops / (case_flops(with_variant(c, VARIANTS[c.variant].reference)) * c.batch):.3f}",
                     mib(r["peak_bytes"]), ratio(r["peak_bytes"], naive, "peak_bytes"),
                     mib(r["step_bytes"]), ratio(r["step_bytes"], naive, "step_bytes")])
    print("\nHead only: loss + backward (grads w.r.t. features and head weights)\n")
    print(table(rows, ["backbone", "K", "variant", "head Mparams", "ms", "GFLOP/s", "time/naive", "FLOPs/naive",
                       "peak MiB", "mem/naive", "step MiB", "step mem/naive"]))
    print("\nvariants: " + "; ".join(f"{v.name}: {v.description}" for v in VARIANTS.values()))


if __name__ == "__main__":
    main()
