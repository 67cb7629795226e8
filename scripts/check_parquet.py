"""Reads carewatch's tables with the `deltalake` package and Polars (as Delta tables, through
their `_delta_log`) and their Parquet files with DuckDB and pyarrow (hive partitions included),
and checks they hold exactly the rows the writer says it stored (expected.csv beside them).

Usage: check_parquet.py DATA_DIR
"""
import csv
import sys
from pathlib import Path

import deltalake
import duckdb
import polars as pl
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
        FROM read_parquet('{root}/observations/date=*/*.parquet', hive_partitioning = true)"""
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

cols = ["patient_id", "device_id", "code", "value", "effective_time"]
delta = deltalake.DeltaTable(str(root / "observations")).to_pyarrow_table(columns=cols)
delta_rows = sorted(zip(
    delta["patient_id"].to_pylist(), delta["device_id"].to_pylist(), delta["code"].to_pylist(),
    delta["value"].to_pylist(), delta["effective_time"].cast("int64").to_pylist()))
df = pl.read_delta(str(root / "observations")).select(cols)
polars_rows = sorted(
    (p, d, c, v, t) for p, d, c, v, t in zip(
        df["patient_id"], df["device_id"], df["code"], df["value"],
        df["effective_time"].dt.epoch("us")))

readers = (("duckdb", got), ("pyarrow", arrow_rows), ("deltalake", delta_rows), ("polars", polars_rows))
ok = True
for name, result in readers:
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
n = len(readers)
print(f"parquet-readers: {n if ok else 0} passed, {0 if ok else n} failed")
sys.exit(0 if ok else 1)
