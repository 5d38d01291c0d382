"""The one tokenizer registry: a new trainable architecture is one module plus one registration.

The toy kind below (a linear patch VQ with a codebook learnt by gradient, unlike conv-vq's EMA) lives only in this
module: it is registered through the public API, trained by the generic trainer and ``purr tokenizer train --kind``,
saved, loaded by ``load_tokenizer`` and used to encode, then unregistered. The cache keys of the embedded digits' and
emoji tokenizers are pinned to the values the code computed before the registry existed (a change retrains every
user's cached tokenizer).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from purrception.cli import build_parser, main
from purrception.data import datasets, embedded_shards
from purrception.data.embedded_shards import DIGITS_RECIPE, encode_array, ensure_embedded_tokenizer
from purrception.data.shards import TokenShards
from purrception.data.tokenizer_folder import FOLDER_RECIPE
from purrception.errors import PurrError
from purrception.tokenizers import train as train_module
from purrception.tokenizers.base import TrainableTokenizer, nearest_code
from purrception.tokenizers.conv_vq import ConvVQ, ConvVQConfig
from purrception.tokenizers.ldm_vq import VQGANConfig, VQGANTokenizer
from purrception.tokenizers.recipe import TokenizerRecipe, _key
from purrception.tokenizers.registry import (
    TokenizerKind,
    all_kinds,
    find_kind,
    get_kind,
    get_trainable_kind,
    kind_for_config,
    known_kinds,
    pretrained_kinds,
    register_kind,
    trainable_kinds,
    unregister_kind,
)
from purrception.tokenizers.store import CONFIG_NAME, load_tokenizer, save_tokenizer
from purrception.tokenizers.train import WORK_DIR, TokenizerTrainConfig, fit_tokenizer, train_tokenizer

TOY = "toy-patch-vq"


# ---- the toy architecture: one config, one model ------------------------------------------------------------------
@dataclass
class PatchVQConfig:
    image_size: int = 16
    image_channels: int = 3
    downsample: int = 4
    codebook_size: int = 8
    latent_dim: int = 3
    beta: float = 0.25

    def check(self) -> None:
        if self.image_size % self.downsample:
            raise PurrError(f"resolution {self.image_size} is not a multiple of the patch size {self.downsample}")


class PatchVQ(TrainableTokenizer):
    """Each ``F x F`` patch mapped linearly to ``d`` dimensions and snapped to a codebook learnt by gradient."""

    kind = TOY

    def __init__(self, config: PatchVQConfig):
        super().__init__()
        config.check()
        self.config = config
        self.image_size, self.image_channels, self.downsample = config.image_size, config.image_channels, \
            config.downsample
        p, c, d = config.downsample, config.image_channels, config.latent_dim
        self.encoder = nn.Conv2d(c, d, p, stride=p)
        self.decoder = nn.ConvTranspose2d(d, c, p, stride=p)
        self.embedding = nn.Parameter(torch.randn(config.codebook_size, d))

    @property
    def codebook(self) -> torch.Tensor:
        return self.embedding

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return nearest_code(self.encoder(images), self.embedding)

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).clamp(-1.0, 1.0)

    def training_loss(self, images, reconstruction):
        z = self.encoder(images)
        q = self.lookup(nearest_code(z.detach(), self.embedding))  # gradient reaches the codebook rows used
        rec = reconstruction(self.decoder(z + (q - z).detach()), images)
        return rec + F.mse_loss(q, z.detach()) + self.config.beta * F.mse_loss(z, q.detach()), rec


def _toy_entry(**changes) -> TokenizerKind:
    values = dict(name=TOY, model_class=PatchVQ, config_class=PatchVQConfig, summary="linear patch VQ (a test)")
    values.update(changes)
    return TokenizerKind(**values)


@pytest.fixture
def toy_kind():
    kind = register_kind(_toy_entry())
    yield kind
    unregister_kind(TOY)


def _images(n=24, size=16, channels=3, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def _by_hand(tok: PatchVQ, x: torch.Tensor) -> torch.Tensor:
    """The toy's codes from its definition: each patch as a vector, times the weights, nearest row by brute force."""
    p, n = tok.downsample, x.shape[0]
    cols = F.unfold(x, p, stride=p)  # (N, C*p*p, L), patches in row-major order
    z = tok.encoder.weight.reshape(tok.latent_dim, -1) @ cols + tok.encoder.bias[:, None]
    z = z.transpose(1, 2)  # (N, L, d)
    dist = ((z[:, :, None, :] - tok.codebook[None, None]) ** 2).sum(-1)
    side = tok.image_size // p
    return dist.argmin(-1).reshape(n, side, side)


