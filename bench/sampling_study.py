"""Sampling study (issue 8): FID vs number of function evaluations per solver, and temperature schedules.

Every setting generates the same ``--num`` class-balanced samples (image ``i``: class ``i mod C``, noise from
``(seed, i)``) from one checkpoint and scores them with the embedded protocol (FID on the digit classifier's
penultimate features against the embedded train split, plus the classifier's class accuracy). NFE is measured by
counting calls of the method's endpoint (one guided network evaluation each) per batch. The FID of ``--num`` real
train digits (a random subset of the reference itself) is printed as the finite-sample floor at this ``N``.
(Held-out digits are no floor here: the classifier was trained on them, so their features are atypical.)

Usage::

    python bench/sampling_study.py CHECKPOINT --cache-dir CACHE [--num 500] [--seed 0] [--device cpu]
        [--json out.json] [--part solvers|tau|all|floor]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time

import numpy as np
import torch

from purrception.checkpoint import load_checkpoint
from purrception.data.embedded import load_embedded_mnist
from purrception.evaluation.evaluate import reference_features
from purrception.evaluation.extractors import DigitFeatures
from purrception.evaluation.fid import feature_stats, frechet_distance
from purrception.evaluation.references import EmbeddedReference
from purrception.generation.generate import balanced_labels, generate_images
from purrception.sampling.settings import SamplerSettings
from purrception.tokenizers.store import load_tokenizer

# Sized for a shared 2-core CPU (one network evaluation of 500 digits: ~2 s on one thread).
SOLVER_GRID = [("euler", s) for s in (2, 4, 8, 16, 32)] + \
              [("heun", s) for s in (2, 3, 5, 9)] + \
              [("midpoint", s) for s in (2, 3, 5, 9)] + \
              [(f"dopri5:{tol}", 32) for tol in ("1e-2", "1e-3")]
TAU_GRID = ["0.3", "0.4", "0.5", "0.6", "0.8", "1.0", "1.2",
            "linear:1.2:0.6", "linear:0.6:1.2", "cosine:1.0:0.6", "linear:0.3:0.8", "linear:0.4:1.0",
            "cosine:0.3:0.8", "linear:0.5:0.3"]
TAU_STEPS = 16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--cache-dir", required=True, help="where the digit classifier and reference features live")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--part", choices=["solvers", "tau", "all", "floor"], default="all")
    p.add_argument("--json", default="")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    ckpt = load_checkpoint(args.checkpoint)
    tokenizer = load_tokenizer(ckpt.tokenizer_path).to(args.device)
    method, model = ckpt.build_method().to(args.device), ckpt.build_model(ema=True).to(args.device)
    labels = balanced_labels(args.num, ckpt.num_classes)
    extractor = DigitFeatures(args.cache_dir)
    ref = reference_features(EmbeddedReference("embedded:train"), extractor, args.cache_dir)
    train = load_embedded_mnist("train").images
    real = train[np.random.default_rng(args.seed).permutation(len(train))[: args.num]]
    floor = frechet_distance(feature_stats(extractor.extract(real).features), ref.stats)
    print(f"checkpoint {args.checkpoint} (step {ckpt.step}); N={args.num}, seed={args.seed}, device={args.device}, "
          f"{platform.processor() or platform.machine()}; FID floor (N real train digits) {floor:.2f}", flush=True)

    calls = [0]
    endpoint = method.endpoint

    def counted(*a, **k):
        calls[0] += 1
        return endpoint(*a, **k)

    method.endpoint = counted
    batches = -(-args.num // args.batch_size)

    def run(solver: str, steps: int, tau: str) -> dict:
        calls[0] = 0
        sampler = SamplerSettings(sample_steps=steps, tau=tau, solver=solver)
        t0 = time.perf_counter()
        images = generate_images(method, model, tokenizer, labels, sampler, args.seed, args.batch_size,
                                 device=args.device)
        seconds = time.perf_counter() - t0
        ext = extractor.extract(images)
        row = {"solver": solver, "steps": steps, "tau": tau, "nfe": calls[0] / batches,
               "fid": frechet_distance(feature_stats(ext.features), ref.stats),
               "class_accuracy": float(np.mean(ext.predicted == labels)), "seconds": seconds}
        print(f"| {solver:12s} | {steps:4d} | {tau:15s} | {row['nfe']:6.1f} | {row['fid']:7.2f} | "
              f"{row['class_accuracy']:.3f} | {seconds:6.1f} |", flush=True)
        return row

    header = "| solver       | T    | tau             | NFE    | FID     | acc   | sec    |\n" \
             "|--------------|------|-----------------|--------|---------|-------|--------|"
    rows = []
    if args.part in ("solvers", "all"):
        print(header)
        rows += [run(solver, steps, "1.0") for solver, steps in SOLVER_GRID]
    if args.part in ("tau", "all"):
        print(header)
        rows += [run("euler", TAU_STEPS, tau) for tau in TAU_GRID]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "step": ckpt.step, "num": args.num, "seed": args.seed,
                       "device": args.device, "fid_floor_real_train_subset": floor, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
