"""The chunked K-way head of this working tree against the same module at an earlier git revision, side by side.

Loads ``flows/categorical.py`` as it was at ``--revision`` (``git show``, into a temporary directory) next to the
current one, and times both in one process, interleaved over the rounds (median reported), each with its own
default chunk size: the training op (chunked cross-entropy + z-loss from given features, then backward) and the
sampling read (``posterior_mean``). Also prints the largest difference between the two posterior means. Same DiT
head shapes as ``bench/step.py`` (batch 8, 16x16x4 latents, patch 2).

The head's weights are drawn with standard deviation ``--head-std``; the line for each head prints the range of
its log-partitions at ``tau`` = 1 and at ``--tau``, since the chunked head skips the max shift only while they stay
moderate (training: each row's cross-entropy under ~43 nats; sampling: log-partitions under ~88, float32). A large
``--head-std`` (e.g. 1.0) puts them beyond that and times the recompute-and-shift path instead.

Examples:
    python bench/head_vs_revision.py --revision 40a6658 --threads 2
    python bench/head_vs_revision.py --revision 40a6658 --threads 2 --head-std 1.0
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

MODULE_PATH = "src/purrception/flows/categorical.py"
Z_LOSS_WEIGHT = 1e-5


def module_at(revision: str, workdir: Path) -> ModuleType:
    repo = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{revision}:{MODULE_PATH}"], cwd=repo, capture_output=True, text=True)
    if source.returncode != 0:
        raise SystemExit(f"cannot read {MODULE_PATH} at {revision!r}: {source.stderr.strip()}")
    path = workdir / "categorical_at_revision.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("categorical_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--revision", required=True, help="git revision to compare against, e.g. a commit hash")
    parser.add_argument("--heads", default="256x0,384x0,256x64",
                        help="comma list of <hidden>x<rank> (rank 0 = full head) (default: %(default)s)")
    parser.add_argument("--K", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch default")
    parser.add_argument("--tau", type=float, default=0.9)
    parser.add_argument("--head-std", type=float, default=0.02,
                        help="standard deviation of the head's random weights (default: %(default)s)")
    args = parser.parse_args()

    import torch

    from purrception.flows import categorical as current
    from purrception.models.dit import DiT, DiTConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch 8, 16x16x4 latents, K={args.K}; "
          f"median of {args.rounds} interleaved rounds; {args.revision} -> working tree")
    with tempfile.TemporaryDirectory() as tmp:
        before = module_at(args.revision, Path(tmp))
        for spec in args.heads.split(","):
            hidden, rank = (int(v) for v in spec.split("x"))
            torch.manual_seed(0)
            model = DiT(DiTConfig(input_size=16, in_channels=4, out_channels=args.K, patch_size=2, hidden_size=hidden,
                                  depth=1, num_heads=max(1, hidden // 64), num_classes=10, head_rank=rank))
            for p in model.head.parameters():  # a trained head is not zero
                torch.nn.init.normal_(p, std=args.head_std)
            h = torch.randn(8, 64, hidden, requires_grad=True)
            codes = torch.randint(0, args.K, (8, 16, 16))
            codebook = torch.randn(args.K, 4)

            def train(module: ModuleType) -> Callable[[], None]:
                def step() -> None:
                    ce, z_sq = module.cross_entropy_and_zloss(model, h, codes, Z_LOSS_WEIGHT)
                    (ce + Z_LOSS_WEIGHT * z_sq).backward()
                    h.grad = None
                    model.zero_grad(set_to_none=True)
                return step

            def read(module: ModuleType) -> Callable[[], torch.Tensor]:
                def mean() -> torch.Tensor:
                    with torch.no_grad():
                        return module.posterior_mean(model, h, codebook, args.tau)
                return mean

            diff = (read(before)() - read(current)()).abs().max().item()
            with torch.no_grad():
                logits = current.logits_from_features(model, h)
                lse, lse_tau = torch.logsumexp(logits, dim=-1), torch.logsumexp(logits / args.tau, dim=-1)
                del logits
            lse_range = (f"log-partition [{lse.min():.0f}, {lse.max():.0f}], "
                         f"at tau {args.tau} [{lse_tau.min():.0f}, {lse_tau.max():.0f}]")
            t = interleaved({"train before": train(before), "train now": train(current),
                             "read before": read(before), "read now": read(current)}, args.rounds)
            print(f"hidden {hidden}, {'rank ' + str(rank) if rank else 'full head'}: loss+backward "
                  f"{t['train before'] * 1e3:.0f} -> {t['train now'] * 1e3:.0f} ms "
                  f"({t['train now'] / t['train before']:.2f}x); posterior mean {t['read before'] * 1e3:.0f} -> "
                  f"{t['read now'] * 1e3:.0f} ms ({t['read now'] / t['read before']:.2f}x); max |diff| {diff:.1e}; "
                  f"{lse_range}")


if __name__ == "__main__":
    sys.exit(main())