def _train_kind_choices() -> list[str]:
    parser = build_parser()
    tokenizer = next(a for a in parser._actions if hasattr(a, "choices") and a.choices and "tokenizer" in a.choices)
    train = next(a for a in tokenizer.choices["tokenizer"]._actions if hasattr(a, "choices") and a.choices
                 and "train" in a.choices).choices["train"]
    option = next(a for a in train._actions if "--kind" in a.option_strings)
    assert option.default == "conv-vq"
    return list(option.choices)


# ---- one registry --------------------------------------------------------------------------------------------------
def test_the_registry_holds_the_pretrained_and_trainable_kinds_and_answers_legacy_names():
    assert list(all_kinds()) == ["sd-vq-f8", "llamagen-vq-ds8-c2i", "conv-vq"]
    assert list(pretrained_kinds()) == ["sd-vq-f8", "llamagen-vq-ds8-c2i"]
    assert list(trainable_kinds()) == ["conv-vq"]
    conv = get_kind("conv-vq")
    assert (conv.model_class, conv.config_class, conv.trainable, conv.pretrained) == (ConvVQ, ConvVQConfig, True, False)
    assert get_kind("small-vq") is conv and find_kind("small-vq") is conv and find_kind("vq") is None
    assert kind_for_config(ConvVQConfig()) is conv
    sd = get_kind("sd-vq-f8")
    assert sd.pretrained and sd.model_class is VQGANTokenizer and sd.file.file_name == "vq-f8.ckpt"
    with pytest.raises(PurrError, match="'sd-vq-f8' is a pretrained kind .* trainable kinds: conv-vq$"):
        get_trainable_kind("sd-vq-f8")
    with pytest.raises(PurrError, match="VQGANConfig is the config of no trainable tokenizer kind"):
        kind_for_config(VQGANConfig())
    with pytest.raises(PurrError, match="VQGANConfig is the config of no trainable tokenizer kind"):
        train_tokenizer(_images(2), VQGANConfig(), TokenizerTrainConfig(steps=1), progress=False)
    assert _train_kind_choices() == ["conv-vq"]


def test_a_registered_kind_appears_in_every_list_and_leaves_with_unregister():
    register_kind(_toy_entry())
    try:
        assert list(trainable_kinds()) == ["conv-vq", TOY] and list(pretrained_kinds()) == ["sd-vq-f8",
                                                                                              "llamagen-vq-ds8-c2i"]
        assert known_kinds().endswith(f"conv-vq, {TOY} (folders made by `purr tokenizer train`)")
        assert kind_for_config(PatchVQConfig()).name == TOY
        assert _train_kind_choices() == ["conv-vq", TOY]
    finally:
        unregister_kind(TOY)
    assert find_kind(TOY) is None and list(trainable_kinds()) == ["conv-vq"] and _train_kind_choices() == ["conv-vq"]


class _Renamed(PatchVQ):
    kind = "something-else"


@dataclass
class _NoFactorConfig:
    image_size: int = 16
    image_channels: int = 3


@dataclass
class _NoDefaultConfig:
    image_size: int
    image_channels: int = 3
    downsample: int = 4


@pytest.mark.parametrize("changes,message", [
    (dict(name="conv-vq"), "name 'conv-vq' is taken by kind conv-vq"),
    (dict(name="small-vq"), "name 'small-vq' is taken by kind conv-vq"),
    (dict(legacy_names=("sd-vq-f8",)), "name 'sd-vq-f8' is taken by kind sd-vq-f8"),
    (dict(model_class=VQGANTokenizer), "its model class must subclass TrainableTokenizer"),
    (dict(model_class=_Renamed), "records kind 'something-else'; set _Renamed.kind = 'toy-patch-vq'"),
    (dict(config_class=_NoFactorConfig), "its config lacks downsample"),
    (dict(config_class=_NoDefaultConfig), "every config setting needs a default"),
    (dict(config_class=ConvVQConfig), "config class ConvVQConfig already belongs to kind conv-vq"),
])
def test_registration_refuses_clashes_and_incomplete_kinds_in_one_line(changes, message):
    with pytest.raises(PurrError, match=message):
        register_kind(_toy_entry(**changes))
    assert find_kind(TOY) is None and list(all_kinds()) == ["sd-vq-f8", "llamagen-vq-ds8-c2i", "conv-vq"]


def test_built_in_kinds_cannot_be_unregistered():
    with pytest.raises(PurrError, match="conv-vq is built in"):
        unregister_kind("conv-vq")
    with pytest.raises(PurrError, match="unknown tokenizer kind 'nope'"):
        unregister_kind("nope")


# ---- the toy kind through the generic trainer, the store and the command line ------------------------------------
def _die_after(save, at_step):
    def wrapped(path, plan, step, *args):
        save(path, plan, step, *args)
        if step == at_step:
            raise KeyboardInterrupt
    return wrapped


