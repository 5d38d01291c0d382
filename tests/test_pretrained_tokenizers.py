"""The paper's two pretrained tokenizers (SD vq-f8, LlamaGen vq-ds8-c2i): architecture, file layouts, safe loading.

The real checkpoints are not available offline: the full-size architectures are built with random weights, written
in each real file layout, and read back through the public loader with strict key / shape checks. Key lists and
shapes are compared with listings of the real files' state dicts (``tests/data/<kind>.state_dict.tsv``: key,
shape, param or buffer, one entry a line).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from purrception.cli import build_parser, main
from purrception.errors import PurrError
from purrception.tokenizers.ldm_vq import VQGANTokenizer
from purrception.tokenizers.pretrained import (
    VQGAN_PRESETS,
    InertForeignObject,
    get_pretrained_kind,
    ldm_to_llamagen_keys,
    llamagen_to_ldm_keys,
    read_checkpoint,
)
from purrception.tokenizers.registry import pretrained_kinds, trainable_kinds
from purrception.tokenizers.store import load_tokenizer

REFERENCE = Path(__file__).parent / "data"
SD, LG = "sd-vq-f8", "llamagen-vq-ds8-c2i"
PARAMS = {SD: 67_717_295, LG: 70_109_835}


def _reference(kind: str) -> list[tuple[str, tuple[int, ...], str]]:
    path = REFERENCE / f"{kind}.state_dict.tsv"
    rows = []
    for line in path.read_text().splitlines():
        key, shape, what = line.split("\t")
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), what))
    return rows


@pytest.fixture(scope="module")
def models() -> dict[str, VQGANTokenizer]:
    out = {}
    for seed, kind in enumerate((SD, LG)):
        torch.manual_seed(seed)
        out[kind] = VQGANTokenizer(VQGAN_PRESETS[kind], kind).eval()
    return out


class Callback:  # stands for a Lightning object pickled in the checkpoint (its class is not importable on load)
    def __init__(self) -> None:
        self.best = 0.5


class RunsCode:
    """A pickle whose ``__reduce__`` would run code on load (writes ``marker``)."""

    def __init__(self, marker: Path, via: str = "exec") -> None:
        self.marker, self.via = marker, via

    def __reduce__(self):
        if self.via == "system":
            import os

            return (os.system, (f"touch {self.marker}",))
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def checkpoint_files(models, tmp_path_factory) -> dict[str, Path]:
    """Each architecture saved in its real file layout; the SD file also carries foreign and hostile objects."""
    folder = tmp_path_factory.mktemp("pretrained")
    sd_state = dict(models[SD].state_dict())
    sd_state["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(64, 3, 3, 3)
    sd_state["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    lightning = {"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.4.2", "state_dict": sd_state,
                 "callbacks": {Callback: Callback()}, "optimizer_states": [], "lr_schedulers": [],
                 "hparams": argparse.Namespace(lr=4.5e-6), "hostile": RunsCode(folder / "pwned-sd")}
    torch.save(lightning, folder / "vq-f8.ckpt")
    llamagen = {"model": ldm_to_llamagen_keys(models[LG].state_dict()),
                "args": argparse.Namespace(vq_model="VQ-8", codebook_size=16384)}
    torch.save(llamagen, folder / "vq_ds8_c2i.pt")
    return {SD: folder / "vq-f8.ckpt", LG: folder / "vq_ds8_c2i.pt", "folder": folder}


@pytest.fixture(scope="module")
def loaded(checkpoint_files) -> dict[str, VQGANTokenizer]:
    return {kind: load_tokenizer(checkpoint_files[kind], kind=kind) for kind in (SD, LG)}


# ---- architecture vs. the reference key lists ------------------------------------------------------------------
def test_sd_state_dict_matches_reference_exactly(models):
    ref = _reference(SD)
    model = models[SD]
    mine = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert mine == [(k, s) for k, s, _ in ref]  # same keys, shapes and order
    state = model.state_dict()
    buffers = {k for k, _ in model.named_buffers() if k in state}
    assert buffers == {k for k, _, what in ref if what == "buffer"} == set()
    assert sum(p.numel() for p in model.parameters()) == PARAMS[SD]


def test_llamagen_state_dict_in_llamagen_names_matches_reference_exactly(models):
    ref = _reference(LG)
    model = models[LG]
    mine = {k: tuple(v.shape) for k, v in ldm_to_llamagen_keys(model.state_dict()).items()}
    assert mine == {k: s for k, s, _ in ref}
    assert len(mine) == len(ref) == 300
    state = model.state_dict()
    buffers = set(ldm_to_llamagen_keys({k: v for k, v in model.named_buffers() if k in state}))
    assert buffers == {k for k, _, what in ref if what == "buffer"} == {"quantize.codebook_used"}
    assert sum(p.numel() for p in model.parameters()) == PARAMS[LG]
    # and the renaming is a bijection: reference names -> LDM names -> reference names
    ref_state = {k: s for k, s, _ in ref}
    as_ldm = llamagen_to_ldm_keys(ref_state)
    assert set(as_ldm) == set(model.state_dict())
    assert ldm_to_llamagen_keys(as_ldm) == ref_state


def test_registered_kinds():
    assert list(pretrained_kinds()) == [SD, LG]
    assert all(name == kind.name and VQGAN_PRESETS[name] is kind.file.config and kind.model_class is VQGANTokenizer
               for name, kind in pretrained_kinds().items())


def _tokenizer_kind_options(parser: argparse.ArgumentParser, command: str = "purr") -> dict[str, argparse.Action]:
    """Every command's --tokenizer-kind option, by command ("purr encode", "purr tokenizer decode", ...)."""
    found = {}
    for action in parser._actions:
        if "--tokenizer-kind" in action.option_strings:
            found[command] = action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_tokenizer_kind_options(sub, f"{command} {name}"))
    return found


