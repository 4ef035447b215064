"""What the workers read: the training dataset, its deterministic stream, the validation clips.

The shard set is found once on the driver (``pipelines.latents.find_shard_set`` checks the
fingerprint against the model being trained); the training rows go to Ray Train as a Ray Dataset
split across workers, the few validation clips travel to the workers with the loop config.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from animatediff.config import Config, ConfigError
from animatediff.storage import Location
from animatediff.training import BATCH_COLUMNS, OPTIONAL_BATCH_COLUMNS, Batch, collate
from tracking.datasets import ShardSet, columns_of
from trainer.checkpoint import Position


@dataclass
class TrainingData:
    """The driver's view of the data of a run."""

    dataset: Any
    """``ray.data.Dataset`` of the training rows (only the columns training reads)."""
    val_clips: dict[str, np.ndarray]
    """The validation clips as numpy columns (shipped to every worker)."""
    fingerprint: dict[str, Any]
    """The latent fingerprint the shards were checked against."""
    location: Location
    """The fingerprint directory of the shard set."""
    validation: str
    """Where the validation clips come from, in words (logged)."""
    shards: ShardSet | None = None
    """The shard set, as MLflow logs it (the run's ``training`` dataset)."""
    val_shards: ShardSet | None = None
    """The separate validation shard set of ``train.val_data_uri`` (a ``validation`` dataset)."""


def _read_table(location: Location, manifest: dict, columns: list[str]) -> Any:
    """Columns of every shard's live clips (retired ones skipped, as training skips them) as one
    pyarrow table, in shard order."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from ray.data.extensions import ArrowTensorType  # noqa: F401 - registers the tensor type

    from pipelines.shards import load_retired

    retired = load_retired(location, manifest)
    tables = []
    for entry in manifest["shards"]:
        gone = retired.get(entry["path"])
        read = columns if not gone or "clip_id" in columns else ["clip_id", *columns]
        path = location.join(entry["path"]).path
        table = pq.read_table(path, columns=read, filesystem=location.fs)
        if gone:
            table = table.filter(pc.invert(pc.is_in(table["clip_id"], pa.array(sorted(gone)))))
        tables.append(table.select(columns))
    return pa.concat_tables(tables)


def read_clips(
    location: Location,
    manifest: dict,
    limit: int,
    columns: list[str],
    clip_ids: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Clips of a shard set as numpy columns, read with pyarrow directly (a Ray Data job costs
    seconds of start-up for a handful of rows): the first ``limit`` of ``clip_ids`` in that
    order, else the first ``limit`` in shard order."""
    if clip_ids is None:
        table = _read_table(location, manifest, columns).slice(0, limit)
    else:
        table = _read_table(location, manifest, ["clip_id", *columns])
        position = {cid: i for i, cid in enumerate(table.column("clip_id").to_pylist())}
        table = table.take([position[cid] for cid in clip_ids[:limit]]).select(columns)
    if table.num_rows == 0:
        raise ValueError(f"{location.uri}: the shard set holds no clips")
    return {
        name: table.column(name).combine_chunks().to_numpy(zero_copy_only=False) for name in columns
    }


def _hash(value: str) -> bytes:
    return hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()


def held_out_clips(location: Location, manifest: dict, count: int) -> tuple[list[str], int]:
    """``(clip ids, videos)``: the validation clips held out of a shard set, and how many videos
    they take out of training.

    Videos are taken in the order of their id's hash until they hold ``count`` clips; every clip
    of a taken video is held out (a flipped copy or another window of the same video would
    otherwise leak into training). Deterministic: the same shard set gives the same split."""
    table = _read_table(location, manifest, ["clip_id", "video_id"])
    clips_of: dict[str, list[str]] = {}
    for cid, vid in zip(table.column("clip_id").to_pylist(), table.column("video_id").to_pylist()):
        clips_of.setdefault(vid, []).append(cid)
    if len(clips_of) < 2:
        raise ConfigError(
            f"train.val_data_uri: {location.uri} holds one video; hold-out validation needs "
            "more, or a separate validation set"
        )
    held: list[str] = []
    videos = 0
    for video in sorted(clips_of, key=_hash):
        if len(held) >= count or videos == len(clips_of) - 1:  # always leave training a video
            break
        held += sorted(clips_of[video], key=_hash)
        videos += 1
    return held, videos


