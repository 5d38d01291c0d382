"""The evaluation pipeline: generator (a checkpoint, or a saved pipeline) -> N class-balanced samples -> features ->
scores -> a reproducible JSON.

Sample ``i`` (``0 <= i < N``) is generated for class ``i mod C`` from noise seeded by ``(seed, i)`` only, so the
samples — and every score — are the same whatever the batch size or the number of processes. Under torchrun, rank
``r`` of ``W`` generates and featurises the contiguous indices ``[N r / W, N (r+1) / W)``; rank 0 gathers exactly
``N`` rows, waits at a barrier, and scores them against the reference statistics (cached per source and extractor).

Three protocols (:data:`PROTOCOLS`):

- ``digits`` (embedded data): FID on the digit classifier's penultimate features against the embedded train split
  (the generator's training data; the classifier never saw it), precision / recall, and the accuracy with which the
  classifier reads the requested class.
- ``folder`` (any labelled image folder, ``reference=DIR``): a judge classifier trained once on a class-balanced
  half of the folder (``evaluation.folder_judge``), FID on its penultimate features against the rest of the
  folder, precision / recall, and class accuracy; the judge's own accuracy on the rest is in the report.
- ``inception`` (paper App. C): torch-fidelity's Inception-v3 FID against a reference set you give (the 50k ImageNet
  validation images at 256x256, as a folder or an ADM ``.npz``), FID on the first ``n`` samples for every
  ``fid_subsets`` entry (FID-10k from a 50k run), Inception Score and precision / recall.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from purrception.checkpoint import Checkpoint
from purrception.distributed import DistInfo, barrier, cache_first, contiguous_slice, gather_to_rank0
from purrception.errors import PurrError
from purrception.evaluation.extractors import (
    DigitFeatures,
    Extracted,
    FeatureExtractor,
    FolderFeatures,
    InceptionFeatures,
)
from purrception.evaluation.fid import ReferenceFeatures, feature_stats, frechet_distance, load_or_compute_reference
from purrception.evaluation.folder_judge import split_folder
from purrception.evaluation.metrics import class_accuracy, inception_score, precision_recall
from purrception.evaluation.references import ReferenceSource, open_reference, to_channels
from purrception.generation.generate import balanced_labels, generate_images
from purrception.generation.generator import Generator
from purrception.io import atomic_write, cache_root
from purrception.sampling.schedules import Schedule
from purrception.sampling.settings import SamplerSettings
from purrception.tokenizers.base import VQTokenizer

__all__ = ["EvalSettings", "Protocol", "PROTOCOLS", "default_protocol", "check", "generate_slice", "gather_samples",
           "score_samples", "build_report", "reference_features",
           "score", "evaluate_checkpoint", "evaluate_generator", "save_adm_npz", "format_table", "REPORT_FORMAT",
           "REPORT_VERSION"]

log = logging.getLogger(__name__)

#: format and version (:mod:`purrception.formats`) of the JSON report of ``purr eval`` (:func:`build_report`)
REPORT_FORMAT, REPORT_VERSION = "purrception-eval-report", 1


@dataclass
class EvalSettings:
    """Everything that decides an evaluation's numbers (all of it goes into the JSON report).

    The sampler fields (``sample_steps``, ``tau``, ``cfg_scale``, ``solver``) are checked by
    :class:`~purrception.sampling.settings.SamplerSettings` when the settings are made (a spec string becomes a
    :class:`~purrception.sampling.schedules.Schedule`); the report records a schedule by its spec string. Arbitrary
    callables are refused when the evaluation starts: a report could not say what they were.
    """

    num_samples: int = 1000
    seed: int = 0
    batch_size: int = 100
    sample_steps: int = 100
    tau: float | Schedule = 1.0
    cfg_scale: float | Schedule = 1.0
    solver: str = "euler"
    ema: bool = True
    protocol: str = ""                          # "" = default_protocol(tokenizer)
    reference: str = ""                         # "" = the protocol's default reference
    fid_subsets: tuple[int, ...] = ()           # also FID on the first n samples (e.g. 10000 of 50000)
    precision_recall: bool = True
    neighbours: int = 3                         # k of the k-NN manifolds
    inception_path: str = ""                    # torch-fidelity's weight file (inception protocol)
    reference_labels: str = ""                  # labels file of a flat reference folder (folder protocol)
    cache_dir: str = ""                         # reference statistics and judges; "" = the user cache (cache_root)
    feature_batch_size: int = 100

    def __post_init__(self) -> None:
        sampler = self.sampler()
        self.sample_steps, self.tau, self.cfg_scale = sampler.sample_steps, sampler.tau, sampler.cfg_scale

    def sampler(self) -> SamplerSettings:
        return SamplerSettings(sample_steps=self.sample_steps, tau=self.tau, cfg_scale=self.cfg_scale,
                               solver=self.solver)

    def check(self) -> None:
        self.sampler().record()  # refuses knobs a report could not record
        if self.num_samples < 2:
            raise PurrError(f"`num_samples` must be at least 2 for FID, got {self.num_samples}")
        bad = [n for n in self.fid_subsets if not 2 <= n <= self.num_samples]
        if bad:
            raise PurrError(f"`fid_subsets` entry {bad[0]} is outside 2..{self.num_samples} (the number of samples)")


@dataclass(frozen=True)
class Protocol:
    """A feature space to score in and the reference it is compared with by default."""

    name: str
    build_extractor: Callable[[EvalSettings, torch.device, VQTokenizer], FeatureExtractor]
    default_reference: str | None
    summary: str
    #: what ``reference`` should name, for the error when a protocol without a default reference gets none
    reference_hint: str = ""
    #: protocol-specific EvalSettings fields this protocol reads (setting one for another protocol is refused)
    reads: frozenset[str] = frozenset()

    def reference_for(self, settings: EvalSettings) -> str:
        """The reference spec these settings score against under this protocol, after refusing settings meant for
        another protocol and a missing reference where the protocol has no default."""
        for option in _PROTOCOL_OPTIONS:
            if getattr(settings, option) and option not in self.reads:
                raise PurrError(f"`{option}` is not used by the {self.name} protocol; drop it or pick another "
                                "`protocol`")
        spec = settings.reference or self.default_reference
        if not spec:
            raise PurrError(f"the {self.name} protocol has no default reference: pass `reference` "
                            f"{self.reference_hint}")
        return spec


def _digits(settings: EvalSettings, device: torch.device, tokenizer: VQTokenizer) -> FeatureExtractor:
    return DigitFeatures(settings.cache_dir)


def _folder(settings: EvalSettings, device: torch.device, tokenizer: VQTokenizer) -> FeatureExtractor:
    split = split_folder(settings.reference, tokenizer.image_size, tokenizer.image_channels,
                         settings.reference_labels or None)
    return FolderFeatures(split, settings.cache_dir)


def _inception(settings: EvalSettings, device: torch.device, tokenizer: VQTokenizer) -> FeatureExtractor:
    if not settings.inception_path:
        raise PurrError("the inception protocol needs torch-fidelity's weights: pass "
                        "`inception_path=PATH/pt_inception-2015-12-05-6726825d.pth` (nothing is downloaded)")
    return InceptionFeatures(settings.inception_path, device, settings.feature_batch_size)


PROTOCOLS: dict[str, Protocol] = {
    "digits": Protocol("digits", _digits, "digits:train",
                       "digit-classifier features (embedded data); FID, precision/recall, class accuracy"),
    "folder": Protocol("folder", _folder, None,
                       "a judge trained on half of a labelled folder (the reference DIR); FID on its features "
                       "against the rest, precision/recall, class accuracy",
                       reference_hint="DIR, the labelled image folder the generator was trained on",
                       reads=frozenset({"reference_labels"})),
    "inception": Protocol("inception", _inception, None,
                          "torch-fidelity Inception-v3 (paper App. C); FID, IS, precision/recall",
                          reference_hint="(an image folder, e.g. the 50k ImageNet validation images at 256x256, "
                                         "or an ADM .npz batch)",
                          reads=frozenset({"inception_path"})),
}

#: protocol-specific settings: refused by the protocols that do not read them
_PROTOCOL_OPTIONS = ("inception_path", "reference_labels")


def default_protocol(tokenizer: VQTokenizer) -> str:
    """``digits`` for 28x28 grey images (the embedded data), ``inception`` otherwise."""
    return "digits" if (tokenizer.image_size, tokenizer.image_channels) == (28, 1) else "inception"


def generate_slice(generator: Generator, tokenizer: VQTokenizer, settings: EvalSettings, info: DistInfo,
                   progress: bool = False) -> tuple[range, np.ndarray, np.ndarray]:
    """This rank's indices, their requested labels and their generated uint8 images."""
    if generator.num_classes <= 0:
        raise PurrError("class-balanced evaluation needs a class-conditional generator (num_classes > 0)")
    indices = contiguous_slice(settings.num_samples, info.rank, info.world_size)
    labels = balanced_labels(settings.num_samples, generator.num_classes)[indices.start : indices.stop]
    method, model = generator.method.to(info.device), generator.model.to(info.device)
    images = generate_images(method, model, tokenizer, labels, settings.sampler(), settings.seed,
                             settings.batch_size, first_index=indices.start, device=str(info.device),
                             progress=progress)
    return indices, labels, images


