"""What looking at a FINISHED maps folder costs, from 100 cases to 100,000.

Once ``rwmaps compute`` has finished a folder, everything else (a rerun, ``rwmaps verify``,
``load_map`` in a data loader, ``rwmaps inspect``, ``map_info``) should cost the same per
case, or per call, whatever the number of cases in the folder.  For each size n (128x128
PNG label tiles, 4 classes, from ``bench_scale.make_tiles``; maps ``--format npy``), in
this order:

1. **compute**: ``rwmaps compute --input tiles --output maps --format npy --jobs 2
   --classes 0,1,2,3``, a real process; its first run only (s and ms per case).  A folder
   already complete from an earlier run with the same ``--workdir`` is not computed again
   (the command is run and rwmaps skips every case); the first run's time recorded then
   (in ``bench_folder_compute.json``) is reported, marked ``*``.
2. **rerun**: the same command again, every case skipped (ms per case).
3. **verify**: ``rwmaps verify --input tiles --output maps --sample 50`` (ms per case, and
   verify / compute: the target is <= 0.5 at 100,000); it must exit 0.
4. **verify, one map truncated**: one map file is truncated in place, verify must exit
   non-zero and name it; then its bytes are written back in place (same inode) and its
   mtime restored, so the folder is finished again.
5. **load_map**: in a fresh process (imports done first on another, tiny folder; 3 such
   processes, the median of each figure),
   ``rwmaps_cli.load_map(path)`` on 200 maps spread over the folder (all of them when
   fewer), then the same 200 again, then ``load_map(path, mmap=True)``: the first call, and
   the median per call of each pass, in microseconds.
6. **inspect**: ``rwmaps inspect <one map>``, a real process, median of 5 (s).
7. **map_info**: ``rwmaps_cli.mapfile.map_info`` on the same 200 maps, median per call (us).

n = 100 is always included as the baseline: load_map, inspect and map_info are given as a
ratio to it (target: within 1.2x from 100 maps to 100,000).  The machines are shared and
noisy: medians, and ratios within one run.  Ctrl-C prints the tables of what was measured.

Run from the repository root::

    python benchmarks/bench_folder.py --workdir /tmp/bench_folder   # 1,000, 10,000, 100,000 (+ 100)
    python benchmarks/bench_folder.py --sizes 1000,10000            # only these (+ 100)
    python benchmarks/bench_folder.py --quick                       # a smoke test: 100 and 1,000

The inputs and maps stay in ``--workdir`` (default: a temporary folder, removed at the end),
so a second run reuses them: 100,000 tiles take a few minutes to make and about 4 minutes to
compute on 2 cores, and their maps take 26 GB (262 KB each).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench_scale import TILE_CLASSES, make_tiles  # noqa: E402  (benchmarks/bench_scale.py)
from seed import median_times  # noqa: E402  (benchmarks/seed.py)

BASELINE = 100
LOAD_SAMPLE = 200
VERIFY_SAMPLE = 50
INSPECT_REPEATS = 5
LOAD_PROCESSES = 3  # fresh processes per size: a first call is one sample in each
COMPUTE_RECORD = "bench_folder_compute.json"


def rwmaps_command() -> list[str]:
    """The ``rwmaps`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "rwmaps"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rwmaps_cli"]


def code_version() -> str:
    """The commit measured, and whether rwmaps_cli/ differs from it (another change in progress)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rwmaps_cli"], cwd=repo, capture_output=True,
                               text=True)
    except OSError:
        return "unknown (no git)"
    changed = len(dirty.stdout.splitlines())
    return f"{head.stdout.strip() or 'unknown'}" + (f" + {changed} uncommitted files in rwmaps_cli/" if changed else "")


def timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run([*rwmaps_command(), *args], capture_output=True, text=True)
    return time.perf_counter() - start, done


def map_of(tile: Path, tiles: Path, maps: Path) -> Path:
    """The map rwmaps writes for a tile: the input tree mirrored, ``.npy``."""
    return (maps / tile.relative_to(tiles)).with_suffix(".npy")


def spread(paths: list, k: int) -> list:
    """``k`` items evenly spaced over ``paths``, first and last included (all when fewer)."""
    if len(paths) <= k:
        return list(paths)
    return [paths[i] for i in sorted({int(round(i * (len(paths) - 1) / (k - 1))) for i in range(k)})]


def summary_counts(stderr: str) -> tuple[int, int] | None:
    """(done, skipped) from rwmaps compute's summary line, or None."""
    found = re.search(r"(\d+) done, (\d+) skipped", stderr)
    return (int(found.group(1)), int(found.group(2))) if found else None


# ---------------------------------------------------------------------------------------
# 5 and 7, in a fresh process: load_map and map_info


def load_child(folder: str, warm: str, maps: list[str]) -> dict:
    """Run in a fresh interpreter: times of load_map and map_info on ``maps``.

    ``warm`` is a map of another folder, loaded first so that the imports are not in the
    first call; the first call then costs what a loader's first sample in this folder does
    (the manifest read, for one).
    """
    import rwmaps_cli
    from rwmaps_cli.mapfile import map_info

    rwmaps_cli.load_map(warm)
    map_info(warm)
    rwmaps_cli.load_map(warm, mmap=True)

    def per_call(function) -> list[float]:
        times = []
        for path in maps:
            start = time.perf_counter()
            function(path)
            times.append(time.perf_counter() - start)
        return times

    first_pass = per_call(rwmaps_cli.load_map)
    second_pass = per_call(rwmaps_cli.load_map)
    mmapped = per_call(lambda p: rwmaps_cli.load_map(p, mmap=True))
    info = per_call(map_info)
    array, meta = rwmaps_cli.load_map(maps[0])
    assert array.shape == (len(TILE_CLASSES), 128, 128) and list(meta.classes) == TILE_CLASSES, (array.shape, meta)
    us = 1e6
    return {"folder": folder, "calls": len(maps), "first_call": first_pass[0] * us,
            "first_pass": float(np.median(first_pass)) * us, "second_pass": float(np.median(second_pass)) * us,
            "mmap": float(np.median(mmapped)) * us, "map_info": float(np.median(info)) * us}


def load_in_fresh_processes(folder: Path, warm: Path, maps: list[Path]) -> dict:
    """:func:`load_child` in ``LOAD_PROCESSES`` fresh processes, one after the other: the
    median of each figure over them."""
    results = []
    for _ in range(LOAD_PROCESSES):
        done = subprocess.run([sys.executable, __file__, "--load-child", str(folder), "--warm", str(warm),
                               *map(str, maps)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the load_map process failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    merged = {key: float(np.median([r[key] for r in results])) for key in results[0] if key != "folder"}
    merged["calls"] = results[0]["calls"]
    merged["first_calls"] = [r["first_call"] for r in results]
    return merged


# ---------------------------------------------------------------------------------------
# one size


def truncated_verify(tiles: Path, maps: Path, victim: Path) -> tuple[float, subprocess.CompletedProcess]:
    """verify with ``victim`` truncated to half its bytes; written back in place after."""
    before = victim.stat()
    data = victim.read_bytes()
    try:
        with open(victim, "r+b") as f:
            f.truncate(len(data) // 2)
        return timed(["verify", "--input", str(tiles), "--output", str(maps), "--sample", str(VERIFY_SAMPLE)])
    finally:
        with open(victim, "r+b") as f:  # in place: the same inode, as the manifest records it
            f.write(data)
            f.truncate(len(data))
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = victim.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size,
                                                                    before.st_mtime_ns), victim
        assert victim.read_bytes() == data, victim


def bench_size(n: int, root: Path, warm: Path, row: dict, failures: list[str]) -> None:
    """Measure one size into ``row`` (filled as it goes, so Ctrl-C keeps what was measured)."""
    tiles, maps = root / f"tiles_{n}", root / f"maps_{n}"
    print(f"\n# n = {n:,}: tiles in {tiles}", flush=True)
    start = time.perf_counter()
    paths = make_tiles(tiles, n)
    print(f"  tiles ready ({time.perf_counter() - start:.1f} s)", flush=True)
    compute_args = ["compute", "--input", str(tiles), "--output", str(maps), "--format", "npy", "--jobs", "2",
                    "--classes", ",".join(map(str, TILE_CLASSES))]

    # 1. compute (first run only)
    record_file = root / COMPUTE_RECORD
    records = json.loads(record_file.read_text()) if record_file.exists() else {}
    seconds, done = timed(compute_args)
    counts = summary_counts(done.stderr)
    if done.returncode != 0:
        failures.append(f"n={n}: rwmaps compute exited {done.returncode}: {done.stderr[-500:]}")
        return
    if counts == (n, 0):  # a first run: every case computed now
        records[str(n)] = {"seconds": seconds, "when": time.strftime("%Y-%m-%d %H:%M")}
        record_file.write_text(json.dumps(records, indent=1))
        row["compute"], row["compute_earlier"] = seconds, False
    elif counts == (0, n) and str(n) in records:  # finished by an earlier run of this script
        row["compute"], row["compute_earlier"] = records[str(n)]["seconds"], True
    else:  # resumed, or finished by something else: no first-run time
        row["compute"], row["compute_earlier"] = None, False
        print(f"  compute: {counts} (done, skipped): not a first run, no compute time", flush=True)
    print(f"  compute: {seconds:.1f} s this time ({done.stderr.strip().splitlines()[-1] if done.stderr else ''})",
          flush=True)

    # 2. rerun
    seconds, done = timed(compute_args)
    if done.returncode != 0 or summary_counts(done.stderr) != (0, n):
        failures.append(f"n={n}: the rerun did not skip every case: {done.stderr.strip()[-500:]}")
    row["rerun"] = seconds
    print(f"  rerun: {seconds:.2f} s", flush=True)

    # 3. verify
    verify_args = ["verify", "--input", str(tiles), "--output", str(maps), "--sample", str(VERIFY_SAMPLE)]
    seconds, done = timed(verify_args)
    row["verify"], row["verify_rc"] = seconds, done.returncode
    if done.returncode != 0:
        failures.append(f"n={n}: verify exited {done.returncode} on the finished folder: "
                        f"{(done.stdout.strip().splitlines() or [''])[:3]} {done.stderr.strip()[-300:]}")
    print(f"  verify: {seconds:.2f} s, exit {done.returncode}: {done.stderr.strip()[-200:]}", flush=True)

    # 4. verify with one map truncated
    victim = map_of(paths[n // 3], tiles, maps)
    seconds, done = truncated_verify(tiles, maps, victim)
    named = [line for line in done.stdout.splitlines() if str(victim.relative_to(maps)) in line]
    row["truncated"], row["truncated_rc"], row["truncated_named"] = seconds, done.returncode, bool(named)
    if done.returncode == 0 or not named:
        failures.append(f"n={n}: verify missed the truncated map {victim} (exit {done.returncode}): "
                        f"{done.stdout.strip()[:500]}")
    print(f"  verify, {victim.name} truncated: {seconds:.2f} s, exit {done.returncode}; "
          f"{named[0] if named else 'NOT NAMED'}", flush=True)

    # 5 and 7. load_map and map_info, in a fresh process
    chosen = [map_of(p, tiles, maps) for p in spread(paths, LOAD_SAMPLE)]
    row.update(load_in_fresh_processes(maps, warm, chosen))
    print(f"  load_map ({row['calls']} maps, medians of {LOAD_PROCESSES} processes): first call "
          f"{row['first_call']:.0f} us ({' '.join(f'{t:.0f}' for t in row['first_calls'])}), first pass "
          f"{row['first_pass']:.0f} us, second {row['second_pass']:.0f} us, mmap {row['mmap']:.0f} us; "
          f"map_info {row['map_info']:.0f} us", flush=True)

    # 6. inspect, median of 5
    one = map_of(paths[n // 2], tiles, maps)
    exits = []

    def inspect() -> None:
        done = subprocess.run([*rwmaps_command(), "inspect", str(one)], capture_output=True, text=True)
        exits.append(done.returncode)
        if done.returncode != 0 and len(exits) == 1:
            failures.append(f"n={n}: rwmaps inspect {one} exited {done.returncode}: {done.stderr.strip()[-300:]}")

    row["inspect"] = median_times({"inspect": inspect}, INSPECT_REPEATS)["inspect"]
    print(f"  inspect: {row['inspect']:.3f} s (median of {INSPECT_REPEATS}, exits {exits})", flush=True)


# ---------------------------------------------------------------------------------------
# the tables


def _f(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_tables(rows: dict[int, dict]) -> None:
    sizes = sorted(rows)
    if not sizes:
        return
    base = rows[sizes[0]]

    def ratio(row: dict, key: str) -> str:
        if row.get(key) is None or not base.get(key):
            return "-"
        return f"{row[key] / base[key]:.2f}"

    print("\n## compute (first run): rwmaps compute --format npy --jobs 2 --classes 0,1,2,3")
    print("| cases | s | ms per case |\n|---|---|---|")
    for n in sizes:
        r = rows[n]
        mark = "*" if r.get("compute_earlier") else ""
        c = r.get("compute")
        print(f"| {n:,} | {_f(c, '.1f')}{mark} | {_f(c and c / n * 1000, '.3f')}{mark} |")
    if any(rows[n].get("compute_earlier") for n in sizes):
        print("(* the first run of an earlier invocation with this --workdir; this one found the folder finished)")

    print("\n## rerun of the finished folder (every case skipped)")
    print("| cases | s | ms per case |\n|---|---|---|")
    for n in sizes:
        r = rows[n].get("rerun")
        print(f"| {n:,} | {_f(r, '.2f')} | {_f(r and r / n * 1000, '.4f')} |")

    print(f"\n## rwmaps verify --sample {VERIFY_SAMPLE} (target at 100,000: verify / compute <= 0.5)")
    print("| cases | s | ms per case | verify / compute | exit |\n|---|---|---|---|---|")
    for n in sizes:
        r = rows[n]
        v, c = r.get("verify"), r.get("compute")
        print(f"| {n:,} | {_f(v, '.2f')} | {_f(v and v / n * 1000, '.3f')} | "
              f"{'-' if v is None or not c else f'{v / c:.2f}'} | {_f(r.get('verify_rc'), 'd')} |")

    print(f"\n## rwmaps verify --sample {VERIFY_SAMPLE}, one map truncated (must exit non-zero and name it)")
    print("| cases | s | ms per case | exit | names the map |\n|---|---|---|---|---|")
    for n in sizes:
        r = rows[n]
        t = r.get("truncated")
        named = r.get("truncated_named")
        print(f"| {n:,} | {_f(t, '.2f')} | {_f(t and t / n * 1000, '.3f')} | {_f(r.get('truncated_rc'), 'd')} | "
              f"{'-' if named is None else 'yes' if named else 'NO'} |")

    print(f"\n## load_map in a fresh process (median of {LOAD_PROCESSES}), {LOAD_SAMPLE} maps spread over the folder (us per call; "
          f"ratio to {sizes[0]:,} cases: target <= 1.2)")
    print("| cases | maps | first call | first pass (median) | second pass (median) | mmap=True (median) | "
          "ratio to the smallest size (first call / first pass / second pass / mmap) |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        r = rows[n]
        print(f"| {n:,} | {_f(r.get('calls'), 'd')} | {_f(r.get('first_call'), '.0f')} | "
              f"{_f(r.get('first_pass'), '.0f')} | {_f(r.get('second_pass'), '.0f')} | {_f(r.get('mmap'), '.0f')} | "
              f"{' / '.join(ratio(r, k) for k in ('first_call', 'first_pass', 'second_pass', 'mmap'))} |")

    print(f"\n## rwmaps inspect <one map> (median of {INSPECT_REPEATS}; ratio to {sizes[0]:,} cases: target <= 1.2)")
    print("| cases | s | ratio to the smallest size |\n|---|---|---|")
    for n in sizes:
        print(f"| {n:,} | {_f(rows[n].get('inspect'), '.3f')} | {ratio(rows[n], 'inspect')} |")

    print("\n## rwmaps_cli.mapfile.map_info, same maps as load_map (us per call, median)")
    print("| cases | us | ratio to the smallest size |\n|---|---|---|")
    for n in sizes:
        print(f"| {n:,} | {_f(rows[n].get('map_info'), '.0f')} | {ratio(rows[n], 'map_info')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 100 and 1,000: a smoke test of the script")
    parser.add_argument("--sizes", default="1000,10000,100000",
                        help="numbers of cases (comma-separated); 100 is always added as the baseline")
    parser.add_argument("--workdir", help="where the tiles and maps go, reused by the next run "
                                          "(default: a temporary folder, removed at the end)")
    parser.add_argument("--load-child", help=argparse.SUPPRESS)
    parser.add_argument("--warm", help=argparse.SUPPRESS)
    parser.add_argument("maps", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        print(json.dumps(load_child(args.load_child, args.warm, args.maps)))
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="rwmaps-bench-folder-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    sizes = sorted({BASELINE, *([100, 1000] if args.quick else [int(n) for n in args.sizes.split(",")])})
    print(f"# bench_folder on {os.cpu_count()} cores, sizes {', '.join(f'{n:,}' for n in sizes)}, "
          f"inputs and maps in {root}; code: {code_version()}", flush=True)
    rows: dict[int, dict] = {}
    failures: list[str] = []
    try:
        warm_tiles = root / "tiles_warm"
        make_tiles(warm_tiles, 2)
        _, done = timed(["compute", "--input", str(warm_tiles), "--output", str(root / "maps_warm"), "--format",
                         "npy", "--jobs", "1", "--classes", ",".join(map(str, TILE_CLASSES)), "--quiet"])
        assert done.returncode == 0, done.stderr
        warm = root / "maps_warm" / "000" / "tile_000000.npy"
        for n in sizes:
            rows[n] = {}
            bench_size(n, root, warm, rows[n], failures)
    except KeyboardInterrupt:
        print("\n(interrupted: the tables hold what was measured)", flush=True)
    finally:
        print_tables({n: r for n, r in rows.items() if r})
        if failures:
            print("\nFAILED CHECKS:\n" + "\n".join(f"- {f}" for f in failures), flush=True)
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