def test_the_toy_kind_trains_resumes_saves_loads_and_encodes(toy_kind, tmp_path, monkeypatch):
    images, heldout = _images(), _images(6, seed=1)
    config, recipe = PatchVQConfig(), TokenizerTrainConfig(steps=6, batch_size=8, checkpoint_every=2)
    folder = fit_tokenizer(images, heldout, tmp_path / "toy", config, recipe, progress=False)
    meta = json.loads((folder / CONFIG_NAME).read_text())
    assert meta["kind"] == TOY and meta["config"] == asdict(config) and meta["identity"]["codebook_size"] == 8
    assert meta["metrics"]["heldout"]["num_images"] == 6 and meta["metrics"]["training"]["steps"] == 6

    tok = load_tokenizer(folder)
    assert type(tok) is PatchVQ and not tok.training and not any(p.requires_grad for p in tok.parameters())
    assert load_tokenizer(folder, kind=TOY).identity() == tok.identity()
    with pytest.raises(PurrError, match=f"holds a {TOY} tokenizer, not conv-vq"):
        load_tokenizer(folder, kind="conv-vq")

    direct = train_tokenizer(images, config, recipe, progress=False)  # same seed: the same weights, bit for bit
    torch.manual_seed(0)
    untrained = PatchVQ(config)
    for (name, a), b, c in zip(tok.state_dict().items(), direct.state_dict().values(),
                               untrained.state_dict().values()):
        assert torch.equal(a, b) and not torch.equal(a, c), name

    x = _to_tensor(images[:5])
    with torch.no_grad():
        codes = tok.encode(x)
        assert codes.shape == (5, 4, 4) and torch.equal(codes, _by_hand(tok, x))
    assert np.array_equal(encode_array(tok, images[:5]), codes.numpy())

    monkeypatch.setattr(train_module, "_save", _die_after(train_module._save, 4))
    with pytest.raises(KeyboardInterrupt):
        fit_tokenizer(images, heldout, tmp_path / "killed", config, recipe, progress=False)
    monkeypatch.undo()
    with pytest.raises(PurrError, match="unfinished tokenizer run with other model"):
        fit_tokenizer(images, heldout, tmp_path / "killed", replace(config, beta=0.5), recipe, progress=False)
    resumed = load_tokenizer(fit_tokenizer(images, heldout, tmp_path / "killed", config, recipe, progress=False))
    assert not (tmp_path / "killed" / WORK_DIR).exists()
    for (name, a), b in zip(tok.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_toy_folder_does_not_load_once_its_kind_is_unregistered(tmp_path):
    register_kind(_toy_entry())
    try:
        folder = save_tokenizer(PatchVQ(PatchVQConfig()), tmp_path / "toy")
        assert type(load_tokenizer(folder)) is PatchVQ
    finally:
        unregister_kind(TOY)
    with pytest.raises(PurrError, match=f"unknown tokenizer kind '{TOY}' in .*; known: conv-vq$"):
        load_tokenizer(folder)
    with pytest.raises(PurrError, match=f"unknown tokenizer kind '{TOY}'; known: sd-vq-f8"):
        load_tokenizer(folder, kind=TOY)


def _folder(root, per_class=5, size=16):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_purr_tokenizer_train_takes_the_toy_kind_and_its_folder_encodes(toy_kind, tmp_path, capsys):
    images = _folder(tmp_path / "images")
    out, shards = tmp_path / "tok", tmp_path / "shards"
    common = ["--images", str(images), "--steps", "3", "--batch-size", "4", "--no-progress"]
    assert main(["tokenizer", "train", "--kind", TOY, "--out", str(out), "--codebook-size", "6", *common]) == 0
    meta = json.loads((out / CONFIG_NAME).read_text())
    # the folder's format, the flag, and the toy's own defaults (conv-vq's folder width is not a toy setting)
    assert meta["kind"] == TOY and meta["config"] == asdict(PatchVQConfig(codebook_size=6))
    assert meta["metrics"]["heldout"]["num_images"] == 2 and meta["metrics"]["training"]["steps"] == 3
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"] == meta["config"]

    assert main(["tokenizer", "train", "--kind", TOY, "--out", str(tmp_path / "w"), "--width", "8", *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--width does not apply to tokenizer kind {TOY}" in err[0]
    assert not (tmp_path / "w").exists()

    tok = load_tokenizer(out)
    assert type(tok) is PatchVQ and tok.codebook_size == 6
    arrays = tmp_path / "x.npz"
    pixels = _images(4, seed=3)
    np.savez(arrays, images=pixels)
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--images", str(arrays),
                 "--out", str(tmp_path / "codes.npz")]) == 0
    with np.load(tmp_path / "codes.npz") as data, torch.no_grad():
        assert torch.equal(torch.from_numpy(data["codes"]), _by_hand(tok, _to_tensor(pixels)))
    assert main(["encode", "--tokenizer", str(out), "--images", str(images), "--out", str(shards), "--workers", "0",
                 "--no-progress"]) == 0
    opened = TokenShards.open(shards)
    assert opened.identity == tok.identity() and len(opened) == 10


#: the embedded digits' and image folders' tokenizer training, as the recipes state them
DIGITS_TRAIN = TokenizerTrainConfig(steps=1500, batch_size=8, lr=3e-3)
FOLDER_TRAIN = TokenizerTrainConfig(steps=2000, batch_size=16, lr=3e-3)


def test_recipes_carry_the_settings_another_kind_shares(toy_kind):
    assert FOLDER_RECIPE.for_kind(TOY).overrides == {"codebook_size": 512}
    assert DIGITS_RECIPE.for_kind(TOY).overrides == {"image_size": 28, "image_channels": 1}
    assert DIGITS_RECIPE.for_kind(TOY).train == DIGITS_RECIPE.train == DIGITS_TRAIN
    toy = TokenizerRecipe(TOY, {"codebook_size": 16}, TokenizerTrainConfig(steps=7))
    assert toy.model_config() == PatchVQConfig(codebook_size=16)
    expected = [TOY, asdict(PatchVQConfig(codebook_size=16)), asdict(TokenizerTrainConfig(steps=7))]
    assert toy.cache_key() == _key(expected) != _key(expected[1:])  # the name is part of a new kind's key
    with pytest.raises(PurrError, match=f"tokenizer kind {TOY} has no setting width; its settings: image_size"):
        toy.with_overrides(width=8).model_config()
    with pytest.raises(PurrError, match="not a multiple of the patch size 4"):
        toy.with_overrides(image_size=18).model_config()


# ---- the cache keys of the existing tokenizers ---------------------------------------------------------------------
#: ``tokenizer-<key>`` folder names by the formula of the code before the registry, for the current recipes
#: (``DIGITS_TRAIN``, ``FOLDER_TRAIN``):
#: ``sha256_parts(json.dumps([asdict(model_cfg), asdict(train_cfg)], sort_keys=True), length=12)``
DIGITS_KEY, DIGITS_300_KEY = "a680eabc6c9c", "14e112517482"
EMOJI_KEY, EMOJI_200_KEY = "1d8291b5a6f8", "ae550b236c57"


def test_the_digits_and_emoji_tokenizers_keep_their_cache_folders(tmp_path, monkeypatch):
    assert DIGITS_RECIPE.cache_key() == DIGITS_KEY and DIGITS_RECIPE.with_train(steps=300).cache_key() == DIGITS_300_KEY
    emoji = FOLDER_RECIPE.with_overrides(image_size=32, image_channels=3)
    assert emoji.cache_key() == EMOJI_KEY and emoji.with_train(steps=200).cache_key() == EMOJI_200_KEY

    calls = []

    def fake_fit(folder, model_config, train_config):  # what training would make there: config.json last
        calls.append((folder.name, model_config, train_config))
        folder.mkdir(parents=True)
        (folder / CONFIG_NAME).write_text("{}")
        return folder

    monkeypatch.setattr(embedded_shards, "fit_tokenizer", lambda train, heldout, *args, **kwargs: fake_fit(*args))
    monkeypatch.setattr(datasets, "train_tokenizer_on_folder", lambda images, *args, **kwargs: fake_fit(*args))
    for _ in range(2):  # made once, then reused
        assert ensure_embedded_tokenizer(tmp_path).name == f"tokenizer-{DIGITS_KEY}"
        assert ensure_embedded_tokenizer(tmp_path, 300).name == f"tokenizer-{DIGITS_300_KEY}"
        emoji_data = replace(datasets.DATASETS["emoji"], folder=lambda cache: cache / "emoji" / "images")
        assert emoji_data.ensure_tokenizer(tmp_path).name == f"tokenizer-{EMOJI_KEY}"
        assert emoji_data.ensure_tokenizer(tmp_path, tokenizer_steps=200).name == f"tokenizer-{EMOJI_200_KEY}"
    emoji_config = replace(ConvVQConfig(codebook_size=512, width=16), image_size=32, image_channels=3)
    assert calls == [(f"tokenizer-{DIGITS_KEY}", ConvVQConfig(), DIGITS_TRAIN),
                     (f"tokenizer-{DIGITS_300_KEY}", ConvVQConfig(), replace(DIGITS_TRAIN, steps=300)),
                     (f"tokenizer-{EMOJI_KEY}", emoji_config, FOLDER_TRAIN),
                     (f"tokenizer-{EMOJI_200_KEY}", emoji_config, replace(FOLDER_TRAIN, steps=200))]