def reference_features(source: ReferenceSource, extractor: FeatureExtractor, cache_dir: str | Path,
                       batch_size: int = 500) -> ReferenceFeatures:
    """Features of a reference set, from the cache or computed once and cached."""

    def compute() -> tuple[np.ndarray, dict[str, Any]]:
        log.info("computing reference features of %d images (%s) with %s", len(source), source.kind, extractor.name)
        parts = [extractor.extract(batch).features for batch in source.batches(batch_size, extractor.channels)]
        return np.concatenate(parts), {"source": source.describe(), "extractor": extractor.name}

    return load_or_compute_reference(cache_dir, source.fingerprint(), extractor.fingerprint(), compute)


def score(samples: Extracted, labels: np.ndarray, reference: ReferenceFeatures, settings: EvalSettings,
          device: torch.device | str = "cpu") -> dict[str, float]:
    """Every metric the extracted features allow: FID (and FID on prefixes), IS, precision/recall, class accuracy."""
    n = samples.features.shape[0]
    metrics = {"fid": frechet_distance(feature_stats(samples.features), reference.stats)}
    for m in sorted(set(settings.fid_subsets) - {n}):
        metrics[f"fid_first_{m}"] = frechet_distance(feature_stats(samples.features[:m]), reference.stats)
    if samples.logits is not None:
        metrics["inception_score_mean"], metrics["inception_score_std"] = inception_score(samples.logits)
    if settings.precision_recall:
        metrics["precision"], metrics["recall"] = precision_recall(reference.features, samples.features,
                                                                   settings.neighbours, device)
    if samples.predicted is not None:
        metrics["class_accuracy"] = class_accuracy(samples.predicted, labels)
    return metrics


