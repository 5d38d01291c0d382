"""Shared machinery of ``bench/step.py`` and ``bench/head.py``: cases, variants, FLOPs from shapes, and one fresh
subprocess per measurement (so that CPU peak memory, read from ``ru_maxrss``, belongs to that variant alone).

Two memory figures per case:

- ``peak_bytes``: the whole process (CPU: ``ru_maxrss`` growth after imports; GPU: ``max_memory_allocated``), so it
  includes weights, gradients and optimizer state;
- ``step_bytes``: what one step adds above the memory held between steps (weights, optimizer state, inputs), i.e.
  activations, gradients and transients, measured in a second child after one warm-up step. CPU: that child runs
  with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``), so freed tensors go back to the OS and
  the resident size tracks live tensors; the figure is the peak resident size of one step (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the resident size before it. GPU: ``max_memory_allocated`` of one step minus
  ``memory_allocated`` before it.

Not a library module: run the two scripts. A child is started as ``python bench/_harness.py '<case json>'`` and
prints one JSON line with its measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

Z_LOSS_WEIGHT = 1e-5  # paper App. D
DFM_EMBED_DIM = 64    # DFM's default token embedding width (its backbone input channels)


@dataclass(frozen=True)
class Backbone:
    """A DiT shape: ``DiT-B/2`` style presets or ``<hidden>x<depth>/<patch>`` (heads = hidden / 64)."""

    spec: str
    hidden: int
    depth: int
    heads: int
    patch: int


def parse_backbone(spec: str) -> Backbone:
    from purrception.models.dit import DIT_PRESETS

    size, _, patch = spec.removeprefix("DiT-").partition("/")
    if size in DIT_PRESETS:
        p = DIT_PRESETS[size]
        return Backbone(spec, p["hidden_size"], p["depth"], p["num_heads"], int(patch))
    hidden, _, depth = size.partition("x")
    if not (hidden.isdigit() and depth.isdigit() and patch.isdigit()):
        raise SystemExit(f"backbone {spec!r}: use a preset like DiT-B/2 or <hidden>x<depth>/<patch> like 384x6/2")
    return Backbone(spec, int(hidden), int(depth), max(1, int(hidden) // 64), int(patch))


@dataclass(frozen=True)
class Case:
    """One measurement, run in its own process."""

    task: str            # "step" (full training step), "sample" (one guided velocity eval), "head" (head op only)
    variant: str
    backbone: Backbone
    K: int
    latent: int          # latent grid side H = W
    d: int               # latent / codebook dim
    batch: int
    rank: int            # factorised head width
    device: str
    dtype: str           # fp32 | bf16
    steps: int
    warmup: int
    cfg_scale: float
    tau: float
    chunk_mib: int       # 0 = library default budget
    threads: int


# ------------------------------------------------------------------------------------------------------------
# FLOPs from shapes (multiply-adds x 2, matmuls only)
# ------------------------------------------------------------------------------------------------------------


def backbone_flops(c: Case) -> float:
    """Forward FLOPs of ``DiT.features`` for one image."""
    h, p = c.backbone.hidden, c.backbone.patch
    t = (c.latent // p) ** 2
    per_block = 2 * t * h * 3 * h + 2 * 2 * t * t * h + 2 * t * h * h + 2 * 2 * t * h * 4 * h + 2 * h * 6 * h
    d_in = DFM_EMBED_DIM if VARIANTS[c.variant].discrete else c.d
    embed = 2 * t * d_in * p * p * h + 2 * (256 * h + h * h) + 2 * h * 2 * h
    return c.backbone.depth * per_block + embed


def head_flops(c: Case) -> float:
    """Forward FLOPs of the variant's head for one image (+ the posterior read ``softmax @ E`` when sampling)."""
    h, p = c.backbone.hidden, c.backbone.patch
    t = (c.latent // p) ** 2
    out = VARIANTS[c.variant].out_channels(c)
    if VARIANTS[c.variant].factorised:
        return 2 * t * h * p * p * c.rank + 2 * t * p * p * c.rank * out
    return 2 * t * h * p * p * out


def case_flops(c: Case) -> float:
    """FLOPs per image of what the case times: training = 3x forward; sampling = guided forward + read."""
    if c.task == "step":
        return 3 * (backbone_flops(c) + head_flops(c))
    if c.task == "head":
        return 3 * head_flops(c)
    guided = 2 if c.cfg_scale != 1.0 else 1
    read = 0 if c.variant == "cfm" or VARIANTS[c.variant].discrete else 2 * c.latent * c.latent * c.K * c.d
    return guided * backbone_flops(c) + head_flops(c) + read


# ------------------------------------------------------------------------------------------------------------
# Variants
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """How one head is built, trained and read. ``op(model, h, codes) -> (ce, z_sq)`` for K-way heads.

    ``discrete``: DFM's backbone (token ids in through a ``K + 1`` embedding table, loss on masked positions,
    sampling draws codes instead of reading the posterior mean). ``reference``: the materialised variant that the
    ``/naive`` columns compare against.
    """

    name: str
    description: str
    factorised: bool
    categorical: bool
    op: Callable | None = None
    read: Callable | None = None
    discrete: bool = False
    reference: str = "naive"

    def out_channels(self, c: Case) -> int:
        return c.K if self.categorical else c.d


def _ops():
    """Per K-way variant: ``(loss(model, h, codes), read(model, h, codebook, tau))``; loss = ce + z-loss term."""
    from purrception.flows import categorical as cat
    from purrception.flows.liger_head import liger_cross_entropy_and_zloss

    def combined(ce_and_z):
        def loss(m, h, codes):
            ce, z_sq = ce_and_z(m, h, codes)
            return ce + Z_LOSS_WEIGHT * z_sq
        return loss

    hinted = combined(lambda m, h, codes: cat.cross_entropy_and_zloss(m, h, codes, Z_LOSS_WEIGHT, _CHUNK_BYTES))
    plain = combined(lambda m, h, codes: cat.cross_entropy_and_zloss(m, h, codes, None, _CHUNK_BYTES))
    liger = lambda m, h, codes: liger_cross_entropy_and_zloss(m, h, codes, Z_LOSS_WEIGHT)[0]  # noqa: E731
    chunked_read = lambda m, h, book, tau: cat.posterior_mean(m, h, book, tau, _CHUNK_BYTES)  # noqa: E731
    return {"naive": (combined(cat.naive_cross_entropy_and_zloss), cat.naive_posterior_mean),
            "chunked": (hinted, chunked_read), "chunked-recompute": (plain, chunked_read),
            "factorised": (hinted, chunked_read), "liger": (liger, chunked_read)}


def _dfm_ops():
    """Per DFM variant: ``(loss(model, h, codes, masked), draw(model, h, reveal, w, tau))``."""
    import torch

    from purrception.flows import categorical as cat
    from purrception.flows.dfm import quantile_draws, sample_from_quantile

    def combined(ce_and_z):
        def loss(m, h, codes, masked):
            ce, z_sq = ce_and_z(m, h, codes, masked)
            return ce + Z_LOSS_WEIGHT * z_sq
        return loss

    def naive_draw(m, h, reveal, w, tau):
        return sample_from_quantile(torch.softmax(cat.logits_from_features(m, h).float() / tau, dim=-1), w)

    chunked = combined(lambda m, h, codes, masked: cat.masked_cross_entropy_and_zloss(m, h, codes, masked,
                                                                                      Z_LOSS_WEIGHT, _CHUNK_BYTES))
    chunked_draw = lambda m, h, reveal, w, tau: quantile_draws(m, h, reveal, w, tau, _CHUNK_BYTES)  # noqa: E731
    return {"dfm-naive": (combined(cat.naive_masked_cross_entropy_and_zloss), naive_draw),
            "dfm": (chunked, chunked_draw)}


_CHUNK_BYTES: int | None = None

VARIANTS: dict[str, Variant] = {
    "cfm": Variant("cfm", "CFM: plain head out_channels=d, MSE (flows.cfm)", False, False),
    "naive": Variant("naive", "Purrception, all logits materialised (the authors' way)", False, True),
    "chunked": Variant("chunked", "Purrception, chunked head, grads in the forward sweep", False, True),
    "chunked-recompute": Variant("chunked-recompute", "Purrception, chunked head, logits recomputed in backward",
                                 False, True),
    "factorised": Variant("factorised", "Purrception, factorised head (head_rank=r), chunked", True, True),
    "liger": Variant("liger", "Purrception, Liger-Kernel fused linear cross-entropy (head_kernel='liger'; CUDA only; "
                     "sampling as chunked)", False, True),
    "dfm-naive": Variant("dfm-naive", "DFM, all logits materialised: CE on the masked positions selected from them; "
                         "sampling: softmax and inverse CDF over all B x H x W x K", False, True, discrete=True,
                         reference="dfm-naive"),
    "dfm": Variant("dfm", "DFM, chunked head on the rows of masked (training) / revealed (sampling) positions only "
                   "(flows.dfm; FLOPs counted for the full head)", False, True, discrete=True, reference="dfm-naive"),
}
#: Variants that run only on CUDA (left out of the default list elsewhere).
CUDA_ONLY = ("liger",)
#: Variants run only when named in ``--variants`` (the default list compares Purrception's heads with CFM).
OPT_IN = ("dfm-naive", "dfm")


# ------------------------------------------------------------------------------------------------------------
# The child: build, warm up, time, report
# ------------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise KeyError(field)


def _step_bytes(run: Callable[[], None], cuda: bool) -> int | None:
    """Memory one call of ``run`` adds above what is held before it (CPU: Linux only, else None)."""
    import torch

    if cuda:
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        return torch.cuda.max_memory_allocated() - before
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
        before = _proc_status_bytes("VmRSS")
    except OSError:
        return None
    run()
    return _proc_status_bytes("VmHWM") - before


def run_child(c: Case, memory: bool = False) -> dict:
    """Time ``c`` (median of the timed repetitions, and the process's peak memory), or with ``memory`` measure
    ``step_bytes`` after one warm-up call."""
    import torch

    global _CHUNK_BYTES
    _CHUNK_BYTES = (c.chunk_mib << 20) if c.chunk_mib else None
    if c.threads:
        torch.set_num_threads(c.threads)
    from purrception.flows import METHODS
    from purrception.flows.base import drop_labels, make_path_sample
    from purrception.flows.purrception import purrception_velocity
    from purrception.models.dit import DiT, DiTConfig
    from purrception.sampling.guidance import guided_features
    from purrception.training.optimizer import adamw

    device = torch.device(c.device)
    cuda = device.type == "cuda"
    base_rss = _rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    variant = VARIANTS[c.variant]
    torch.manual_seed(0)
    model_cfg = DiTConfig(input_size=c.latent, in_channels=DFM_EMBED_DIM if variant.discrete else c.d,
                          out_channels=variant.out_channels(c), patch_size=c.backbone.patch,
                          hidden_size=c.backbone.hidden, depth=c.backbone.depth, num_heads=c.backbone.heads,
                          num_classes=1000, head_rank=c.rank if variant.factorised else 0,
                          input_vocab_size=c.K + 1 if variant.discrete else 0)
    model = DiT(model_cfg).to(device)
    for p in model.head.parameters():     # a trained head is not zero: give softmax something to do
        torch.nn.init.normal_(p, std=0.02)
    codebook = torch.randn(c.K, c.d, device=device)
    gen = torch.Generator(device).manual_seed(0)
    codes = torch.randint(0, c.K, (c.batch, c.latent, c.latent), device=device, generator=gen)
    y = torch.randint(0, 1000, (c.batch,), device=device, generator=gen)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=c.dtype == "bf16")
    ops = _dfm_ops() if variant.discrete else _ops()
    if variant.discrete:
        from purrception.flows.base import sample_time
        from purrception.flows.dfm import KAPPA_SCHEDULERS, mask_path_sample
    cfm = METHODS["cfm"](codebook) if "cfm" in METHODS else None  # else: DiT forward + MSE, the same cost

    def cfm_loss() -> torch.Tensor:
        if cfm is not None:
            return cfm.loss(model, codes, y, gen).loss
        path = make_path_sample(codebook, codes, gen)
        out = model(path.z_t, path.t, drop_labels(y, 0.1, model.null_class, gen)).permute(0, 3, 1, 2).float()
        return (out - (path.z1 - path.z0)).pow(2).mean()

    def cfm_velocity() -> torch.Tensor:
        if cfm is not None:
            return cfm.velocity(model, z, 0.5, y, 1.0, c.cfg_scale)
        h = guided_features(model, z, 0.5, y, c.cfg_scale)
        return model.unpatchify(model.head(h), c.d).permute(0, 3, 1, 2).float()

    if c.task == "step":
        opt = adamw(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)  # as in training

        def run() -> None:
            with autocast:
                if variant.discrete:  # as DFM.loss: x_t on the masked path, the loss on its masked positions
                    t = sample_time(c.batch, device, gen)
                    x_t = mask_path_sample(codes, t, KAPPA_SCHEDULERS["linear"], c.K, gen)
                    yy = drop_labels(y, 0.1, model.null_class, gen)
                    loss = ops[c.variant][0](model, model.features(x_t, t, yy), codes, x_t == c.K)
                elif variant.categorical:
                    path = make_path_sample(codebook, codes, gen)
                    yy = drop_labels(y, 0.1, model.null_class, gen)
                    loss = ops[c.variant][0](model, model.features(path.z_t, path.t, yy), codes)
                else:
                    loss = cfm_loss()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)  # as the training loop does: no gradients are held between steps
    elif c.task == "head":
        h = torch.randn(c.batch, (c.latent // c.backbone.patch) ** 2, c.backbone.hidden, device=device,
                        requires_grad=True)
        target = torch.randn(c.batch, c.d, c.latent, c.latent, device=device)
        masked = torch.rand(codes.shape, device=device, generator=gen) < 0.5  # DFM: E[masked fraction] = 1/2

        def run() -> None:
            with autocast:
                if variant.discrete:
                    loss = ops[c.variant][0](model, h, codes, masked)
                elif variant.categorical:
                    loss = ops[c.variant][0](model, h, codes)
                else:
                    out = model.unpatchify(model.head(h), c.d).permute(0, 3, 1, 2).float()
                    loss = (out - target).pow(2).mean()
            loss.backward()
            h.grad = None
            model.zero_grad(set_to_none=True)
    else:
        model.eval()
        z = torch.randn(c.batch, c.d, c.latent, c.latent, device=device, generator=gen)
        # DFM: the all-mask state, every position revealed (the sampler's last step, its largest draw)
        x_mask = torch.full(codes.shape, c.K, dtype=torch.long, device=device)
        reveal = torch.ones(codes.shape, dtype=torch.bool, device=device)
        w = torch.rand(codes.shape, device=device, generator=gen, dtype=torch.float64)

        def run() -> None:
            with torch.no_grad(), autocast:
                if variant.discrete:
                    ops[c.variant][1](model, guided_features(model, x_mask, 0.5, y, c.cfg_scale), reveal, w, c.tau)
                elif variant.categorical:
                    mu = ops[c.variant][1](model, guided_features(model, z, 0.5, y, c.cfg_scale), codebook, c.tau)
                    purrception_velocity(mu, z, 0.5)
                else:
                    cfm_velocity()

    if memory:
        run()  # creates the optimizer state
        return {"step_bytes": _step_bytes(run, cuda)}
    times = []
    for i in range(c.warmup + c.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if cuda:
            torch.cuda.synchronize()
        if i >= c.warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else _rss_bytes() - base_rss
    return {"seconds": statistics.median(times), "peak_bytes": peak,
            "head_params": sum(p.numel() for p in model.head.parameters())}


# ------------------------------------------------------------------------------------------------------------
# The parent: arguments, one subprocess per case, tables
# ------------------------------------------------------------------------------------------------------------


def add_shape_args(parser: argparse.ArgumentParser) -> None:
    """The shapes every head benchmark sweeps: backbones, codebook sizes, latents, batch, factorised rank."""
    parser.add_argument("--backbones", default="256x6/2,384x6/2",
                        help="comma list: presets (DiT-B/2) or <hidden>x<depth>/<patch> (default: %(default)s)")
    parser.add_argument("--ks", default="1024,4096,16384", help="codebook sizes K (default: %(default)s)")
    parser.add_argument("--latent", type=int, default=16, help="latent grid side (32 for 256px images)")
    parser.add_argument("--latent-dim", type=int, default=4, help="codebook dim d")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=64, help="factorised head width r")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    add_shape_args(parser)
    parser.add_argument("--variants", default=None,
                        help="comma list of " + ", ".join(VARIANTS) + " (default: all that run on --device except "
                        + ", ".join(OPT_IN) + ")")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=5, help="timed repetitions (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--chunk-mib", type=int, default=0, help="chunk memory budget; 0 = library default")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each child; 0 = torch default")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every case this many times, round-robin over the cases; report the median")
    parser.add_argument("--quick", action="store_true", help="K=16384 only, 3 timed repetitions, 1 warm-up")


