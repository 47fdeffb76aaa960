"""Dataset lists and data loaders built from a config: ``build_detection_{train,test}_loader``."""
from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from ..config import ConfigError
from .catalog import DatasetCatalog, MetadataCatalog
from .coco import register_coco_instances
from .errors import DatasetError, check_policy
from .mapper import DatasetMapper
from .records_cache import default_cache_dir
from .samplers import (
    InferenceSampler,
    TrainingSampler,
    batch_indices,
    portrait_flags,
    shared_seed,
    world_info,
)
from .serialize import SerializedList
from .shared_load import load_on_first_rank

if TYPE_CHECKING:
    from .dali import DaliInferenceLoader

__all__ = [
    "build_detection_test_loader",
    "build_detection_train_loader",
    "get_detection_dataset_dicts",
    "get_eval_dataset_names",
    "get_train_dataset_names",
    "register_datasets_from_cfg",
    "serialized_dataset_dicts",
    "worker_init_reset_seed",
]

logger = logging.getLogger(__name__)
CFG_TRAIN_NAME, CFG_TEST_NAME = "cfg_train", "cfg_test"


def _register_cfg_dataset(name: str, json_file: str, image_root: str, key: str) -> None:
    if not image_root:
        raise DatasetError(f"DATASETS.{key}_JSON is {json_file!r} but DATASETS.{key}_IMAGES is empty; set it to the image folder.")
    if name in DatasetCatalog:
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root):
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, image_root)


def register_datasets_from_cfg(cfg: Any) -> tuple[list[str], list[str]]:
    """Register ``DATASETS.TRAIN_JSON/TRAIN_IMAGES`` as "cfg_train" and ``TEST_JSON/TEST_IMAGES``
    as "cfg_test" (when set); return the names of the ones registered."""
    train, test = [], []
    if cfg.DATASETS.TRAIN_JSON:
        _register_cfg_dataset(CFG_TRAIN_NAME, cfg.DATASETS.TRAIN_JSON, cfg.DATASETS.TRAIN_IMAGES, "TRAIN")
        train.append(CFG_TRAIN_NAME)
    if cfg.DATASETS.TEST_JSON:
        _register_cfg_dataset(CFG_TEST_NAME, cfg.DATASETS.TEST_JSON, cfg.DATASETS.TEST_IMAGES, "TEST")
        test.append(CFG_TEST_NAME)
    return train, test


def get_train_dataset_names(cfg: Any) -> list[str]:
    """``DATASETS.TRAIN`` plus "cfg_train" when ``DATASETS.TRAIN_JSON`` is set."""
    return list(cfg.DATASETS.TRAIN) + register_datasets_from_cfg(cfg)[0]


def get_eval_dataset_names(cfg: Any) -> list[str]:
    """``DATASETS.TEST`` plus "cfg_test" when ``DATASETS.TEST_JSON`` is set (what to evaluate)."""
    return list(cfg.DATASETS.TEST) + register_datasets_from_cfg(cfg)[1]


def _load(name: str, policies: dict[str, Any], cache_dir: str | None = None, serialized: bool = False) -> list[dict] | SerializedList:
    """Call the function registered as ``name``; the policies go to functions marked
    ``accepts_policies``, ``cache_dir``/``serialized`` to those marked ``accepts_cache``."""
    func = DatasetCatalog.get_function(name)
    kwargs = dict(policies) if getattr(func, "accepts_policies", False) else {}
    if getattr(func, "accepts_cache", False):
        kwargs.update({"serialized": serialized, **({"cache_dir": cache_dir} if cache_dir else {})})
    dicts = func(**kwargs) if kwargs else func()
    if not isinstance(dicts, (list, SerializedList)):
        raise DatasetError(f"The function registered for dataset '{name}' returned {type(dicts).__name__}; it must return a list of dicts.")
    return dicts


def _check_same_classes(names: Sequence[str]) -> None:
    classes = {n: MetadataCatalog.get(n).get("thing_classes") for n in names}
    known = {n: c for n, c in classes.items() if c is not None}
    if len({tuple(c) for c in known.values()}) > 1:
        raise DatasetError(f"Datasets {list(known)} have different class lists {known}; datasets used together must share classes.")


def _policies(on_bad_annotation: str | None, on_bad_image: str | None, check_image_files: bool | None) -> dict[str, Any]:
    given = {"on_bad_annotation": on_bad_annotation, "on_bad_image": on_bad_image, "check_image_files": check_image_files}
    return {k: v for k, v in given.items() if v is not None}