def save_adm_npz(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """The ADM evaluation suite's sample batch: ``arr_0`` uint8 ``(N, H, W, 3)`` and ``arr_1`` the labels."""
    rgb = to_channels(images, 3)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, arr_0=rgb, arr_1=np.asarray(labels, dtype=np.int64))

    atomic_write(path, write)


def _versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return {"purrception": version("purrception"), "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def evaluate_checkpoint(ckpt: Checkpoint, tokenizer: VQTokenizer, settings: EvalSettings, info: DistInfo,
                        export_npz: str | Path | None = None, progress: bool = False) -> dict[str, Any] | None:
    """:func:`evaluate_generator` on a training checkpoint (its method and architecture travel inside it), with the
    EMA weights unless ``settings.ema`` is false."""
    return evaluate_generator(Generator.from_checkpoint(ckpt, settings.ema), tokenizer, settings, info,
                              export_npz, progress)


def evaluate_generator(generator: Generator, tokenizer: VQTokenizer, settings: EvalSettings, info: DistInfo,
                       export_npz: str | Path | None = None, progress: bool = False) -> dict[str, Any] | None:
    """Run the whole evaluation on every rank; rank 0 returns the report, the other ranks return None.

    Four steps: **check** the settings against the protocol and the generator (:func:`check`), **generate** this
    rank's share of the samples and gather them on rank 0 (:func:`generate_slice`, :func:`gather_samples`),
    **score** them against the reference's features (:func:`score_samples`), and **report** (:func:`build_report`).

    Args:
        generator: what to sample from (:meth:`Generator.from_checkpoint`, or a saved pipeline's
            ``PurrceptionPipeline.generator()``).
        tokenizer: decodes generated codes (the generator's tokenizer).
        settings: sampling, protocol, reference and cache settings.
        info: this process's rank / world size / device (``purrception.distributed.init_distributed``).
        export_npz: also write all N samples as an ADM-suite ``.npz`` (``arr_0`` uint8 N x H x W x 3).
        progress: show a progress bar (rank 0 only).
    """
    started = time.perf_counter()
    protocol, reference_spec, extractor = check(generator, tokenizer, settings, info)
    t0 = time.perf_counter()
    indices, labels, images = generate_slice(generator, tokenizer, settings, info, progress and info.is_main)
    sample_seconds = time.perf_counter() - t0
    gathered = gather_samples(indices, labels, images, extractor, settings, info, export_npz)
    if gathered is None:
        return None
    all_labels, samples = gathered
    reference, metrics = score_samples(samples, all_labels, extractor, reference_spec, tokenizer, settings, info)
    seconds = {"sampling_rank0": round(sample_seconds, 2), "total": round(time.perf_counter() - started, 2)}
    return build_report(protocol, reference_spec, reference, metrics, extractor, generator, tokenizer, settings, info,
                        export_npz, seconds)


