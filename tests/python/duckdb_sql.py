"""Runs one SQL query in DuckDB (in memory) and prints its rows as one JSON list of lists.

Used by the Rust tests to read the Parquet warehouse the way an analyst would:
    duckdb_sql.py "SELECT count(*) FROM read_parquet('/lake/orders/**/*.parquet')"
"""

import json
import sys

import duckdb


def main() -> None:
    sql = sys.argv[1]
    rows = duckdb.sql(sql).fetchall()
    print(json.dumps([list(r) for r in rows], default=str))


if __name__ == "__main__":
    main()
