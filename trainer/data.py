"""What the workers read: the training dataset, its deterministic stream, the validation clips.

The shard set is found once on the driver (``pipelines.latents.find_shard_set`` checks the
fingerprint against the model being trained); the training rows go to Ray Train as a Ray Dataset
split across workers, the few validation clips travel to the workers with the loop config.

With ``data.buckets`` there is one dataset per bucket (``BucketData``) and a ``BucketStream`` per
worker: each micro-batch comes whole from one bucket, the same on every rank, drawn by
``bucket_for_step`` from the seed and the step alone, and each bucket's stream position is saved
in the checkpoint (``Position.buckets``), so resuming stays exact.
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
    buckets: list[BucketData] | None = None
    """With ``data.buckets``: one dataset per bucket that has clips to train on (``dataset`` is
    then the first of them); None without buckets."""


@dataclass
class BucketData:
    """The training rows of one aspect-ratio bucket."""

    name: str
    """The Ray Train dataset name, ``train-<height>x<width>``."""
    bucket: tuple[int, int]
    """``(height, width)`` in pixels."""
    dataset: Any
    """``ray.data.Dataset`` of its training rows."""
    clips: int
    """Its training clips (validation clips held out)."""
    weight: int
    """Full batches it gives per epoch over all workers: its share of the steps
    (``bucket_for_step``)."""


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


def bucket_manifests(manifest: dict) -> dict[tuple[int, int], dict]:
    """A shard set with ``data.buckets`` -> one manifest per bucket (``(height, width)``, in order
    of first appearance), listing only that bucket's shards."""
    by_bucket: dict[tuple[int, int], list[dict]] = {}
    for entry in manifest["shards"]:
        if "bucket" not in entry:
            raise ValueError(
                f"shard {entry['path']} names no bucket: not written with data.buckets"
            )
        by_bucket.setdefault(tuple(entry["bucket"]), []).append(entry)
    return {bucket: {**manifest, "shards": entries} for bucket, entries in by_bucket.items()}


