"""The pieces MLflow's UI shows, without MLflow: run events, shard sets as datasets, provenance."""

from __future__ import annotations

import json

from tracking import notes, provenance
from tracking.datasets import ShardSet

MANIFEST = {
    "num_clips": 5,
    "fingerprint": {"resolution": 64},
    "shards": [
        {"path": "shards/part-a-000000.parquet", "rows": 3, "bytes": 100, "sha256": "aa"},
        {"path": "shards/part-b-000000.parquet", "rows": 2, "bytes": 50, "sha256": "bb"},
    ],
    "runs": [{"run_id": "a", "mlflow_run_id": "m1"}, {"run_id": "b"}],
}


def test_events_are_appended_and_the_oldest_dropped_at_mlflows_limit():
    note = notes.add_event("What the run is.", "attempt 1: started at step 0")
    note = notes.add_event(note, "attempt 2: resumed from the step-50 checkpoint")
    head, events = note.split(notes.EVENTS_HEADING)
    assert head.strip() == "What the run is."
    lines = events.strip().splitlines()
    assert [line.split("Z ", 1)[1] for line in lines] == [
        "attempt 1: started at step 0",
        "attempt 2: resumed from the step-50 checkpoint",
    ]
    for attempt in range(3, 400):
        note = notes.add_event(note, f"attempt {attempt}: resumed")
    assert len(note) <= notes.NOTE_LIMIT and note.startswith("What the run is.")
    assert note.endswith("attempt 399: resumed") and "attempt 1:" not in note


def test_a_shard_set_is_named_by_folder_and_fingerprint_and_digested_by_content():
    shards = ShardSet.of("/data/latents/fp-0123456789abcdef/", MANIFEST, {"caption": "string"})
    assert (shards.name, shards.fingerprint) == (
        "latents/fp-0123456789abcdef",
        "fp-0123456789abcdef",
    )
    assert (shards.clips, shards.shards, shards.bytes) == (5, 2, 150)
    assert shards.preprocess_runs == ("m1",)  # the runs that logged to MLflow
    entity = shards.entity()
    assert json.loads(entity.source) == {"uri": "/data/latents/fp-0123456789abcdef"}
    assert entity.source_type == "local" and json.loads(entity.profile)["encoding"] == {
        "resolution": 64
    }
    assert json.loads(entity.schema) == {"mlflow_colspec": [{"name": "caption", "type": "string"}]}
    # Another preprocess run adds a shard to the same fingerprint directory: a new digest.
    grown = {
        **MANIFEST,
        "shards": [*MANIFEST["shards"], {"path": "shards/c", "rows": 1, "sha256": "cc"}],
    }
    assert ShardSet.of("/data/latents/fp-0123456789abcdef", grown).digest != shards.digest
    reordered = {**MANIFEST, "shards": MANIFEST["shards"][::-1]}
    assert ShardSet.of("/data/latents/fp-0123456789abcdef", reordered).digest == shards.digest
    assert ShardSet.of("s3://bucket/latents/fp-1", MANIFEST).entity().source_type == "s3"


def test_without_a_git_checkout_runs_get_no_git_tags(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "PROJECT_ROOT", tmp_path)  # as in the container image
    provenance.code_version.cache_clear()
    try:
        assert provenance.code_version() is None
        tags = provenance.source_tags("train")
        assert tags[provenance.SOURCE_NAME_TAG] == "jobs.train" and tags[provenance.USER_TAG]
        assert not any(key.startswith("mlflow.source.git") for key in tags)
    finally:
        provenance.code_version.cache_clear()
