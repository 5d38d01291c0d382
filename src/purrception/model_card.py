"""The Markdown model card of a saved pipeline folder (its ``README.md``), written from the folder's ``config.json``."""

from __future__ import annotations

from typing import Any

__all__ = ["model_card"]


def model_card(config: dict[str, Any]) -> str:
    """A Markdown model card for a saved pipeline: what it is, what it was trained on, its scores, how to sample."""
    method = config["method"]["name"]
    model = config["model"]
    train = config.get("train") or {}
    tok = config.get("tokenizer") or {}
    identity = tok.get("identity") or {}
    data = config.get("data") or {}
    lines = [
        f"# Purrception pipeline: {method}",
        "",
        f"A class-conditional image generator trained with the `{method}` objective of the purrception library "
        "(variational flow matching over vector-quantized latents).",
        "",
        "## What it is",
        "",
        f"- backbone: DiT, hidden {model.get('hidden_size')}, depth {model.get('depth')}, heads "
        f"{model.get('num_heads')}, patch {model.get('patch_size')}, {model.get('input_size')}x"
        f"{model.get('input_size')} codes",
        f"- classes: {config['num_classes']} ({', '.join(map(str, config['class_names'][:20]))}"
        f"{', ...' if len(config['class_names']) > 20 else ''})",
        f"- tokenizer: {tok.get('kind')} (K={identity.get('codebook_size')}, d={identity.get('latent_dim')}, "
        f"codebook sha256 {identity.get('codebook_sha256')}); "
        + ("included in `tokenizer/`" if tok.get("folder") else f"read from `{tok.get('path')}`"),
        f"- training: {config.get('step')} steps, batch {train.get('batch_size')}, lr {train.get('lr')}, seed "
        f"{train.get('seed')}",
        f"- data: {data.get('shards') or 'not recorded'}"
        + (f" ({data['num_images']} images)" if data.get("num_images") else ""),
        "",
        "## Measured scores",
        "",
    ]
    metrics = config.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("None recorded with this folder (run `purr eval` on it).")
    lines += [
        "",
        "## How to sample",
        "",
        "```python",
        "from purrception import PurrceptionPipeline",
        "",
        'pipe = PurrceptionPipeline.from_pretrained("THIS_FOLDER", device="cpu")',
        "out = pipe(class_labels=[0, 1], num_per_class=4, num_inference_steps=50, tau=0.9, seed=0)",
        'out.images[0].save("sample.png")',
        "```",
        "",
        "or `purr sample THIS_FOLDER --out samples --classes 0,1 --num 8 --sample-steps 50 --tau 0.9`.",
        "",
        "The folder holds no pickle: weights and codebook are safetensors, everything else JSON.",
        "",
    ]
    return "\n".join(lines)