def read_bucket_clips(
    location: Location,
    manifest: dict,
    limit: int,
    columns: list[str],
    clip_ids: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """``read_clips`` over a bucketed shard set: the same clips, grouped by bucket (bucket order,
    then the order ``read_clips`` gives); tensor columns of several shapes become object arrays
    of per-clip arrays (``validation_batches`` batches each shape apart)."""
    parts = []
    left = limit
    for bucket_manifest in bucket_manifests(manifest).values():
        if left <= 0:
            break
        if clip_ids is None:
            part = read_clips(location, bucket_manifest, left, columns)
        else:
            ids = _read_table(location, bucket_manifest, ["clip_id"])["clip_id"].to_pylist()
            present = set(ids)
            wanted = [cid for cid in clip_ids[:limit] if cid in present]
            if not wanted:
                continue
            part = read_clips(location, bucket_manifest, left, columns, wanted)
        parts.append(part)
        left -= len(part[columns[0]])
    if not parts:
        raise ValueError(f"{location.uri}: the shard set holds no clips")
    return {name: _concat_rows([part[name] for part in parts]) for name in columns}


def _concat_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate along rows; arrays of different row shapes -> an object array of rows."""
    if len({a.shape[1:] for a in arrays}) <= 1:
        return np.concatenate(arrays)
    rows = [row for array in arrays for row in array]
    column = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        column[i] = row
    return column


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
    if cfg.data.buckets:
        return _load_bucketed(cfg, fingerprint, location, manifest)
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


def _load_bucketed(
    cfg: Config, fingerprint: dict, location: Location, manifest: dict
) -> TrainingData:
    """``load_training_data`` for a shard set with ``data.buckets``: one dataset per bucket (its
    shards, named by the manifest), the validation clips of every bucket. A bucket with fewer
    training clips than one batch on every worker is left out, and said so."""
    from pipelines.fingerprint import fingerprint_hash
    from pipelines.latents import find_shard_set, shard_set_dataset

    train = cfg.train
    per_bucket = bucket_manifests(manifest)
    if not per_bucket:
        raise FileNotFoundError(f"{location.uri}: the manifest lists no shards")
    schema = shard_set_dataset(location, next(iter(per_bucket.values()))).schema()
    columns = list(BATCH_COLUMNS) + [c for c in OPTIONAL_BATCH_COLUMNS if c in schema.names]
    held: list[str] = []
    val_shards = None
    if train.val_data_uri:
        val_location, val_manifest = find_shard_set(train.val_data_uri, fingerprint, cfg.storage)
        val_clips = read_bucket_clips(val_location, val_manifest, train.val_max_clips, columns)
        validation = f"a separate set, {val_location.uri}"
        val_shards = ShardSet.of(val_location.uri, val_manifest, columns_of(schema))
    else:
        held, videos = held_out_clips(location, manifest, train.val_max_clips)
        val_clips = read_bucket_clips(location, manifest, train.val_max_clips, columns, held)
        validation = f"{len(held)} clips of {videos} videos held out of training by hash"
    print(f"validation: {len(val_clips['caption'])} clips ({validation})", flush=True)
    small = sum(entry["bytes"] for entry in manifest["shards"]) <= train.cache_data_max_gib * 2**30
    per_step = train.batch_size * train.num_workers
    held_set = set(held)
    buckets = []
    for (height, width), bucket_manifest in per_bucket.items():
        ids = _read_table(location, bucket_manifest, ["clip_id"])["clip_id"].to_pylist()
        clips = sum(cid not in held_set for cid in ids)
        if clips < per_step:
            print(
                f"bucket {height}x{width}: {clips} training clips, fewer than train.batch_size x "
                f"train.num_workers = {per_step}: left out of training",
                flush=True,
            )
            continue
        dataset = shard_set_dataset(location, bucket_manifest)
        if held:
            dataset = dataset.select_columns(["clip_id", *columns]).map_batches(
                _drop_clips, fn_kwargs={"clip_ids": held}, batch_format="pyarrow"
            )
        else:
            dataset = dataset.select_columns(columns)
        if small:  # read once, in file order (see load_training_data)
            dataset.context.execution_options.preserve_order = True
            dataset = dataset.materialize()
        name = f"train-{height}x{width}"
        buckets.append(BucketData(name, (height, width), dataset, clips, clips // per_step))
    if not buckets:
        raise ConfigError(
            f"train.batch_size: no bucket of {location.uri} (fingerprint "
            f"{fingerprint_hash(fingerprint)}) holds train.batch_size x train.num_workers = "
            f"{per_step} training clips; use a smaller batch, fewer workers or more data"
        )
    shares = ", ".join(f"{b.bucket[0]}x{b.bucket[1]}: {b.clips} clips" for b in buckets)
    print(f"buckets: {shares}", flush=True)
    shards = ShardSet.of(location.uri, manifest, columns_of(schema))
    return TrainingData(
        buckets[0].dataset,
        val_clips,
        fingerprint,
        location,
        validation,
        shards,
        val_shards,
        buckets=buckets,
    )


def validation_batches(clips: dict[str, np.ndarray], batch_size: int) -> list[Batch]:
    """Fixed micro-batches of the validation clips, in order; with ``data.buckets`` (latents of
    several shapes, an object column) each bucket's clips are batched apart."""
    latents = clips["latent_mean"]
    runs = [(0, len(latents))]
    if latents.dtype == object:  # runs of equal shape (``read_bucket_clips`` groups buckets)
        runs, start = [], 0
        for i in range(1, len(latents) + 1):
            if i == len(latents) or latents[i].shape != latents[start].shape:
                runs.append((start, i))
                start = i
    return [
        collate(
            {
                name: _stacked(column[start : min(start + batch_size, stop)])
                for name, column in clips.items()
            }
        )
        for first, stop in runs
        for start in range(first, stop, batch_size)
    ]


def _stacked(rows: np.ndarray) -> np.ndarray:
    """An object column of equal-shaped arrays -> one array; anything else unchanged."""
    if rows.dtype == object and len(rows) and isinstance(rows[0], np.ndarray):
        return np.stack(list(rows))
    return rows


BUCKET_DRAW_KEY = 0x6275636B
"""Mixed into the seed of ``bucket_for_step`` so its stream differs from every other draw."""


def bucket_for_step(seed: int, counter: int, weights: list[int]) -> int:
    """The bucket of micro-batch ``counter`` (``step * grad_accum_steps + micro``), drawn with
    probability proportional to ``weights`` (each bucket's full batches per epoch, so every
    bucket's clips are seen at the same rate) by a generator seeded with ``(seed, counter)``
    alone: every rank draws the same bucket (a step is one shape on all ranks), and a resumed run
    draws what the uninterrupted one drew."""
    if not weights or min(weights) < 0 or sum(weights) == 0:
        raise ValueError(f"bucket weights must be >= 0 with a positive sum, got {weights}")
    draw = np.random.default_rng([seed % 2**64, counter, BUCKET_DRAW_KEY]).integers(sum(weights))
    return int(np.searchsorted(np.cumsum(weights), draw, side="right"))


class BucketStream:
    """``(epoch, index_in_epoch, Batch)`` forever from one dataset shard per bucket: micro-batch
    ``k`` comes whole from bucket ``bucket_for_step(seed, k, weights)``. Each bucket's stream is a
    ``batch_stream`` with its own position (``positions``, saved in ``Position.buckets``), so a
    resumed run continues every bucket where the interrupted run left it."""

    def __init__(self, shards: list[Any], weights: list[int], cfg: Config, position: Position):
        starts = position.buckets or [[0, 0] for _ in shards]
        if len(starts) != len(shards):
            raise ValueError(
                f"the checkpoint holds positions in {len(starts)} buckets, the data has "
                f"{len(shards)}: resume with the shard set the run started with"
            )
        self.seed, self.weights = cfg.train.seed, list(weights)
        self.counter = position.step * cfg.train.grad_accum_steps
        self.positions = [list(start) for start in starts]
        self.streams = [
            batch_stream(shard, cfg, Position(epoch=epoch, batch_in_epoch=index), salt=i + 1)
            for i, (shard, (epoch, index)) in enumerate(zip(shards, starts))
        ]

    def __iter__(self) -> BucketStream:
        return self

    def __next__(self) -> tuple[int, int, Batch]:
        bucket = bucket_for_step(self.seed, self.counter, self.weights)
        self.counter += 1
        epoch, index, batch = next(self.streams[bucket])
        self.positions[bucket] = [epoch, index + 1]
        return epoch, index, batch


def batch_stream(
    shard: Any, cfg: Config, position: Position, salt: int = 0
) -> Iterator[tuple[int, int, Batch]]:
    """``(epoch, index_in_epoch, Batch)`` forever from a worker's dataset shard, starting at
    ``position`` (``salt``: another shuffle for each bucket of a ``BucketStream``).

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
                local_shuffle_seed=(
                    train.seed * 100_003 + epoch + 1_000_003 * salt if shuffle else None
                ),
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
