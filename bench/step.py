"""Training step and sampling cost of Purrception's K-way head variants against CFM on the same backbone.

For every backbone and K, side by side in one run (each measurement in a fresh process):

- training: median time of one step (forward, backward, AdamW) and memory: the whole process's peak (CPU:
  ``ru_maxrss`` growth of the child after imports, so it includes weights, gradients and optimizer state; GPU:
  ``max_memory_allocated``) and what one step adds above the memory held between steps ("step": activations,
  gradients, transients; see ``_harness``);
- sampling: median time of one guided velocity evaluation (CFG batched cond/uncond, the head once), per image,
  and the same two memory figures for the whole batch;
- each as a ratio to CFM, next to the FLOP ratio to CFM computed from the shapes (``efficiency`` = time ratio /
  FLOP ratio; 1.0 = no overhead beyond the FLOPs), and the chunked head against the naive one.

The DFM baseline runs when named: ``dfm`` (chunked head on the masked rows; sampling draws through chunks of the
revealed rows) against ``dfm-naive`` (all logits materialised), its ``/naive`` columns relative to ``dfm-naive``.
Its sampling figure is one denoiser evaluation with every position revealed (the sampler's last step).

Examples:
    python bench/step.py                                   # CPU, 256x6/2 and 384x6/2, 16x16x4 latents, batch 8
    python bench/step.py --device cuda --dtype bf16 --backbones DiT-B/2 --latent 32 --batch 32 --quick
    python bench/step.py --quick --variants cfm,chunked,dfm-naive,dfm      # DFM next to Purrception, K=16384
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (VARIANTS, Case, add_common_args, case_flops, cases_from_args, machine_line,  # noqa: E402
                      measure_all, mib, ratio, table, with_variant)


def report(cases: list[Case], rounds: int, title: str, per_image: bool, memory: bool) -> None:
    results = measure_all(cases, rounds)
    rows = []
    for c in cases:
        r = results[c]
        ms = r["seconds"] * 1e3 / (c.batch if per_image else 1)
        ref = results.get(with_variant(c, "cfm"))
        naive = results.get(with_variant(c, VARIANTS[c.variant].reference))
        t_ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref else "-"
        f_ratio = f"{case_flops(c) / case_flops(with_variant(c, 'cfm')):.2f}"
        eff = f"{(r['seconds'] / ref['seconds']) / (case_flops(c) / case_flops(with_variant(c, 'cfm'))):.2f}" if ref else "-"
        row = [c.backbone.spec, c.K, c.variant, f"{ms:.1f}", t_ratio, f_ratio, eff,
               f"{r['seconds'] / naive['seconds']:.2f}" if naive and VARIANTS[c.variant].categorical else "-"]
        if memory:
            categorical = VARIANTS[c.variant].categorical
            row += [mib(r["peak_bytes"]), ratio(r["peak_bytes"], ref, "peak_bytes"),
                    ratio(r["peak_bytes"], naive if categorical else None, "peak_bytes"),
                    mib(r["step_bytes"]), ratio(r["step_bytes"], ref, "step_bytes"),
                    ratio(r["step_bytes"], naive if categorical else None, "step_bytes")]
        rows.append(row)
    unit = "ms/image" if per_image else "ms/step"
    header = ["backbone", "K", "variant", unit, "time/CFM", "FLOPs/CFM", "efficiency", "time/naive"]
    if memory:
        header += ["peak MiB", "mem/CFM", "mem/naive", "step MiB", "step/CFM", "step/naive"]
    print(f"\n{title}\n")
    print(table(rows, header))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--cfg-scale", type=float, default=1.5, help="guidance scale while sampling")
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--tasks", default="step,sample", help="comma list: step (training), sample (default: %(default)s)")
    args = parser.parse_args()
    print(machine_line(args.device, args.threads))
    print(f"latents {args.latent}x{args.latent}x{args.latent_dim}, batch {args.batch}, dtype {args.dtype}, "
          f"factorised rank {args.rank}, chunk budget {args.chunk_mib or 'default'} MiB, "
          f"rounds {args.rounds}")
    tasks = args.tasks.split(",")
    if "step" in tasks:
        report(cases_from_args(args, "step"), args.rounds, "Training step (forward + backward + AdamW)", False, True)
    if "sample" in tasks:
        report(cases_from_args(args, "sample", args.cfg_scale, args.tau), args.rounds,
               f"Sampling: one velocity evaluation, CFG {args.cfg_scale} (cond+uncond batched), per image",
               True, True)


if __name__ == "__main__":
    main()
