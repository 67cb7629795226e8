"""Reads carewatch's Parquet files with DuckDB and pyarrow (hive partitions included) and
checks they hold exactly the rows the writer says it stored (expected.csv beside them).

Usage: check_parquet.py DATA_DIR
"""
import csv
import sys
from pathlib import Path

import duckdb
import pyarrow.dataset as ds

root = Path(sys.argv[1])
with open(root / "expected.csv") as f:
    expected = sorted(
        (r["patient_id"], r["device_id"], r["code"], float(r["value"]), int(r["effective_us"]))
        for r in csv.DictReader(f)
    )

con = duckdb.connect()
rows = con.execute(
    f"""SELECT patient_id, device_id, code, value, epoch_us(effective_time), date
        FROM read_parquet('{root}/observations/*/*.parquet', hive_partitioning = true)"""
).fetchall()
got = sorted(r[:5] for r in rows)
# The hive partition is the UTC date of effective_time.
bad_dates = [r for r in rows if str(r[5]) != con.execute(
    "SELECT strftime(make_timestamp(?), '%Y-%m-%d')", [r[4]]).fetchone()[0]]

table = ds.dataset(root / "observations", format="parquet", partitioning="hive").to_table()
arrow_rows = sorted(
    (p, d, c, v, int(t.timestamp() * 1_000_000) if hasattr(t, "timestamp") else t)
    for p, d, c, v, t in zip(
        table["patient_id"].to_pylist(), table["device_id"].to_pylist(), table["code"].to_pylist(),
        table["value"].to_pylist(), table["effective_time"].cast("int64").to_pylist())
)

ok = True
for name, result in (("duckdb", got), ("pyarrow", arrow_rows)):
    if result != expected:
        ok = False
        print(f"{name}: {len(result)} rows differ from the {len(expected)} expected")
        print("  missing:", sorted(set(expected) - set(result))[:5])
        print("  extra:  ", sorted(set(result) - set(expected))[:5])
    else:
        print(f"{name}: {len(result)} rows, same as carewatch wrote")
if bad_dates:
    ok = False
    print("rows in the wrong date partition:", bad_dates[:5])
print(f"parquet-readers: {2 if ok else 0} passed, {0 if ok else 2} failed")
sys.exit(0 if ok else 1)
