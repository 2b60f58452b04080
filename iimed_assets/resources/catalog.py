"""Where each source is read from: the bundled sample (default), the hub (or a local mirror of its file
tree), or a local file in the source's hub layout."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import dagster as dg
from pydantic import Field

from iimed_assets.sources.loaders import DEFAULT_MAX_ROW_BYTES, RawItem, iter_hub, iter_local, iter_sample
from iimed_assets.sources.registry import SourceSpec, get_source

MODES = ("sample", "hub")


class SourceCatalog(dg.ConfigurableResource):
    """Resolves every registry source to a reader.

    Precedence for one source: `overrides[name]` (a local JSONL/JSON/Parquet file or folder in the source's hub
    layout) > `mode` (default `sample`). In hub mode, `hub_mirror` is a folder holding `<owner>/<name>/` copies of
    the hub repos' file trees (e.g. from `huggingface-cli download --repo-type dataset --local-dir`): every source
    is then read from there, offline, through the same `datasets.load_dataset` calls as the hub. The code location
    fills these from $IIMED_SOURCE_MODE, $IIMED_SOURCE_<NAME>, $IIMED_HUB_MIRROR and $IIMED_SOURCE_MAX_ROWS
    (resources/defaults.py, settings.py).
    """

    mode: str | None = Field(default=None, description="sample | hub (None: sample); the code location sets "
                                                       "$IIMED_SOURCE_MODE")
    hub_mirror: str | None = Field(default=None, description="folder of <owner>/<name> hub repo copies "
                                                             "($IIMED_HUB_MIRROR)")
    overrides: dict[str, str] = Field(default_factory=dict, description="source name -> local file or folder in the "
                                                                        "hub layout ($IIMED_SOURCE_<NAME>)")
    max_rows: int | None = Field(default=None, description="read at most this many rows per source (smoke runs; "
                                                           "$IIMED_SOURCE_MAX_ROWS)")
    max_row_bytes: int = Field(default=DEFAULT_MAX_ROW_BYTES, description="longer JSONL lines are ledgered as oversize")
    row_bounds: dict[str, list[int]] = Field(
        default_factory=dict, description="source name -> [min, max] rows expected in the partition")
    field_expects: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="source name -> {field: minimum share}, replacing the registry's declared "
                                          "field coverage (e.g. for a partial local copy)")
    batch_rows: int = Field(default=5000, description="rows per staged Parquet batch")

    def resolved_mode(self) -> str:
        mode = (self.mode or "sample").strip().lower()
        if mode not in MODES:
            raise ValueError(f"source mode {mode!r} is not one of {MODES}")
        return mode

    def resolved_max_rows(self) -> int | None:
        return self.max_rows

    def local_override(self, name: str) -> Path | None:
        path = self.overrides.get(name)
        return Path(path).expanduser() if path else None

    def resolved_hub_mirror(self) -> Path | None:
        path = self.hub_mirror
        return Path(path).expanduser() if path else None

    def hub_layout(self, name: str) -> bool:
        """True when `name` is read in its hub layout (hub, hub mirror, local file): the hub expectations apply."""
        return self.local_override(name) is not None or self.resolved_mode() == "hub"

    def expectations(self, spec: SourceSpec) -> dict[str, float]:
        """Minimum share of rows per coverage field: configured, else the registry's for the layout read."""
        if spec.name in self.field_expects:
            return dict(self.field_expects[spec.name])
        return spec.expectations(hub_layout=self.hub_layout(spec.name))

    def origin(self, name: str) -> str:
        """Where the rows of `name` come from, in words (shown in the UI)."""
        spec = get_source(name)
        local = self.local_override(name)
        if local is not None:
            return f"local:{local}"
        if self.resolved_mode() == "hub":
            if spec.hf_id is None:
                return "hub:none (local file only)"
            mirror = self.resolved_hub_mirror()
            where = f"hub-mirror:{mirror / spec.hf_id}" if mirror else f"hub:{spec.hf_id}"
            what = (f" files={','.join(spec.files)}" if spec.files else
                    (f" [{','.join(c for c in spec.configs if c)}]" if spec.config else "") + f" split={spec.split}")
            return where + what
        return "sample:" + (", ".join(f"{s.path}[{s.start}:{'' if s.stop is None else s.stop}]"
                                      for s in spec.sample) or "none bundled")

    def read(self, name: str) -> Iterator[RawItem]:
        spec = get_source(name)
        local = self.local_override(name)
        if local is not None:
            return iter_local(local, max_row_bytes=self.max_row_bytes, spec=spec)
        if self.resolved_mode() == "hub":
            return iter_hub(spec, mirror=self.resolved_hub_mirror())
        return iter_sample(spec, max_row_bytes=self.max_row_bytes)

    def bounds(self, spec: SourceSpec) -> tuple[int, int | None]:
        """[min, max] rows expected in a partition: configured, else derived from the mode.

        Sample mode expects at least one row from every source with a bundled sample. Hub mode expects the
        source's real size within its tolerance (`expected_rows` ± `rows_tolerance`): a truncated download or
        a wrong split fails the check. A source of unknown size only has to deliver rows.
        """
        if spec.name in self.row_bounds:
            lo, hi = (list(self.row_bounds[spec.name]) + [None])[:2]
            return int(lo), (int(hi) if hi is not None else None)
        limit = self.resolved_max_rows()
        if self.local_override(spec.name) is not None:
            lo, hi = 1, None
        elif self.resolved_mode() == "sample":
            lo, hi = (1 if spec.sample else 0), None
        elif spec.expected_rows:
            lo = int(spec.expected_rows * (1 - spec.rows_tolerance))
            hi = int(spec.expected_rows * (1 + spec.rows_tolerance)) + 1
        else:
            lo, hi = 1, None
        if limit is not None:
            lo = min(lo, 1)
            hi = limit if hi is None else min(hi, limit)
        return lo, hi