def test_tokenizer_kind_choices_are_the_registry_and_unknown_kinds_are_listed(tmp_path, capsys):
    options = _tokenizer_kind_options(build_parser())
    assert {"purr encode", "purr eval", "purr sample", "purr tokenizer encode", "purr tokenizer decode"} <= set(options)
    for command, action in options.items():
        assert list(action.choices) == list(pretrained_kinds()), command
        assert all(kind.file.file_name in action.help for kind in pretrained_kinds().values()), command
    with pytest.raises(SystemExit):
        main(["encode", "--tokenizer", "x.pt", "--embedded", "train", "--out", str(tmp_path), "--tokenizer-kind", "vq"])
    assert f"choose from {', '.join(repr(k) for k in pretrained_kinds())}" in capsys.readouterr().err
    (tmp_path / "x.pt").write_bytes(b"")
    for kind in ("vq", "sd-vq-f16"):
        with pytest.raises(PurrError, match=f"unknown tokenizer kind '{kind}'; known: {SD}, {LG} .*conv-vq"):
            load_tokenizer(tmp_path / "x.pt", kind=kind)
        with pytest.raises(PurrError, match=f"unknown pretrained tokenizer kind '{kind}'; known: {SD}, {LG}$"):
            get_pretrained_kind(kind)
    assert list(trainable_kinds()) == ["conv-vq"]


# ---- loading the real file layouts -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [SD, LG])
def test_loader_restores_every_tensor(kind, models, loaded, checkpoint_files):
    original, tok = models[kind].state_dict(), loaded[kind].state_dict()
    assert list(tok) == list(original)
    for key, value in original.items():
        assert torch.equal(tok[key], value), key
    assert not loaded[kind].training and not any(p.requires_grad for p in loaded[kind].parameters())
    assert loaded[kind].identity() == models[kind].identity()
    assert loaded[kind].identity().codebook_size == 16384 and loaded[kind].latent_dim == (4 if kind == SD else 8)


def test_foreign_objects_are_inert_and_hostile_reduce_never_runs(checkpoint_files):
    obj = read_checkpoint(checkpoint_files[SD])
    assert not (checkpoint_files["folder"] / "pwned-sd").exists()
    assert isinstance(obj["hostile"], InertForeignObject) and obj["hostile"].foreign_name == "builtins.exec"
    assert isinstance(obj["hparams"], InertForeignObject)
    (callback_class, callback), = obj["callbacks"].items()
    assert issubclass(callback_class, InertForeignObject) and isinstance(callback, InertForeignObject)
    assert obj["epoch"] == 3


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("via", ["exec", "system"])
def test_malicious_pickle_is_refused_without_running(via, tmp_path):
    marker = tmp_path / f"pwned-{via}"
    torch.save({"state_dict": RunsCode(marker, via)}, tmp_path / "evil.ckpt")
    with pytest.raises(PurrError):
        load_tokenizer(tmp_path / "evil.ckpt", kind=SD)
    assert not marker.exists()
    # the same object as a plain (non-zip) pickle
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": RunsCode(marker, via)}, f)
    with pytest.raises(PurrError):
        load_tokenizer(tmp_path / "evil.pkl", kind=LG)
    assert not marker.exists()


