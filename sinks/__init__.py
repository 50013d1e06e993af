"""The DuckDB archive: idempotent, Arrow-batched, one transaction per batch (see sinks.archive)."""

from sinks.archive import (  # noqa: F401  (re-exported: the package exports what the archive exports)
    ARCHIVE_SCHEMA_VERSION,
    TABLES,
    Archive,
    ArchiveBatch,
    ArchiveError,
    WriteStats,
    ddl,
    read_actions,
    read_dead_letters,
    read_inputs_in_event_order,
)
from sinks.archive import __all__  # noqa: F401  (the package exports what the archive exports)
