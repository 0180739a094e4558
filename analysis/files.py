"""Writing a run's results: parquet files with the run's settings in their schema metadata, and the figures,
every file through a temporary file in the same folder and ``os.replace``, so an interrupted run never leaves a
half-written file and keeps the previous one."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import pandas as pd

__all__ = ["METADATA_KEY", "STATS_FILE", "PADDING_FILE", "IMAGE_STATS_FILE", "TENSOR_STATS_FILE", "FIGURES",
           "write_parquet_atomic", "read_settings", "tmp_path", "write_parquet"]

METADATA_KEY = b"masked_torch.settings"
STATS_FILE = "activation_stats.parquet"
PADDING_FILE = "padding_sensitivity.parquet"
IMAGE_STATS_FILE = "image_stats.parquet"
TENSOR_STATS_FILE = "tensor_stats.parquet"  # --preset seed: the seed's own statistics over whole output tensors
FIGURES = {
    "maps": "activation_maps.png",
    "stats": "channel_stats.png",
    "padding": "padding_sensitivity.png",
    "image_stats": "stats_vs_padding.png",
}


def tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_parquet(frame: pd.DataFrame, path: Path, metadata: Optional[dict] = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    pq.write_table(table, path, compression="zstd")  # smaller than snappy: committed results stay small


def write_parquet_atomic(frame: pd.DataFrame, path, metadata: Optional[dict] = None) -> Path:
    """Write ``frame`` to ``path`` through a temporary file in the same folder and ``os.replace``:
    readers see the old file or the complete new one, never a half-written one; on any error (or
    ``KeyboardInterrupt``) the temporary file is removed and the old file is left as it was.
    ``metadata`` goes into the schema metadata as JSON under :data:`METADATA_KEY`."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        write_parquet(frame, tmp, metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_settings(path) -> dict:
    """The metadata a parquet file was written with (``{"settings": ..., "images": ..., ...}``; ``{}`` if it
    has none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
