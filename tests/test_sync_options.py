"""SyncOptions: the one declaration of a run's options, as the CLI, the engine and the YAML configs use it."""

from __future__ import annotations

import dataclasses

import pytest

from embedrail.errors import ConfigError
from embedrail.integration.cli import build_parser
from embedrail.integration.options import SyncOptions


def test_defaults_and_validation() -> None:
    o = SyncOptions()
    assert (o.mode, o.deletes, o.dims, o.batch_size, o.dry_run, o.on_bad_row) == ("incremental", "auto", None, 64, False, "skip")
    for bad in [{"mode": "fast"}, {"deletes": "all"}, {"dims": 0}, {"dims": True}, {"chunk_tokens": -1},
                {"chunk_overlap": -1}, {"chunk_tokens": 8, "chunk_overlap": 8}, {"batch_size": 0}, {"dry_run": "yes"},
                {"on_bad_row": "ignore"}, {"model": " "}, {"source_options": ["id"]}]:  # fmt: skip
        with pytest.raises(ConfigError):
            SyncOptions(**bad)


def test_from_mapping_coerces_loose_values_and_names_unknown_keys() -> None:
    o = SyncOptions.from_mapping({"dims": "256", "dry_run": "true", "mode": "full", "chunk_tokens": "", "source_options": {"id_field": "key"}})
    assert (o.dims, o.dry_run, o.mode, o.chunk_tokens, dict(o.source_options)) == (256, True, "full", None, {"id_field": "key"})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['dimz'\].*known: \[.*'dims'"):
        SyncOptions.from_mapping({"dimz": 3}, where="x.yaml")
    with pytest.raises(ConfigError, match="dry_run must be true or false"):
        SyncOptions.from_mapping({"dry_run": "maybe"})
    assert SyncOptions.from_mapping(o.to_dict()) == o


def test_replace_validates_again() -> None:
    o = SyncOptions(chunk_tokens=16)
    assert o.replace(mode="full").mode == "full" and o.replace(mode="full").chunk_tokens == 16
    with pytest.raises(ConfigError):
        o.replace(chunk_overlap=16)


def test_every_option_is_a_reindex_flag_with_the_same_default() -> None:
    parser = build_parser()
    a = parser.parse_args(["reindex", "--source", "s.jsonl", "--target", "es://h:9200/x"])
    assert SyncOptions.from_args(a) == SyncOptions()
    flags = ["--model", "m", "--dims", "128", "--device", "cpu", "--mode", "full", "--deletes", "tombstone", "--dry-run",
             "--chunk-tokens", "100", "--chunk-overlap", "10", "--batch-size", "8", "--queue-depth", "3",
             "--on-bad-row", "fail", "--max-delete-fraction", "0.8", "--allow-mass-delete", "--adopt", "--repair",
             "--drift-sample", "7"]  # fmt: skip
    a = parser.parse_args(["reindex", "--source", "s.jsonl", "--target", "es://h:9200/x", *flags])
    o = SyncOptions.from_args(a)
    assert o == SyncOptions(model="m", dims=128, device="cpu", mode="full", deletes="tombstone", dry_run=True, chunk_tokens=100,
                            chunk_overlap=10, batch_size=8, queue_depth=3, on_bad_row="fail", max_delete_fraction=0.8,
                            allow_mass_delete=True, adopt=True, repair="on", drift_sample=7)  # fmt: skip
    a = parser.parse_args(["reindex", "--source", "s.jsonl", "--target", "es://h:9200/x", "--repair", "off"])
    assert SyncOptions.from_args(a).repair == "off"  # --repair alone is "on"; it also takes auto / on / off
    covered = {f.name for f in dataclasses.fields(SyncOptions)} - {"source_options"}
    assert covered <= set(vars(a)), "a SyncOptions field without a CLI flag"
    with pytest.raises(SystemExit):
        parser.parse_args(["reindex", "--source", "s", "--target", "t", "--dims", "0"])
    for bad in ({"max_delete_fraction": 0}, {"max_delete_fraction": 1.5}, {"drift_sample": -1}, {"repair": "sometimes"},
                {"model": "http://user:pw@gpu:8000/v1#m"}, {"model": "http://gpu:8000/v1?api_key=k#m"}):  # fmt: skip
        with pytest.raises(ConfigError):
            SyncOptions.from_mapping(bad)
    assert SyncOptions(repair=True).repair == "on" and SyncOptions.from_mapping({"repair": "false"}).repair == "off"
