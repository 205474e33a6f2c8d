"""The data root: Parquet partitions and JSON manifests on any pyarrow filesystem.

Every write goes to a hidden temporary name first and is then moved into place, so a crash
leaves either the old file or the new one, never half of one. Hidden names (``.``/``_``
prefixes) are skipped by pyarrow's dataset discovery, so ``pandas.read_parquet(<root>/raw)``
reads exactly the committed partitions.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class DataRoot:
    """A folder or URI (``s3://bucket/prefix``) holding raw bars, features and manifests.

    Only the URI is pickled, so instances travel to Ray workers and reopen the filesystem
    there.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._fs: pafs.FileSystem | None = None
        self._base = ""

    def __reduce__(self) -> tuple[type[DataRoot], tuple[str]]:
        return (DataRoot, (self.uri,))

    def __repr__(self) -> str:
        return f"DataRoot({self.uri!r})"

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs, self._base = _open_filesystem(self.uri)
        return self._fs

    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` below the root."""
        _ = self.fs
        return "/".join([self._base.rstrip("/"), *parts])

    def display(self, *parts: str) -> str:
        """A path users can paste: the URI form for remote roots, a plain path locally."""
        local = isinstance(self.fs, pafs.LocalFileSystem)
        return self.path(*parts) if local else "/".join([self.uri.rstrip("/"), *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def _visible(self, kind: pafs.FileType, *parts: str) -> list[str]:
        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        return sorted(
            i.base_name for i in infos if i.type == kind and not i.base_name.startswith((".", "_"))
        )

    def list_dirs(self, *parts: str) -> list[str]:
        """Names of the visible sub-folders of ``parts`` (empty when it does not exist)."""
        return self._visible(pafs.FileType.Directory, *parts)

    def list_files(self, *parts: str) -> list[str]:
        """Names of the visible files in ``parts``, sorted (empty when it does not exist)."""
        return self._visible(pafs.FileType.File, *parts)

    def _commit(self, final: str, write: Any) -> None:
        parent = final.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{final.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        try:
            write(tmp)
            self.fs.move(tmp, final)
        except BaseException:
            if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self.fs.delete_file(tmp)
            raise

    def write_parquet(self, frame: pd.DataFrame, *parts: str, metadata: dict[str, str]) -> None:
        """Atomically write ``frame`` (index dropped) with ``metadata`` in the schema."""
        table = pa.Table.from_pandas(frame, preserve_index=False)
        merged = {
            **(table.schema.metadata or {}),
            **{k.encode(): v.encode() for k, v in metadata.items()},
        }
        table = table.replace_schema_metadata(merged)
        self._commit(self.path(*parts), lambda p: pq.write_table(table, p, filesystem=self.fs))

    def read_metadata(self, *parts: str) -> dict[str, str]:
        """The key/value metadata in a Parquet file's schema (reads the footer only)."""
        schema = pq.read_schema(self.path(*parts), filesystem=self.fs)
        return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}

    def read_parquet(self, *parts: str) -> pd.DataFrame:
        return pq.read_table(self.path(*parts), filesystem=self.fs).to_pandas()

    def write_json(self, payload: dict[str, Any], *parts: str) -> None:
        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()

        def write(tmp: str) -> None:
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)

        self._commit(self.path(*parts), write)

    def read_json(self, *parts: str) -> dict[str, Any] | None:
        """The JSON object at ``parts``, or None when there is none."""
        if not self.exists(*parts):
            return None
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            loaded: dict[str, Any] = json.loads(stream.read())
        return loaded


def _open_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def frame_hash(frame: pd.DataFrame) -> str:
    """A content hash of ``frame`` that is stable across runs, processes and machines."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[c, str(t)] for c, t in frame.dtypes.items()]).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def combine_hashes(parts: dict[str, str]) -> str:
    """One hash over named hashes, independent of dict order."""
    joined = "\n".join(f"{k}:{parts[k]}" for k in sorted(parts))
    return hashlib.sha256(joined.encode()).hexdigest()
