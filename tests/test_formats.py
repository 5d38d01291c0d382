"""Format versions: every file the library writes records one; missing is 1, newer is refused in one line."""

from __future__ import annotations

import json
import shutil

import pytest

from purrception.cli.export import scores_from_report
from purrception.data.shards import SHARDS_VERSION, TokenShards
from purrception.errors import PurrError
from purrception.evaluation.evaluate import REPORT_VERSION
from purrception.formats import read_version
from purrception.studies.core import STUDY_VERSION, StudyStore
from purrception.tokenizers.store import TOKENIZER_VERSION, load_tokenizer
from purrception.training.config import RUN_CONFIG_FORMAT, RUN_CONFIG_VERSION

NEWER = r"written by a newer purrception; upgrade purrception to read it$"


def test_read_version_reads_missing_as_1_and_refuses_newer_older_and_non_versions():
    assert read_version({}, "thing", "f.json", 2, "redo it") == 1
    assert read_version({"version": 2}, "thing", "f.json", 2, "redo it") == 2
    with pytest.raises(PurrError, match=r"^f.json is thing format version 3 \(this purrception reads 1 to 2\): "
                                        + NEWER):
        read_version({"version": 3}, "thing", "f.json", 2, "redo it")
    with pytest.raises(PurrError, match=r"^f.json is thing format version 1, older than this purrception reads "
                                        r"\(2 to 3\); redo it$"):
        read_version({}, "thing", "f.json", 3, "redo it", oldest=2)
    for bad in (True, "2", 0, -1, 1.0, None):
        with pytest.raises(PurrError, match=rf"^f.json records thing format version {bad!r}, which is not a "
                                            r"version; redo it$".replace("(", r"\(").replace(")", r"\)")):
            read_version({"version": bad}, "thing", "f.json", 2, "redo it")


def test_the_writers_record_their_versions(tiny_tokenizer_dir, tiny_shards_dir, tiny_checkpoint):
    assert json.loads((tiny_tokenizer_dir / "config.json").read_text())["version"] == TOKENIZER_VERSION == 1
    assert json.loads((tiny_shards_dir / "manifest.json").read_text())["version"] == SHARDS_VERSION == 1
    run_config = json.loads((tiny_checkpoint.parent.parent / "config.json").read_text())
    assert (run_config["format"], run_config["version"]) == (RUN_CONFIG_FORMAT, RUN_CONFIG_VERSION) == (
        "purrception-run", 1)


def _edited_copy(src, dst, name, **changes):
    shutil.copytree(src, dst)
    data = json.loads((dst / name).read_text())
    data.update(changes)
    (dst / name).write_text(json.dumps(data))
    return dst


def test_a_shard_manifest_without_a_version_is_read_and_a_newer_one_refused(tiny_shards_dir, tmp_path):
    old = _edited_copy(tiny_shards_dir, tmp_path / "old", "manifest.json")
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["version"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert len(TokenShards.open(old)) == len(TokenShards.open(tiny_shards_dir))
    newer = _edited_copy(tiny_shards_dir, tmp_path / "newer", "manifest.json", version=2)
    with pytest.raises(PurrError, match=r"newer/manifest.json is shard manifest format version 2 \(this purrception "
                                        r"reads 1 to 1\): " + NEWER):
        TokenShards.open(newer)


def test_a_tokenizer_folder_of_a_newer_version_is_refused(tiny_tokenizer_dir, tmp_path):
    newer = _edited_copy(tiny_tokenizer_dir, tmp_path / "tok", "config.json", version=2)
    with pytest.raises(PurrError, match=r"tok/config.json is tokenizer config format version 2 .*" + NEWER):
        load_tokenizer(newer)
    old = _edited_copy(tiny_tokenizer_dir, tmp_path / "old", "config.json")
    meta = json.loads((old / "config.json").read_text())
    del meta["version"]
    (old / "config.json").write_text(json.dumps(meta))
    assert load_tokenizer(old).identity() == load_tokenizer(tiny_tokenizer_dir).identity()


def test_an_eval_report_of_a_newer_version_is_refused_by_export():
    report = {"checkpoint": {"method": "purrception", "step": 4}, "sampling": {}, "metrics": {"fid": 1.5}}
    assert scores_from_report(report, "purrception", 4, "r.json")["fid"] == 1.5  # no version: 1
    assert REPORT_VERSION == 1
    with pytest.raises(PurrError, match=r"^r.json is eval report format version 2 .*" + NEWER):
        scores_from_report({**report, "version": 2}, "purrception", 4, "r.json")


def test_study_results_record_their_version_and_a_newer_one_is_refused(tmp_path):
    store = StudyStore(tmp_path / "study", {"a": 1}, "purr study x")
    store.save()
    assert json.loads((tmp_path / "study" / "results.json").read_text())["version"] == STUDY_VERSION == 1
    (tmp_path / "study" / "results.json").write_text(json.dumps({"version": 2, "settings": {"a": 1}, "points": {}}))
    with pytest.raises(PurrError, match=r"study/results.json is study results format version 2 .*" + NEWER):
        StudyStore(tmp_path / "study", {"a": 1}, "purr study x")