def _names(names: str | Sequence[str]) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise DatasetError("No dataset given: set DATASETS.TRAIN (registered names) or DATASETS.TRAIN_JSON/TRAIN_IMAGES.")
    return names


def _non_empty(d: dict) -> bool:
    return any(not a.get("iscrowd", 0) for a in d.get("annotations", []))


def _checked_after_filter(names: list[str], before: int | None, after: int) -> None:
    """The log line of DATALOADER.FILTER_EMPTY_ANNOTATIONS (``before``: the count before it, None
    when it did not run) and the error when no image is left."""
    if before is not None:
        logger.info("Removed %d images without annotations (DATALOADER.FILTER_EMPTY_ANNOTATIONS).", before - after)
    if not after:
        raise DatasetError(f"Datasets {names} contain no images (after filtering). Check the JSON files and policies.")


def get_detection_dataset_dicts(
    names: str | Sequence[str],
    filter_empty: bool = False,
    *,
    on_bad_annotation: str | None = None,
    on_bad_image: str | None = None,
    check_image_files: bool | None = None,
    cache_dir: str | None = None,
) -> list[dict]:
    """Concatenate the dataset dicts of ``names``; ``filter_empty`` drops images without
    (non-crowd) boxes. The policies, when given, override those of the registration;
    ``cache_dir`` keeps validated COCO records there (see :func:`load_coco_json`)."""
    names = _names(names)
    policies = _policies(on_bad_annotation, on_bad_image, check_image_files)
    dicts = list(itertools.chain.from_iterable(_load(n, policies, cache_dir) for n in names))
    _check_same_classes(names)
    before = len(dicts) if filter_empty else None
    if filter_empty:
        dicts = [d for d in dicts if _non_empty(d)]
    _checked_after_filter(names, before, len(dicts))
    return dicts


def serialized_dataset_dicts(
    names: str | Sequence[str],
    filter_empty: bool = False,
    *,
    on_bad_annotation: str | None = None,
    on_bad_image: str | None = None,
    check_image_files: bool | None = None,
    cache_dir: str | None = None,
) -> SerializedList:
    """:func:`get_detection_dataset_dicts` as one :class:`SerializedList`, built without a
    list of every dict when the datasets are COCO files (their records come serialized,
    from the cache when it is current)."""
    names = _names(names)
    policies = _policies(on_bad_annotation, on_bad_image, check_image_files)
    parts = [_load(n, policies, cache_dir, serialized=True) for n in names]
    _check_same_classes(names)
    serial = [p for p in parts if isinstance(p, SerializedList)]
    if len(serial) == len(parts) and len({p.codec for p in serial}) == 1:
        dicts = serial[0] if len(serial) == 1 else SerializedList.concat(serial)
    else:
        dicts = SerializedList(itertools.chain.from_iterable(parts))
    before = len(dicts) if filter_empty else None
    if filter_empty:
        keep = [i for i, d in enumerate(dicts) if _non_empty(d)]
        dicts = dicts.select(keep) if len(keep) < len(dicts) else dicts
    _checked_after_filter(names, before, len(dicts))
    return dicts


def _cache_dir(cfg: Any) -> str | None:
    """``DATASETS.CACHE_DIR`` (or the default folder) when ``DATASETS.CACHE``, else None."""
    return (cfg.DATASETS.CACHE_DIR or default_cache_dir()) if cfg.DATASETS.CACHE else None


def _dicts_from_cfg(cfg: Any, names: Sequence[str], filter_empty: bool) -> SerializedList:
    """The datasets of ``names`` as the loaders get them: loaded (validated, or read from
    the cache) once, by rank 0, and sent to the other ranks (:func:`load_on_first_rank`)."""
    def load() -> SerializedList:
        return serialized_dataset_dicts(
            names,
            filter_empty,
            on_bad_annotation=check_policy(cfg.DATALOADER.ON_BAD_ANNOTATION, "DATALOADER.ON_BAD_ANNOTATION"),
            on_bad_image=check_policy(cfg.DATALOADER.ON_BAD_IMAGE, "DATALOADER.ON_BAD_IMAGE"),
            check_image_files=cfg.DATASETS.CHECK_IMAGE_FILES,
            cache_dir=_cache_dir(cfg),
        )

    return load_on_first_rank(load, names)


