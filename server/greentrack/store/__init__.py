"""The SQLite store of completions (sqlite-utils), with migrations, WAL, and a spool for unwritable moments.

Place in the flow: the pipeline records each completion here; the language server marks acceptances; the report
reads. ``Store`` is the whole API; ``schema`` holds the tables and the SQL; ``spool`` keeps writes the database
could not take.
"""

from greentrack.store.schema import SCHEMA_VERSION
from greentrack.store.store import Store, StoreUnwritable, inspect_file

__all__ = ["SCHEMA_VERSION", "Store", "StoreUnwritable", "inspect_file"]
