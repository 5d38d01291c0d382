"""``purr demo``: train (or reuse) everything on an embedded data set and write a sample grid."""

from __future__ import annotations

import argparse
import json

from purrception.cli.common import add_sample_steps_arg, positive_int, seed_int
from purrception.data.datasets import DATASETS
from purrception.data.tokenizer_folder import FOLDER_RECIPE
from purrception.demo import DemoSettings, run_demo
from purrception.sampling.schedules import SHAPES, as_spec
from purrception.sampling.settings import SamplerSettings
from purrception.sampling.solvers import SOLVERS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="train and sample on a data set: the embedded digits, emoji or a folder "
                                           "(CPU, minutes)",
                              description="Train (or reuse cached) tokenizer and Purrception model on a data set; "
                                          "write grid.png, samples.npz and demo.json.")
    p.add_argument("--data", default="digits", metavar="NAME|DIR",
                   help="; ".join(f"{d.name}: {d.summary}" + (f" (pip install 'purrception[{d.extra}]')"
                                                               if d.extra else "") for d in DATASETS.values())
                   + "; or a labelled image folder DIR/<class>/*.png (default digits)")
    p.add_argument("--out", default="purr-demo", help="output folder (default ./purr-demo); re-running reuses it")
    p.add_argument("--cache-dir", default="",
                   help="cache for tokenizer/shards/classifier (default ~/.cache/purrception)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training field of the data set's preset, e.g. --set steps=3000 (training steps; "
                        "sampling steps are --sample-steps; on a reused --out, more steps train the cached model on)")
    taus = list(DemoSettings.temperatures)
    p.add_argument("--tau", nargs="+", default=taus,
                   help=f"temperatures to sample at, one panel each: numbers > 0 or schedules {'|'.join(SHAPES)}:"
                        f"START:END (default {' '.join(map(str, taus))})")
    p.add_argument("--per-class", type=positive_int, default=DemoSettings.per_class,
                   help=f"samples per class and temperature (default {DemoSettings.per_class})")
    add_sample_steps_arg(p, DemoSettings.sample_steps)
    p.add_argument("--solver", default=DemoSettings.solver,
                   help=f"ODE solver: {', '.join(SOLVERS)} (default {DemoSettings.solver})")
    p.add_argument("--cfg-scale", type=float, default=DemoSettings.cfg_scale,
                   help=f"classifier-free guidance scale (1 = off; default {DemoSettings.cfg_scale:g})")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--tokenizer-steps", type=positive_int, default=None,
                   help="training steps of the tokenizer, on first use (default: the data set's recipe: "
                        + ", ".join(f"{d.name} {d.tokenizer.train.steps}" for d in DATASETS.values())
                        + f", an image folder {FOLDER_RECIPE.train.steps})")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    samplers = [SamplerSettings(sample_steps=args.sample_steps, tau=tau, cfg_scale=args.cfg_scale, solver=args.solver)
                for tau in args.tau]
    settings = DemoSettings(out_dir=args.out, data=args.data, cache_dir=args.cache_dir, train_overrides=args.overrides,
                            temperatures=tuple(as_spec(s.tau) for s in samplers), per_class=args.per_class,
                            sample_steps=args.sample_steps, solver=samplers[0].solver,
                            cfg_scale=args.cfg_scale, seed=args.seed, tokenizer_steps=args.tokenizer_steps,
                            device=args.device)
    summary = run_demo(settings)
    print(json.dumps({"results": summary["results"], "outputs": summary["outputs"],
                      "timings_s": summary["timings_s"]}, indent=2))
    return 0
