"""The SQLite store of completions (sqlite-utils), with migrations, WAL, and a spool for unwritable moments.

Place in the flow: the pipeline records each completion here; the language server marks acceptances; the report
reads; ``greentrack serve`` checks its API tokens and logs its idle energy here. ``Store`` is the whole API;
``schema`` holds the tables and the SQL; ``tokens`` the API tokens' SQL; ``spool`` keeps writes the database
could not take.
"""

from greentrack.store.schema import SCHEMA_VERSION
from greentrack.store.store import IdleTotals, Store, StoreUnwritable, inspect_file
from greentrack.store.tokens import TokenInfo

__all__ = ["SCHEMA_VERSION", "IdleTotals", "Store", "StoreUnwritable", "TokenInfo", "inspect_file"]
