"""The SQLite store of completions (sqlite-utils), with migrations and WAL."""
