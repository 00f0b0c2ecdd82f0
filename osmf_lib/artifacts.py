"""Files the nightly run reads and writes outside the lakehouse (landing files, product images,
rendered creatives, reports), on a local disk or object storage through one layer (fsspec): a path
or file:// URI is local; s3a:// (the scheme Spark reads the same objects with), s3://, gs:// and the
like need their fsspec package (s3fs, gcsfs). s3fs takes its endpoint and keys from the AWS
environment (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...).
"""

from __future__ import annotations

import os
import unicodedata
import uuid

import fsspec


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(uri)


def absolute(location: str | os.PathLike) -> str:
    """A URI unchanged; a local path (or file:// URI) as an absolute path, against the working directory."""
    fs, path = _fs(os.fspath(location))
    return path if "file" in fs.protocol else os.fspath(location)


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    return fs.cat_file(path)


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def names(folder: str) -> list[str]:
    """The names of the entries directly in `folder`; none when it does not exist."""
    fs, path = _fs(folder)
    if not fs.exists(path):
        return []
    return sorted(entry.rstrip("/").rpartition("/")[2] for entry in fs.ls(path, detail=False))


def remove(uri: str) -> None:
    fs, path = _fs(uri)
    fs.rm_file(path)


def write_atomically(uri: str, data: bytes) -> None:
    """Write under a hidden name beside the target, then rename: a killed writer leaves no half
    file under the real name (an object store's single PUT is atomic already)."""
    fs, path = _fs(uri)
    parent, _, name = path.rpartition("/")
    if not fs.exists(parent):
        fs.makedirs(parent, exist_ok=True)
    if "file" not in fs.protocol:
        fs.pipe_file(path, data)
        return
    temporary = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        fs.pipe_file(temporary, data)
        # On disk before the rename, and the rename on disk after: a crash of the machine leaves
        # the old file or the new one, never a name pointing at blocks not yet written.
        _sync(temporary, os.O_RDONLY)
        fs.mv(temporary, path)
        _sync(parent, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)


def _sync(path: str, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class UnsafePath(ValueError):
    """A path part that would leave its root."""


def join(root: str | os.PathLike, *parts: str) -> str:
    """`root`/part/...; a part is a name or names joined by '/', none of them empty, '.', '..' or
    holding a backslash or control character, so a part made from data (a product id, a file a
    listing names) cannot leave `root`."""
    for part in parts:
        for name in part.split("/"):
            if name in ("", ".", "..") or "\\" in name or any(unicodedata.category(c) == "Cc" for c in name):
                raise UnsafePath(f"{part!r} is no name under {os.fspath(root)}")
    return "/".join([os.fspath(root).rstrip("/"), *parts])
