#!/usr/bin/env python3
"""What takes the space in carewatch's binary (issue 17; BENCHMARKS.md "First start").

    python3 scripts/size-report.py BINARY [SYMBOLS] [--top N]

BINARY is the shipped binary (scripts/package.sh's OUT/carewatch); SYMBOLS is a file with its
symbol table (OUT/carewatch.debug, or the unpackaged target/release/carewatch; default: BINARY).
Prints the binary's sections by size, then the machine code (function symbols of .text) by
crate. A generic function is counted to the first crate in its name that is not the standard
library's: `core::ptr::drop_in_place<datafusion_expr::expr::Expr>` is datafusion_expr's, since
that crate's types are why it exists. Uses binutils (readelf, nm), like cargo-bloat's ELF path,
without building anything.
"""
import collections
import re
import subprocess
import sys

STD = {"core", "alloc", "std", "hashbrown", "compiler_builtins", "panic_unwind", "std_detect"}
ROOT = re.compile(r"(?<![A-Za-z0-9_:])([a-z_][a-z0-9_]*)::")


def sections(binary):
    out = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+\S+\s+\S+\s+([0-9a-f]+)", line)
        if m and m.group(2) != "NOBITS":
            rows.append((int(m.group(3), 16), m.group(1)))
    return sorted(rows, reverse=True)


def crate_of(name):
    roots = ROOT.findall(name)
    for r in roots:
        if r not in STD:
            return r
    return "(standard library)" if roots else "(C and assembly: ring, aws-lc, zstd, libc glue)"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    top = 25
    if "--top" in sys.argv:
        top = int(sys.argv[sys.argv.index("--top") + 1])
        args = [a for a in args if a != str(top)]
    if not args:
        sys.exit(__doc__)
    binary, symbols = args[0], (args[1] if len(args) > 1 else args[0])
    total = sum(s for s, _ in sections(binary))
    import os

    print(f"{binary}: {os.path.getsize(binary):,} bytes; sections:")
    for size, name in sections(binary)[:8]:
        print(f"  {size / 1e6:8.1f} MB  {name}")
    nm = subprocess.run(["nm", "-S", "-C", "--defined-only", symbols], capture_output=True, text=True,
                        check=True).stdout
    by = collections.Counter()
    for line in nm.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in "tTwW":
            by[crate_of(parts[3])] += int(parts[1], 16)
    code = sum(by.values())
    print(f"machine code in function symbols: {code / 1e6:.1f} MB of {total / 1e6:.1f} MB in sections; by crate:")
    for crate, size in by.most_common(top):
        print(f"  {size / 1e6:8.2f} MB  {100 * size / code:5.1f} %  {crate}")
    rest = code - sum(s for _, s in by.most_common(top))
    print(f"  {rest / 1e6:8.2f} MB  {100 * rest / code:5.1f} %  ({len(by) - top} more crates)")


if __name__ == "__main__":
    main()
