"""Files the nightly run reads and writes outside the lakehouse (product images, rendered
creatives, contact sheets), on a local disk or object storage through one layer (fsspec): a path
or file:// URI is local; s3://, gs:// and the like need their fsspec package (s3fs, gcsfs).
"""

from __future__ import annotations

import uuid

import fsspec


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(uri)


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    return fs.cat_file(path)


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


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
        fs.mv(temporary, path)
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])
