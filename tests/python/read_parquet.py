"""Reads every Parquet file the warehouse sink wrote under a directory, with DuckDB and with
pyarrow, and prints what they hold as one JSON object on stdout:

    {"rows": [[partition, offset, id], ...],      # DuckDB, ordered by partition and offset
     "files": N,                                  # part files DuckDB read
     "time_type": "TIMESTAMP WITH TIME ZONE",     # the time column as DuckDB sees it
     "date_mismatches": 0,                        # rows whose date= directory is not their UTC day
     "pyarrow_rows": [[partition, offset, id], ...],
     "pyarrow_time_type": "timestamp[ms, tz=UTC]"}

Usage: read_parquet.py <warehouse-dir>
"""

import glob
import json
import os
import sys

import duckdb
import pyarrow.parquet as pq


def main() -> None:
    root = sys.argv[1]
    pattern = os.path.join(root, "**", "*.parquet")
    files = sorted(glob.glob(pattern, recursive=True))
    out = {"files": len(files), "rows": [], "pyarrow_rows": []}
    if files:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        source = f"read_parquet({pattern!r}, hive_partitioning = false)"
        out["rows"] = [
            list(r)
            for r in con.execute(
                f'SELECT "partition", "offset", id FROM {source} ORDER BY 1, 2, 3'
            ).fetchall()
        ]
        out["time_type"] = next(
            r[1] for r in con.execute(f"DESCRIBE SELECT time FROM {source}").fetchall()
        )
        # The date directory is the event's UTC day.
        out["date_mismatches"] = con.execute(
            f"SELECT count(*) FROM read_parquet({pattern!r}, hive_partitioning = true, "
            "hive_types = {'date': VARCHAR}) "
            "WHERE strftime(time, '%Y-%m-%d') <> date"
        ).fetchone()[0]
        rows = []
        for f in files:
            table = pq.read_table(f, columns=["partition", "offset", "id", "time"])
            out["pyarrow_time_type"] = str(table.schema.field("time").type)
            rows.extend(
                zip(
                    table.column("partition").to_pylist(),
                    table.column("offset").to_pylist(),
                    table.column("id").to_pylist(),
                )
            )
        out["pyarrow_rows"] = [list(r) for r in sorted(rows)]
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