def check(generator: Generator, tokenizer: VQTokenizer, settings: EvalSettings,
          info: DistInfo) -> tuple[Protocol, str, FeatureExtractor]:
    """The protocol, the reference spec and the protocol's feature extractor (trained and cached on first use, by
    rank 0 first), after refusing settings the protocol cannot read and a generator of another class count."""
    settings.check()
    protocol_name = settings.protocol or default_protocol(tokenizer)
    if protocol_name not in PROTOCOLS:
        raise PurrError(f"unknown protocol {protocol_name!r}; choose one of: {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[protocol_name]
    reference_spec = protocol.reference_for(settings)
    tokenizer.to(info.device)
    with cache_first(cache_root(settings.cache_dir)):  # on first use the extractor trains / caches its judge
        extractor = protocol.build_extractor(settings, info.device, tokenizer)
    if extractor.num_classes is not None and extractor.num_classes != generator.num_classes:
        raise PurrError(f"the {protocol_name} protocol's classifier knows {extractor.num_classes} classes but the "
                        f"checkpoint generates {generator.num_classes}; pass the labelled folder the generator was "
                        "trained on as `reference`")
    return protocol, reference_spec, extractor


def gather_samples(indices: range, labels: np.ndarray, images: np.ndarray, extractor: FeatureExtractor,
                   settings: EvalSettings, info: DistInfo,
                   export_npz: str | Path | None) -> tuple[np.ndarray, Extracted] | None:
    """Every rank's features (and images, for ``export_npz``) gathered on rank 0 in sample order: ``(labels,
    features)`` there, None on the other ranks."""
    parts = gather_to_rank0((indices.start, labels, extractor.extract(images), images if export_npz else None))
    barrier()
    if not info.is_main:
        return None
    parts = sorted(parts, key=lambda p: p[0])
    all_labels = np.concatenate([p[1] for p in parts])
    samples = Extracted.concat([p[2] for p in parts])
    if samples.features.shape[0] != settings.num_samples:
        raise RuntimeError(f"gathered {samples.features.shape[0]} samples, expected {settings.num_samples}")
    if export_npz:
        save_adm_npz(export_npz, np.concatenate([p[3] for p in parts]), all_labels)
        log.info("wrote %d samples to %s (ADM evaluation-suite format)", settings.num_samples, export_npz)
    return all_labels, samples


def score_samples(samples: Extracted, labels: np.ndarray, extractor: FeatureExtractor, reference_spec: str,
                  tokenizer: VQTokenizer, settings: EvalSettings,
                  info: DistInfo) -> tuple[ReferenceFeatures, dict[str, float]]:
    """The reference's features (the extractor's own reference, else ``reference_spec``; cached) and every metric of
    the samples against them (:func:`score`)."""
    source = extractor.own_reference() or open_reference(reference_spec, tokenizer)
    reference = reference_features(source, extractor, settings.cache_dir, settings.feature_batch_size)
    return reference, score(samples, labels, reference, settings, info.device)


def build_report(protocol: Protocol, reference_spec: str, reference: ReferenceFeatures, metrics: dict[str, float],
                 extractor: FeatureExtractor, generator: Generator, tokenizer: VQTokenizer, settings: EvalSettings,
                 info: DistInfo, export_npz: str | Path | None, seconds: dict[str, float]) -> dict[str, Any]:
    """The JSON report: the metrics and everything that decided them."""
    return {
        "format": REPORT_FORMAT, "version": REPORT_VERSION,
        "protocol": protocol.name,
        "metrics": metrics,
        "checkpoint": dict(generator.source),
        "tokenizer": tokenizer.identity().to_dict(),
        "sampling": {**settings.sampler().record(), "num_samples": settings.num_samples, "seed": settings.seed,
                     "labels": "class-balanced: sample i has class i mod num_classes",
                     "noise": "sample i seeded by (seed, i) only", "batch_size": settings.batch_size},
        "reference": {"spec": reference_spec, **reference.info.get("source", {}),
                      "fingerprint": reference.info.get("source_fingerprint"), "count": reference.stats.count},
        "feature_extractor": extractor.describe(),
        "scoring": {"fid_subsets": list(settings.fid_subsets), "precision_recall": settings.precision_recall,
                    "neighbours": settings.neighbours, "inception_score_splits": 10},
        "distributed": {"world_size": info.world_size, "device": str(info.device)},
        "versions": _versions(),
        "exported_npz": str(export_npz) if export_npz else None,
        "seconds": seconds,
    }


_LABELS = {"fid": "FID", "inception_score_mean": "Inception Score", "inception_score_std": "  (std over 10 splits)",
           "precision": "precision (k-NN)", "recall": "recall (k-NN)",
           "class_accuracy": "class accuracy (requested class recognised)"}


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table of a report's metrics and the settings that produced them."""
    s, m = report["sampling"], report["metrics"]
    head = (f"{report['protocol']} protocol | {report['checkpoint']['method']} step {report['checkpoint']['step']} | "
            f"N={s['num_samples']} seed={s['seed']} sample_steps={s['sample_steps']} tau={s['tau']} "
            f"cfg={s['cfg_scale']} {s['solver']} | reference {report['reference']['spec']} "
            f"({report['reference']['count']} images)")
    rows = [(_LABELS.get(k) or (f"FID (first {k.rsplit('_', 1)[1]})" if k.startswith("fid_first_") else k), v)
            for k, v in m.items()]
    width = max(len(name) for name, _ in rows)
    return "\n".join([head, *(f"  {name:<{width}}  {value:.4f}" for name, value in rows)])