def cases_from_args(args: argparse.Namespace, task: str, cfg_scale: float = 1.0, tau: float = 1.0) -> list[Case]:
    ks = [16384] if args.quick else [int(k) for k in args.ks.split(",")]
    steps, warmup = (3, 1) if args.quick else (args.steps, args.warmup)
    names = (args.variants.split(",") if args.variants else
             [n for n in VARIANTS if (args.device.startswith("cuda") or n not in CUDA_ONLY) and n not in OPT_IN])
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    out = []
    for spec in args.backbones.split(","):
        bb = parse_backbone(spec)
        for k in ks:
            for name in names:
                out.append(Case(task, name, bb, k, args.latent, args.latent_dim, args.batch, args.rank, args.device,
                                args.dtype, steps, warmup, cfg_scale, tau, args.chunk_mib, args.threads))
    return out


def _child(c: Case, memory: bool) -> dict:
    payload = json.dumps(asdict(c))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)  # freed tensors leave the resident set at once
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), payload] + (["memory"] if memory else []),
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"case {c.variant} K={c.K} {c.backbone.spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_all(cases: list[Case], rounds: int = 1, memory: bool = True) -> dict[Case, dict]:
    """Time every case ``rounds`` times, round-robin (each round runs every case once, each in a fresh process),
    and, with ``memory``, measure its ``step_bytes`` once (one more process per case); ``seconds`` is the median over
    the rounds. Interleaving the rounds spreads the machine's slow spells over all variants instead of whichever case
    ran during one. Progress on stderr."""
    timings: dict[Case, list[dict]] = {c: [] for c in cases}
    for r in range(rounds):
        for c in cases:
            timings[c].append(_child(c, memory=False))
            print(f"  round {r + 1}/{rounds}: {c.task} {c.backbone.spec} K={c.K} {c.variant}: "
                  f"{timings[c][-1]['seconds'] * 1e3:.1f} ms", file=sys.stderr, flush=True)
    results: dict[Case, dict] = {}
    for c in cases:
        runs = timings[c]
        results[c] = {**runs[0], "seconds": statistics.median(run["seconds"] for run in runs),
                      "peak_bytes": max(run["peak_bytes"] for run in runs),
                      **(_child(c, memory=True) if memory else {})}
    return results


def machine_line(device: str, threads: int) -> str:
    import platform

    import torch

    cpu = f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})"
    what = torch.cuda.get_device_name(0) if device.startswith("cuda") else cpu
    return f"machine: {what}; torch {torch.__version__}; torch threads per child: {threads or torch.get_num_threads()}"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(str(v).rjust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows])


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def ratio(value: float | None, reference: dict | None, key: str) -> str:
    """``value / reference[key]`` to two decimals, or ``-`` when either is missing."""
    base = None if reference is None else reference.get(key)
    return "-" if value is None or not base else f"{value / base:.2f}"


def with_variant(c: Case, variant: str) -> Case:
    return replace(c, variant=variant)


if __name__ == "__main__":
    raw = json.loads(sys.argv[1])
    raw["backbone"] = Backbone(**raw["backbone"])
    print(json.dumps(run_child(Case(**raw), memory=sys.argv[2:] == ["memory"])))
