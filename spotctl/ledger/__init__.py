"""The ledger: the only home of SQL (schema and migrations, writes, queries, checks)."""
