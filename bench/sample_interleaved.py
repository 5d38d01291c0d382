"""Sampling cost of the chunked and factorised heads against CFM, timed interleaved in one process.

``bench/step.py`` times every case in its own process, which is what its memory columns need, but on a shared VM
the speed of the machine drifts between those processes (the CFM reference moved by 2x between rounds there). This
script builds CFM, Purrception with the full chunked head and with the factorised head on the same backbone in one
process and times one guided velocity evaluation of each in turn (right after an untimed one, so that each finds
its weights in cache as it would in a sampling loop), ``--rounds`` times, so that all three see the same machine;
it prints the median time ratios to CFM next to the FLOP ratios (``efficiency`` = time ratio / FLOP
ratio, as in ``bench/step.py``).

Example:
    python bench/sample_interleaved.py --threads 2 --ks 4096,16384
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Case, add_shape_args, case_flops, machine_line, parse_backbone, table  # noqa: E402

VARIANTS = ("cfm", "chunked", "factorised")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(parser)
    parser.add_argument("--rounds", type=int, default=15, help="evaluations of each variant, interleaved")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch default")
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--tau", type=float, default=1.0)
    args = parser.parse_args()

    import torch

    from purrception.flows import METHODS
    from purrception.flows.categorical import posterior_mean
    from purrception.flows.purrception import purrception_velocity
    from purrception.models.dit import DiT, DiTConfig
    from purrception.sampling.guidance import guided_features

    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line("cpu", args.threads))
    print(f"latents {args.latent}x{args.latent}x{args.latent_dim}, batch {args.batch}, CFG {args.cfg_scale} "
          f"(cond+uncond batched), tau {args.tau}, factorised rank {args.rank}, median of {args.rounds} interleaved "
          f"rounds")
    rows = []
    for spec in args.backbones.split(","):
        backbone = parse_backbone(spec)
        for k in (int(v) for v in args.ks.split(",")):
            def model(out_channels: int, rank: int) -> DiT:
                torch.manual_seed(0)
                m = DiT(DiTConfig(input_size=args.latent, in_channels=args.latent_dim, out_channels=out_channels,
                                  patch_size=backbone.patch, hidden_size=backbone.hidden, depth=backbone.depth,
                                  num_heads=backbone.heads, num_classes=1000, head_rank=rank)).eval()
                for p in m.head.parameters():  # a trained head is not zero
                    torch.nn.init.normal_(p, std=0.02)
                return m

            codebook = torch.randn(k, args.latent_dim)
            z = torch.randn(args.batch, args.latent_dim, args.latent, args.latent)
            y = torch.randint(0, 1000, (args.batch,))
            cfm, cfm_model = METHODS["cfm"](codebook), model(args.latent_dim, 0)

            def purrception(m: DiT):
                return lambda: purrception_velocity(
                    posterior_mean(m, guided_features(m, z, 0.5, y, args.cfg_scale), codebook, args.tau), z, 0.5)

            runs = {"cfm": lambda: cfm.velocity(cfm_model, z, 0.5, y, 1.0, args.cfg_scale),
                    "chunked": purrception(model(k, 0)), "factorised": purrception(model(k, args.rank))}
            seconds: dict[str, list[float]] = {name: [] for name in runs}
            with torch.no_grad():
                for run in runs.values():  # warm-up
                    run()
                for _ in range(args.rounds):
                    for name, run in runs.items():
                        run()  # untimed: the timed call finds its own weights in cache, as in a sampling loop
                        start = time.perf_counter()
                        run()
                        seconds[name].append(time.perf_counter() - start)
            median = {name: statistics.median(v) for name, v in seconds.items()}
            flops = {name: case_flops(Case("sample", name, backbone, k, args.latent, args.latent_dim, args.batch,
                                           args.rank, "cpu", "fp32", 1, 0, args.cfg_scale, args.tau, 0, args.threads))
                     for name in VARIANTS}
            for name in VARIANTS:
                t_ratio, f_ratio = median[name] / median["cfm"], flops[name] / flops["cfm"]
                rows.append([spec, k, name, f"{median[name] * 1e3 / args.batch:.1f}", f"{t_ratio:.2f}",
                             f"{f_ratio:.2f}", f"{t_ratio / f_ratio:.2f}"])
    print()
    print(table(rows, ["backbone", "K", "variant", "ms/image", "time/CFM", "FLOPs/CFM", "efficiency"]))


if __name__ == "__main__":
    main()
