"""Sources: the registry of every card source and eval set, the readers, and the hub conversion.

Public API: `rows_from_record(source, record) -> list[dict]`, the sample rows the hub path writes for one
native hub record (see `sources.records`).
"""

from iimed_assets.sources.records import rows_from_record

__all__ = ["rows_from_record"]