def _drop_clips(batch: Any, clip_ids: list[str]) -> Any:
    """A pyarrow batch without the rows of ``clip_ids`` and without the ``clip_id`` column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = pc.invert(pc.is_in(batch.column("clip_id"), value_set=pa.array(clip_ids)))
    return batch.filter(keep).drop_columns(["clip_id"])


def load_training_data(cfg: Config) -> TrainingData:
    """The training dataset and the validation clips; the shards must match the model being
    trained (the fingerprint is checked). Without ``train.val_data_uri`` the validation clips
    are held out of the training set (``held_out_clips``)."""
    from pipelines.fingerprint import data_fingerprint
    from pipelines.latents import find_shard_set, shard_set_dataset

    train = cfg.train
    if not train.data_uri:
        raise ConfigError("train.data_uri: set it to the latent shards of the data pipeline")
    fingerprint = data_fingerprint(cfg)
    location, manifest = find_shard_set(train.data_uri, fingerprint, cfg.storage)
    dataset = shard_set_dataset(location, manifest)
    schema = dataset.schema()
    names = set(schema.names)
    val_shards = None
    columns = list(BATCH_COLUMNS) + [c for c in OPTIONAL_BATCH_COLUMNS if c in names]
    if train.val_data_uri:
        val_location, val_manifest = find_shard_set(train.val_data_uri, fingerprint, cfg.storage)
        val_clips = read_clips(val_location, val_manifest, train.val_max_clips, columns)
        dataset = dataset.select_columns(columns)
        validation = f"a separate set, {val_location.uri}"
        val_shards = ShardSet.of(val_location.uri, val_manifest, columns_of(schema))
    else:
        clip_ids, videos = held_out_clips(location, manifest, train.val_max_clips)
        val_clips = read_clips(location, manifest, train.val_max_clips, columns, clip_ids)
        dataset = dataset.select_columns(["clip_id", *columns]).map_batches(
            _drop_clips, fn_kwargs={"clip_ids": clip_ids}, batch_format="pyarrow"
        )
        validation = f"{len(clip_ids)} clips of {videos} videos held out of training by hash"
    print(f"validation: {len(val_clips['caption'])} clips ({validation})", flush=True)
    if sum(entry["bytes"] for entry in manifest["shards"]) <= train.cache_data_max_gib * 2**30:
        # A streamed read restarts at every epoch (seconds on a small cluster: a stall that
        # dominates short epochs); a small shard set is read once, in file order (resumed runs
        # must see the same order), and each epoch is served from Ray's object store.
        dataset.context.execution_options.preserve_order = True
        dataset = dataset.materialize()
    shards = ShardSet.of(location.uri, manifest, columns_of(schema))
    return TrainingData(dataset, val_clips, fingerprint, location, validation, shards, val_shards)


def validation_batches(clips: dict[str, np.ndarray], batch_size: int) -> list[Batch]:
    """Fixed micro-batches of the validation clips, in order."""
    count = len(clips["caption"])
    return [
        collate({name: column[start : start + batch_size] for name, column in clips.items()})
        for start in range(0, count, batch_size)
    ]


def batch_stream(shard: Any, cfg: Config, position: Position) -> Iterator[tuple[int, int, Batch]]:
    """``(epoch, index_in_epoch, Batch)`` forever from a worker's dataset shard, starting at
    ``position``.

    Each epoch re-reads the shard in the same order (the split runs with ``preserve_order``), and
    the local shuffle is seeded by ``(seed, epoch)``, so skipping the consumed batches puts a
    resumed run exactly where the interrupted one stopped."""
    train = cfg.train
    epoch, skip = position.epoch, position.batch_in_epoch
    shuffle = train.shuffle_buffer or None
    while True:
        count = 0
        for index, batch in enumerate(
            shard.iter_torch_batches(
                batch_size=train.batch_size,
                drop_last=True,
                prefetch_batches=train.prefetch_batches,
                local_shuffle_buffer_size=shuffle,
                local_shuffle_seed=train.seed * 100_003 + epoch if shuffle else None,
                collate_fn=collate,
            )
        ):
            count += 1
            if index >= skip:
                yield epoch, index, batch
        if count == 0:
            raise ValueError(
                f"train.data_uri: a worker's shard holds fewer than train.batch_size="
                f"{train.batch_size} clips; use fewer workers or more data"
            )
        epoch, skip = epoch + 1, 0