def _fake_state(kind: str, **replace: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Every key of ``kind`` as a zero-stride tensor (tiny on disk), some shapes replaced."""
    with torch.device("meta"):
        state = VQGANTokenizer(VQGAN_PRESETS[kind], kind).state_dict()
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    shapes.update(replace)
    return {k: torch.zeros(1).expand(s) if s else torch.zeros(()) for k, s in shapes.items()}


def test_clear_errors_for_bad_files(tmp_path):
    # not a checkpoint at all
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(PurrError, match="cannot read"):
        load_tokenizer(tmp_path / "notes.txt", kind=SD)
    # truncated download
    torch.save({"model": ldm_to_llamagen_keys(_fake_state(LG))}, tmp_path / "lg.pt")
    data = (tmp_path / "lg.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(PurrError, match="cannot read"):
        load_tokenizer(tmp_path / "cut.pt", kind=LG)
    # wrong shapes
    torch.save({"state_dict": _fake_state(SD, **{"quantize.embedding.weight": (8192, 4)})}, tmp_path / "shape.ckpt")
    with pytest.raises(PurrError, match=r"1 wrong shape.*quantize\.embedding\.weight \(8192, 4\) vs \(16384, 4\)"):
        load_tokenizer(tmp_path / "shape.ckpt", kind=SD)
    # a LlamaGen file named as SD: missing keys, with a hint at the right kind
    with pytest.raises(PurrError, match="missing key.*`tokenizer_kind=llamagen-vq-ds8-c2i`"):
        load_tokenizer(tmp_path / "lg.pt", kind=SD)
    # a dict without weights, a folder, and a missing file
    torch.save({"epoch": 1}, tmp_path / "empty.ckpt")
    with pytest.raises(PurrError, match="holds no sd-vq-f8 weights"):
        load_tokenizer(tmp_path / "empty.ckpt", kind=SD)
    with pytest.raises(PurrError, match="is a folder"):
        load_tokenizer(tmp_path, kind=SD)
    with pytest.raises(PurrError, match="not found"):
        load_tokenizer(tmp_path / "nope.ckpt", kind=SD)


def test_training_only_and_ddp_prefixes_are_dropped(tmp_path):
    state = {f"module.{k}": v for k, v in _fake_state(SD).items()}
    state["module.loss.discriminator.main.0.weight"] = torch.zeros(2)
    torch.save({"state_dict": state}, tmp_path / "ddp.ckpt")
    tok = load_tokenizer(tmp_path / "ddp.ckpt", kind=SD)
    assert tok.codebook.shape == (16384, 4) and float(tok.codebook.abs().sum()) == 0.0


# ---- encode / decode ---------------------------------------------------------------------------------------------
def _reference_codes(h: torch.Tensor, weight: torch.Tensor, normalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The quantiser written out in float64: ``argmin_k ||h - E_k||^2`` (after L2 normalisation for LlamaGen)."""
    z = h.double().permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    e = weight.double()
    if normalise:
        z, e = F.normalize(z, dim=1), F.normalize(e, dim=1)
    dist = (z * z).sum(1, keepdim=True) + (e * e).sum(1)[None] - 2 * z @ e.T
    return dist.argmin(1), dist


@pytest.mark.parametrize("kind", [SD, LG])
def test_encode_256_to_32x32_and_codes_round_trip_exactly(kind, loaded):
    tok = loaded[kind]
    torch.manual_seed(10)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    captured = {}
    hook = tok.quant_conv.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    try:
        with torch.inference_mode():
            codes = tok.encode(x)
    finally:
        hook.remove()
    assert codes.shape == (1, 32, 32) and codes.dtype == torch.int64
    assert tok.latent_shape == (32, 32) and captured["h"].shape == (1, tok.latent_dim, 32, 32)
    # codes are the quantiser's choice (float64 reference; equal up to float32 ties)
    ref, dist = _reference_codes(captured["h"], tok.quantize.embedding.weight, normalise=(kind == LG))
    flat = codes.flatten()
    chosen = dist.gather(1, flat[:, None])[:, 0]
    assert torch.all(chosen - dist.min(1).values <= 1e-6)
    assert (flat == ref).float().mean() >= 0.99
    # lookup(codes) is exactly the quantiser output: raw rows (vq-f8) / unit-norm rows (LlamaGen)
    weight = tok.quantize.embedding.weight
    rows = F.normalize(weight.double(), p=2, dim=1).float() if kind == LG else weight
    z_q = rows[codes].permute(0, 3, 1, 2)
    z1 = tok.lookup(codes)
    assert torch.equal(z1, z_q)
    if kind == LG:
        assert torch.allclose(z1.norm(dim=1), torch.ones(1, 32, 32), atol=1e-6)
    # and snapping the quantised latent gives the codes back, exactly
    assert torch.equal(tok.snap(z1), codes)


@pytest.mark.parametrize("kind", [SD, LG])
def test_decode_shapes(kind, loaded):
    tok = loaded[kind]
    codes = torch.randint(0, tok.codebook_size, (1, 2, 1))
    with torch.inference_mode():
        images = tok.decode(codes)  # fully convolutional: 8x upsampling of any grid (32x32 -> 256x256)
    assert images.shape == (1, 3, 16, 8)
    assert images.min() >= -1 and images.max() <= 1


class _Foreign:
    """A class this library never writes, pickled into a legacy (non-zip) torch file."""


@pytest.mark.parametrize("content", ["random", "legacy-foreign"])
def test_unreadable_pretrained_files_are_refused_in_the_library_s_words(tmp_path, recwarn, content):
    from purrception.tokenizers.pretrained import read_checkpoint

    path = tmp_path / "model.ckpt"
    if content == "random":
        path.write_bytes(bytes(range(256)) * 8)
    else:
        torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Foreign()}, path,
                   _use_new_zipfile_serialization=False)
    with pytest.raises(PurrError) as info:
        read_checkpoint(path, "tokenizer checkpoint")
    message = str(info.value)
    assert "weights_only" not in message and "can still be loaded" not in message and "\x1b" not in message
    assert "\n" not in message and str(path) in message
    assert not [w for w in recwarn if "torch" in str(w.filename) or "weights" in str(w.message)]
