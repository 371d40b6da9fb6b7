"""Packed model folders: `nzip pack MODEL_DIR` -> MODEL_DIR.nz/.

Every *.safetensors file of a Hugging Face folder (sharded ones and their
model.safetensors.index.json included) becomes a .nz container that unpacks to the
identical file; every other file (config, tokenizer, README) is copied as it is.
nzip-folder.json, the manifest, lists each file with its size and checksum, and is
written last, into a temporary folder that takes the final name only when complete: a
folder without a manifest is never mistaken for a checkpoint.

    {"format": "nzip-folder", "version": 1,
     "files": [{"path": "model-00001-of-00002.safetensors", "stored": "....safetensors.nz",
                "size": original bytes, "xxh3": of the original}, ...]}
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import ChecksumError, FormatError, NzipError, VersionError
from ..parallel import pmap_balanced
from . import container, safetensors
from .atomic import atomic_dir, atomic_write
from .checksum import hasher

MANIFEST = "nzip-folder.json"
VERSION = 1
PACKED_SUFFIX = ".nz"


def is_packed(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _files(src: Path) -> list[Path]:
    """Files of a model folder, relative; hidden folders (.git, .cache) left out, hidden
    files (.gitattributes) kept."""
    out = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts[:-1]):
            out.append(rel)
    return out


def _file_hash(path: Path) -> str:
    digest = hasher()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return f"{digest.intdigest():016x}"


def pack_folder(src: str | os.PathLike, dst: str | os.PathLike, codec="auto", threads: int = 0,
                overwrite: bool = False, progress=None) -> dict:
    """Pack a model folder; returns {"files", "safetensors_bytes", "packed_bytes"}. Files are
    packed side by side, each with a fair share of the threads (a big shard gets them all)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise NzipError(f"{src} is not a folder")
    if is_packed(src):
        raise NzipError(f"{src} is already a packed folder (it has {MANIFEST})")
    files = _files(src)
    if not any(f.suffix == ".safetensors" for f in files):
        raise NzipError(f"{src} holds no .safetensors file")
    with atomic_dir(dst, overwrite) as tmp:
        def one(rel: Path, th: int) -> dict:
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if rel.suffix == ".safetensors":
                stored = rel.with_name(rel.name + PACKED_SUFFIX)
                header = safetensors.pack(src / rel, tmp / stored, codec=codec, threads=th, progress=progress)
                return {"path": rel.as_posix(), "stored": stored.as_posix(), "size": header["source"]["size"],
                        "xxh3": header["source"]["xxh3"]}
            shutil.copyfile(src / rel, out)
            return {"path": rel.as_posix(), "stored": rel.as_posix(), "size": out.stat().st_size,
                    "xxh3": _file_hash(out)}

        entries = pmap_balanced(one, files, container.resolve_threads(threads),
                                cost=lambda rel: (src / rel).stat().st_size)
        manifest = {"format": "nzip-folder", "version": VERSION, "files": entries}
        with atomic_write(tmp / MANIFEST) as f:  # last: the folder is complete only with it
            f.write(json.dumps(manifest, indent=1).encode())
    raw = sum(e["size"] for e in entries if e["stored"] != e["path"])
    return {"files": len(entries), "safetensors_bytes": raw,
            "packed_bytes": sum((dst / e["stored"]).stat().st_size for e in entries if e["stored"] != e["path"])}


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise FormatError(f"{path} has no {MANIFEST}: not a packed folder, or its packing never finished") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path / MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "nzip-folder":
        raise FormatError(f"{path / MANIFEST} is not an nzip folder manifest")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise VersionError(f"{path}: folder format version {manifest.get('version')} is newer than this nzip reads")
    for e in manifest.get("files", []):
        for key in ("path", "stored"):
            rel = e.get(key)
            if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
                raise FormatError(f"{path / MANIFEST}: bad file entry {e!r}")
    return manifest


def unpack_folder(src: str | os.PathLike, dst: str | os.PathLike, threads: int = 0, overwrite: bool = False,
                  progress=None) -> dict:
    """Restore the original folder, every file byte for byte (each checked against the
    original's checksum before the folder takes its name)."""
    src, dst = Path(src), Path(dst)
    manifest = read_manifest(src)
    with atomic_dir(dst, overwrite) as tmp:
        def one(e: dict, th: int) -> None:
            out = tmp / e["path"]
            out.parent.mkdir(parents=True, exist_ok=True)
            if e["stored"] != e["path"]:
                with container.Container(src / e["stored"]) as box:
                    safetensors.unpack(box, out, threads=th, progress=progress)
            else:
                shutil.copyfile(src / e["stored"], out)
                if _file_hash(out) != e["xxh3"]:
                    raise ChecksumError(f"{src / e['stored']} does not match its checksum in the manifest")

        pmap_balanced(one, manifest["files"], container.resolve_threads(threads), cost=lambda e: e["size"])
    return {"files": len(manifest["files"]), "bytes": sum(e["size"] for e in manifest["files"])}


def verify_folder(path: str | os.PathLike, threads: int = 0) -> int:
    """Check every file of a packed folder (containers fully decoded); returns the count.
    Raises naming the first bad file (and tensor)."""
    path = Path(path)
    manifest = read_manifest(path)
    for e in manifest["files"]:
        stored = path / e["stored"]
        if not stored.is_file():
            raise FormatError(f"{path}: {e['stored']} is missing")
        if e["stored"] != e["path"]:
            with container.Container(stored) as box:
                box.verify(threads)
        elif _file_hash(stored) != e["xxh3"]:
            raise ChecksumError(f"{stored} does not match its checksum in the manifest")
    return len(manifest["files"])


def load_state_dict(path: str | os.PathLike, device=None, keys=None, threads: int = 0) -> dict:
    """The model's tensors from every container of a packed folder, in one dict."""
    path = Path(path)
    manifest = read_manifest(path)
    wanted = None if keys is None else set(keys)
    state: dict = {}
    for e in manifest["files"]:
        if e["stored"] == e["path"]:
            continue
        with container.Container(path / e["stored"]) as box:
            names = [n for n in box.keys() if wanted is None or n in wanted]
            state.update(box.tensors(names, device=device, threads=threads))
    if wanted is not None and wanted - state.keys():
        raise KeyError(f"{path}: no tensors named {sorted(wanted - state.keys())[:3]}")
    return state
