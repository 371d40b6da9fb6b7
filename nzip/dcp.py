"""torch.distributed.checkpoint (DCP) storage that compresses each rank's shards with nzip.

    import torch.distributed.checkpoint as dcp
    from nzip.dcp import NzipStorageWriter, NzipStorageReader

    dcp.save(state, storage_writer=NzipStorageWriter("ckpt/step-1000"))
    dcp.load(state, storage_reader=NzipStorageReader("ckpt/step-1000"))

DCP plans who writes what (each rank its own shards, once) and who reads what (each rank
the pieces of saved shards that overlap its own, whatever the world size was at save
time: resharding on load). This module only stores: every rank writes its shards as
tensors into one .nz container of its own, each with the codec "auto" picks for its dtype
(no pickled bytes in between: a bf16 shard is coded as bf16), and reads back exactly the
pieces DCP asks for. Non-tensor values (DCP serialises them itself) are kept as bytes.

Folder layout, crash-safe even when saving again into the same folder:

    rank{r}-{save id}.nz     one container per rank, written atomically
    nzip-dcp.json            the manifest, written last by the coordinator (atomic rename):
                             DCP's metadata as JSON plus where every shard lives. Files of
                             older saves are removed only after it is in place.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, StorageMeta, TensorProperties,
                                                   TensorStorageMetadata)
from torch.distributed.checkpoint.planner import (LoadItemType, LoadPlan, LoadPlanner, SavePlan, SavePlanner,
                                                  WriteItemType)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from .dtypes import dtype_from_name, to_bytes
from .errors import FormatError, NzipError, VersionError
from .formats import container
from .formats.atomic import atomic_write

MANIFEST = "nzip-dcp.json"
VERSION = 1


def _done(value=None) -> Future:
    fut: Future = Future()  # DCP waits on torch futures; the work is already done here
    fut.set_result(value)
    return fut


def _key(index: MetadataIndex) -> str:
    """A shard's name inside its rank's container."""
    return index.fqn if index.offset is None else f"{index.fqn}@{','.join(map(str, index.offset))}"


class NzipStorageWriter(StorageWriter):
    """Writes each rank's shards into one nzip container; codec as for nzip.save."""

    def __init__(self, path: str | os.PathLike, codec="auto", threads: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.codec, self.threads = codec, threads
        self.save_id = uuid.uuid4().hex[:12]
        self.is_coordinator = False

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id is not None:
            self.path = Path(checkpoint_id)
        self.save_id = uuid.uuid4().hex[:12]

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        self.path.mkdir(parents=True, exist_ok=True)
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return [dataclasses.replace(p, storage_data=f"rank{i}") for i, p in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        name = f"{plan.storage_data or 'rank0'}-{self.save_id}.nz"
        results: list[WriteResult] = []

        def items():
            for item in plan.items:
                data = planner.resolve_data(item)
                if item.type == WriteItemType.BYTE_IO:
                    raw = np.frombuffer(data.getbuffer(), np.uint8) if isinstance(data, io.BytesIO) else \
                        np.frombuffer(bytes(data), np.uint8)
                    dtype, shape, codec = dtype_from_name("uint8"), (raw.size,), "zstd"
                else:
                    raw, dtype, shape, _ = to_bytes(data.detach())
                    codec = self.codec
                key = _key(item.index)
                results.append(WriteResult(index=item.index, size_in_bytes=raw.size,
                                           storage_data={"file": name, "key": key}))
                yield container.Item(key, raw, dtype, shape, codec)

        room = container.room_for((_key(it.index), (0,) * 8) for it in plan.items)
        container.write(self.path / name, items(), threads=self.threads, header_room=room,
                        metadata={"dcp_save_id": self.save_id})
        return _done(results)

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Coordinator only: the manifest, then the files no save refers to any more."""
        storage = [{"fqn": r.index.fqn, "offset": None if r.index.offset is None else list(r.index.offset),
                    "index": r.index.index, **r.storage_data} for rank in results for r in rank]
        manifest = {"format": "nzip-dcp", "version": VERSION, "save_id": self.save_id,
                    "state_dict_metadata": {fqn: _md_to_json(md) for fqn, md in metadata.state_dict_metadata.items()},
                    "planner_data": _planner_data_to_json(metadata.planner_data), "storage": storage}
        with atomic_write(self.path / MANIFEST, overwrite=True) as f:
            f.write(json.dumps(manifest).encode())
        keep = {s["file"] for s in storage}
        for old in self.path.glob("rank*-*.nz"):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def storage_meta(self) -> StorageMeta | None:
        return StorageMeta(checkpoint_id=str(self.path), save_id=self.save_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return isinstance(checkpoint_id, (str, os.PathLike))


class NzipStorageReader(StorageReader):
    """Reads a folder NzipStorageWriter wrote, whatever world size wrote it."""

    def __init__(self, path: str | os.PathLike, threads: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        self.storage: dict[MetadataIndex, dict] = {}

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        if checkpoint_id is not None:
            self.path = Path(checkpoint_id)
        self.storage = {}

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        try:
            manifest = json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            raise FormatError(f"{self.path} has no {MANIFEST}: not an nzip DCP checkpoint, or its save "
                              "never finished") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{self.path / MANIFEST} is not valid JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != "nzip-dcp":
            raise FormatError(f"{self.path / MANIFEST} is not an nzip DCP manifest")
        if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
            raise VersionError(f"{self.path}: DCP manifest version {manifest.get('version')} is newer than this "
                               "nzip reads")
        try:
            storage = {MetadataIndex(s["fqn"], None if s["offset"] is None else torch.Size(s["offset"]), s["index"]):
                       {"file": s["file"], "key": s["key"]} for s in manifest["storage"]}
            md = {fqn: _md_from_json(v) for fqn, v in manifest["state_dict_metadata"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{self.path / MANIFEST} is malformed ({exc!r})") from None
        return Metadata(state_dict_metadata=md, planner_data=_planner_data_from_json(manifest.get("planner_data")),
                        storage_data=storage, storage_meta=StorageMeta(checkpoint_id=str(self.path),
                                                                       save_id=manifest.get("save_id")))

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.storage = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        per_file: dict[str, list] = {}
        for req in plan.items:
            per_file.setdefault(self.storage[req.storage_index]["file"], []).append(req)
        for file, reqs in per_file.items():
            with container.Container(self.path / file) as box:
                # a saved shard may feed several requests (resharding): decode each once
                keys = sorted({self.storage[r.storage_index]["key"] for r in reqs})
                decoded = box.tensors(keys, threads=self.threads)
                for req in reqs:
                    saved = decoded[self.storage[req.storage_index]["key"]]
                    if req.type == LoadItemType.BYTE_IO:
                        planner.load_bytes(req, io.BytesIO(saved.numpy().tobytes()))
                        continue
                    piece = saved
                    for dim, (start, length) in enumerate(zip(req.storage_offsets, req.lengths)):
                        piece = piece.narrow(dim, start, length)
                    target = planner.resolve_tensor(req).detach()
                    if target.shape != piece.shape:
                        raise NzipError(f"{box.path}: shard {_key(req.storage_index)} has shape {tuple(piece.shape)}, "
                                        f"the load plan wants {tuple(target.shape)}")
                    target.copy_(piece)
                    planner.commit_tensor(req, target)
        return _done()

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return (Path(checkpoint_id) / MANIFEST).is_file()


# -- DCP metadata as JSON (DCP's own file format pickles it) --------------------------------

def _md_to_json(md) -> dict:
    if isinstance(md, BytesStorageMetadata):
        return {"type": "bytes"}
    p = md.properties
    return {"type": "tensor", "dtype": str(p.dtype).removeprefix("torch."), "size": list(md.size),
            "requires_grad": p.requires_grad,
            "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in md.chunks]}


def _md_from_json(v: dict):
    if v["type"] == "bytes":
        return BytesStorageMetadata()
    if v["type"] != "tensor":
        raise ValueError(f"unknown entry type {v['type']!r}")
    dtype = getattr(torch, v["dtype"])
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {v['dtype']!r}")
    return TensorStorageMetadata(
        properties=TensorProperties(dtype=dtype, requires_grad=bool(v.get("requires_grad", False))),
        size=torch.Size(v["size"]),
        chunks=[ChunkStorageMetadata(offsets=torch.Size(c["offsets"]), sizes=torch.Size(c["sizes"])) for c in v["chunks"]])


def _planner_data_to_json(data) -> Any:
    """DefaultSavePlanner's planner data maps flattened names to key paths (tuples)."""
    if data is None:
        return None
    if isinstance(data, dict) and all(isinstance(v, tuple) for v in data.values()):
        return {"paths": {k: list(v) for k, v in data.items()}}
    try:
        return {"json": json.loads(json.dumps(data))}
    except TypeError:
        raise NzipError("this planner's data is not JSON-serialisable; nzip's DCP storage keeps no pickles") from None


def _planner_data_from_json(v) -> Any:
    if v is None:
        return None
    if "paths" in v:
        return {k: tuple(p) for k, p in v["paths"].items()}
    return v["json"]