def worker_init_reset_seed(worker_id: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` of a worker from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**31
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _WorkerError:
    """A DatasetError raised in a loader worker, carried to the main process and re-raised
    there as itself (not wrapped in DataLoader's "Caught ... in worker" traceback text)."""

    def __init__(self, error: DatasetError) -> None:
        self.error = error


def _reraise(item: Any) -> Any:
    if isinstance(item, _WorkerError):
        raise item.error
    return item


class TrainLoader:
    """Infinite iterable of ``list[dict]`` over a DataLoader (see ``build_detection_train_loader``)."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[list[dict]]:
        return (_reraise(b) for b in self.loader)


def _refill(out: list[dict], size: int) -> list[dict]:
    """Keep the batch size when images were skipped (ON_BAD_IMAGE skip): repeat the batch's
    own good images (same orientation group; no extra random draws, so resuming stays exact)."""
    return out + [out[k % len(out)] for k in range(size - len(out))]


def stream_seed(seed: int, rank: int, stream: int) -> int:
    """Seed of the random transform parameters of one sampler stream (worker) of one rank."""
    return (seed * 1_000_003 + rank * 10_007 + stream) % (2**63)


class _MapStream(IterableDataset):
    """The sampler's indices, split between ``n`` workers, batched (aspect-grouped) and mapped.

    Stream ``k`` takes sampler positions ``k, k + n, ...`` and draws its transform parameters
    from a generator seeded by ``stream_seed(seed, rank, k)``. The DataLoader hands out
    batches round-robin over workers, so batch ``j`` is batch ``j // n`` of stream ``j % n``;
    ``start_iter`` re-creates exactly that order by giving worker ``w`` stream
    ``(start_iter + w) % n`` and skipping the batches it had produced, without reading their
    images (only the random parameters are replayed, when the mapper has ``advance``).
    A skipped image (mapper returned None) is replaced by another image of its batch.
    """

    def __init__(
        self, dataset: Any, mapper: Callable, sampler: Any, batch_size: int, group: bool, seed: int, rank: int, start_iter: int = 0,
    ) -> None:
        self.dataset, self.mapper, self.sampler = dataset, mapper, sampler
        self.batch_size, self.group, self.seed, self.rank, self.start_iter = batch_size, group, seed, rank, start_iter
        self.portrait = np.array(portrait_flags(dataset), dtype=bool)  # one dict decoded at a time

    def __iter__(self) -> Iterator[list[dict]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        stream, skip = (self.start_iter + wid) % nw, (self.start_iter + wid) // nw
        if hasattr(self.mapper, "generator"):
            self.mapper.generator = torch.Generator().manual_seed(stream_seed(self.seed, self.rank, stream))
        advance = getattr(self.mapper, "advance", None)
        indices = itertools.islice(iter(self.sampler), stream, None, nw)
        for k, batch in enumerate(batch_indices(indices, self.portrait, self.batch_size, self.group)):
            if k < skip:
                for i in batch if advance else ():
                    advance(self.dataset[i])
                continue
            try:
                out = [m for m in (self.mapper(self.dataset[i]) for i in batch) if m is not None]
            except DatasetError as e:
                yield _WorkerError(e)
                return
            if out:
                yield _refill(out, len(batch))


def _serialized(dataset: Sequence[dict]) -> SerializedList:
    return dataset if isinstance(dataset, SerializedList) else SerializedList(dataset)


def _per_rank_batch(total: int) -> int:
    world = world_info()[1]
    if total <= 0 or total % world:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of the number of processes ({world}).")
    return total // world


def _backend(cfg: Any) -> str:
    backend = cfg.DATALOADER.BACKEND
    if backend not in ("torch", "dali"):
        raise ConfigError(f"DATALOADER.BACKEND must be 'torch' or 'dali', got {backend!r}.")
    return backend


def build_detection_train_loader(
    cfg: Any, mapper: Callable | None = None, dataset: list[dict] | None = None, start_iter: int = 0
) -> Iterator[list[dict]]:
    """Infinite iterable of ``list[dict]`` (mapper outputs), ``IMS_PER_BATCH // world_size`` each.

    Datasets: ``DATASETS.TRAIN`` (+ ``TRAIN_JSON``) unless ``dataset`` is given. The order
    comes from an infinite sampler seeded by ``SEED`` (same permutation on every rank, each
    rank a shard); workers (``DATALOADER.NUM_WORKERS``) are seeded from it; batches are
    aspect-ratio grouped when ``DATALOADER.ASPECT_RATIO_GROUPING``.
    ``start_iter`` resumes the stream exactly where a loader built with the same config
    would be after ``start_iter`` batches, without reading the skipped images.
    ``DATALOADER.BACKEND: dali`` returns the DALI loader with the same batch structure
    (with ``ON_BAD_IMAGE skip`` it checks the image files first and leaves bad ones out).
    """
    name = "DALI train loader"
    if dataset is None:
        names = get_train_dataset_names(cfg)
        dataset, name = _dicts_from_cfg(cfg, names, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS), ", ".join(names)
    batch = _per_rank_batch(cfg.SOLVER.IMS_PER_BATCH)
    seed = shared_seed(cfg.SEED)
    if _backend(cfg) == "dali":
        from .dali import build_dali_train_loader

        return build_dali_train_loader(cfg, dataset, batch, seed, start_iter, name=name)
    mapper = mapper or DatasetMapper(cfg, is_train=True)
    sampler = TrainingSampler(len(dataset), seed=seed)
    rank = world_info()[0]
    stream = _MapStream(_serialized(dataset), mapper, sampler, batch, cfg.DATALOADER.ASPECT_RATIO_GROUPING, seed, rank, start_iter)
    workers = cfg.DATALOADER.NUM_WORKERS
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=worker_init_reset_seed,
        generator=torch.Generator().manual_seed(seed + rank),
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
    )
    return TrainLoader(loader)


class _MapDataset(Dataset):
    def __init__(self, dataset: Any, mapper: Callable) -> None:
        self.dataset, self.mapper = dataset, mapper

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> Any:
        try:
            return self.mapper(self.dataset[idx])
        except DatasetError as e:
            return _WorkerError(e)


def _drop_none(batch: list[Any]) -> list[Any]:
    return [b for b in batch if b is not None]


class InferenceLoader:
    """Finite iterable of ``list[dict]`` over this rank's shard; batches left empty by
    skipped images are not yielded. ``len()`` is the number of batches of the shard."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[dict]]:
        return ([_reraise(x) for x in b] for b in self.loader if b)


def _dali_accepts(mapper: Callable | None) -> bool:
    """Whether the DALI test loader can stand in for ``mapper`` (None or a test-time DatasetMapper)."""
    if mapper is None or (isinstance(mapper, DatasetMapper) and type(mapper) is DatasetMapper and not mapper.is_train):
        return True
    logger.warning(
        "DATALOADER.BACKEND is 'dali' but build_detection_test_loader got a custom mapper (%s), which DALI cannot run: "
        "using the torch test loader.",
        type(mapper).__name__,
    )
    return False


def build_detection_test_loader(
    cfg: Any, dataset_name: str | Sequence[str], batch_size: int = 1, mapper: Callable | None = None, dataset: list[dict] | None = None
) -> InferenceLoader | DaliInferenceLoader:
    """Loader over ``dataset_name`` for inference: test-time resize, no flip, no instances
    (pass ``mapper=DatasetMapper(cfg, is_train=False, keep_instances=True)`` to keep them).
    Each rank reads its own contiguous shard (InferenceSampler): no image twice.

    Returns an :class:`InferenceLoader`, or with ``DATALOADER.BACKEND dali`` (and no
    mapper other than a test-time ``DatasetMapper``) a
    :class:`~retinakit.data.dali.DaliInferenceLoader`: same shards, sizes and dict keys.
    """
    names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or ())
    if dataset is None:
        register_datasets_from_cfg(cfg)
        dataset = _dicts_from_cfg(cfg, names, False)
    if _backend(cfg) == "dali" and _dali_accepts(mapper):
        from .dali import build_dali_test_loader

        name = ", ".join(map(str, names)) or "DALI test loader"
        return build_dali_test_loader(cfg, dataset, batch_size, mapper=cast("DatasetMapper | None", mapper), name=name)
    mapper = mapper or DatasetMapper(cfg, is_train=False)
    sampler = InferenceSampler(len(dataset))
    batch_sampler = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False)
    loader = DataLoader(
        _MapDataset(_serialized(dataset), mapper),
        batch_sampler=batch_sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=_drop_none,
        worker_init_fn=worker_init_reset_seed,
    )
    return InferenceLoader(loader)
