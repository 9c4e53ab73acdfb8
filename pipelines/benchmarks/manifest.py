"""Benchmark: writing, reading and applying a PrAC manifest at ImageNet's size.

What is measured
----------------
A synthetic manifest of ``--rows`` rows (default 1,281,167: ImageNet-1k's
training split) with every column of ``pracset.manifest.COLUMNS``, filled
with realistic values as ``pracset.build`` hands them to the writer (numpy
arrays; ``content_hash`` a numpy ``U16`` array of random 16-hex strings;
``reason`` a numpy ``str`` array, ~40% of rows selected with a reason among
cet / cep / both, "" elsewhere; 30-epoch statistics; a provenance dict with a
30-epoch history), all generated outside the timed regions. Three stages are
timed, each ``--repeats`` times (default 3), in this order per round:

(1) ``write``: ``pracset.manifest.write_manifest(path, columns, metadata)``
    (validation, casting, zstd Parquet, fsync, atomic rename); the file is
    overwritten every round.
(2) ``read``: ``pracset.manifest.read_manifest(path)`` (Parquet read and the
    full validation).
(3) ``load_subset``: ``pracset.load_subset(manifest, dataset, match="id")``
    where ``manifest`` is a fresh, untimed ``read_manifest`` result (so the
    lazily computed ``selected_ids`` is part of the timing) and ``dataset`` a
    ``datasets.Dataset`` of ``--rows`` rows (an int64 ``label`` and a short
    string ``name`` column, built once from an Arrow table outside the timed
    region). The result's length is checked against the selected count.

Also timed, as information: ``load_subset`` given the manifest's *path*
(read + select, what a user typing ``load_subset("x.parquet", ds)`` pays).

One untimed warm-up round on a 10,000-row manifest runs first (imports,
first-call costs). The median seconds of each stage are printed with every
run and the manifest file size. With ``--profile auto`` (the default) every
stage whose median misses the target is run once more under cProfile and the
top functions by own time and by cumulative time are printed (``--profile
all``: every stage; ``none``: no profiling).

Target: the median of each of write, read and load_subset < 1 s.

Run it
------
    python -m pipelines.benchmarks.manifest
    python -m pipelines.benchmarks.manifest --rows 50000 --repeats 5 --json manifest.json
    python -m pipelines.benchmarks.manifest --smoke       # 2,000 rows, one round

The manifest is written under ``--out-dir`` (default: a temporary folder,
removed afterwards). No data set is read: everything is synthetic.
"""

from __future__ import annotations

import binascii
import cProfile
import io
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import pracset
from pipelines.benchmarks import common
from pracset.fingerprints import fingerprint
from pracset.manifest import COLUMNS, read_manifest, write_manifest

ROWS_IMAGENET = 1_281_167
TARGET_SECONDS = 1.0
EPOCHS = 30
NUM_CLASSES = 1000
SELECTED_FRACTION = 0.4
STAGES = ("write", "read", "load_subset")
SMOKE = {"rows": 2000, "repeats": 1, "profile": "all", "profile_top": 3}


# --------------------------------------------------------------------------- synthetic data
def synthetic_columns(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Every manifest column, shaped like what ``pracset.build`` passes to ``write_manifest``."""
    rng = np.random.default_rng(seed)
    hashes = np.frombuffer(binascii.hexlify(rng.bytes(8 * rows)), dtype="S16").astype("U16")
    labels = rng.integers(0, NUM_CLASSES, rows, dtype=np.int64)
    difficulty = rng.beta(5.0, 1.5, rows)  # per-example chance of being classified correctly
    times_correct = rng.binomial(EPOCHS, difficulty).astype(np.int32)
    presentations = np.full(rows, EPOCHS, dtype=np.int32)
    never = times_correct == 0
    flips = np.minimum(times_correct, EPOCHS - times_correct)
    forgetting = (rng.random(rows) * (flips + 1)).astype(np.int32)
    forgetting[never] = 0
    first = rng.integers(0, EPOCHS, rows).astype(np.int32)
    first = np.minimum(first, EPOCHS - times_correct).astype(np.int32)
    first[never] = -1
    last_correct = rng.random(rows) < difficulty
    last_loss = rng.exponential(0.5, rows).astype(np.float32)
    margin = rng.normal(2.0, 2.0, rows).astype(np.float32)
    cep = rng.binomial(4, 0.1, rows).astype(np.int32)
    score = forgetting.astype(np.float64) + cep
    score[never] = np.inf
    selected = rng.random(rows) < SELECTED_FRACTION
    kind = rng.choice(np.array(["cet", "cep", "both"]), size=rows, p=[0.6, 0.25, 0.15])
    reason = np.where(selected, kind, "").astype(str)
    columns = {
        "example_id": np.arange(rows, dtype=np.int64),
        "content_hash": hashes,
        "label": labels,
        "forgetting_events": forgetting,
        "presentations": presentations,
        "times_correct": times_correct,
        "first_learned_epoch": first,
        "never_learned": never,
        "last_correct": last_correct,
        "last_loss": last_loss,
        "margin": margin,
        "cep_disagreements": cep,
        "score": score,
        "selected": selected,
        "reason": reason,
    }
    assert list(columns) == list(COLUMNS), "the benchmark's columns must follow pracset.manifest.COLUMNS"
    return columns


def synthetic_metadata(rows: int, hashes: np.ndarray) -> dict:
    history = [{"epoch": e + 1, "step": (e + 1) * 10009, "lr": 0.1, "train_loss": 2.0 / (e + 1),
                "train_accuracy": 0.5 + e / 100, "test_accuracy": 0.45 + e / 100, "seconds": 300.0}
               for e in range(EPOCHS)]
    return {
        "dataset": {"name": "imagenet", "split": "train", "size": rows,
                    # the reader recomputes it from the rows' hashes, as for any manifest pracset writes
                    "fingerprint": fingerprint(hashes, tuple(f"n{c:08d}" for c in range(NUM_CLASSES))),
                    "class_names": [f"n{c:08d}" for c in range(NUM_CLASSES)]},
        "selection": {"rule": "prac", "fraction": SELECTED_FRACTION, "never_learned": "keep",
                      "probe_sparsities": [0.5, 0.8, 0.9, 0.95]},
        "provenance": {"command": "build", "arch": "resnet50", "seed": 0, "epochs_run": EPOCHS,
                       "history": history, "pracset_version": pracset.__version__, "device": "cuda"},
    }


def synthetic_dataset(labels: np.ndarray):
    """A ``datasets.Dataset`` in example_id order: the manifest's int64 ``label`` and a short string ``name``.

    ``load_subset(match="id")`` checks every row's label against the manifest's, so they are the manifest's.
    """
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = len(labels)
    labels = pa.array(np.asarray(labels, dtype=np.int64))
    names = pc.binary_join_element_wise("img_", pc.cast(pa.array(np.arange(rows)), pa.string()), "")
    return datasets.Dataset(pa.table({"label": labels, "name": names}))


# --------------------------------------------------------------------------- timing
def run_round(path: Path, columns: dict, metadata: dict, dataset, expected: int) -> dict[str, float]:
    timed = common.timed_result
    seconds = {}
    seconds["write"], _ = timed(None, lambda: write_manifest(path, columns, metadata))
    seconds["read"], manifest = timed(None, lambda: read_manifest(path))
    fresh = read_manifest(path)  # untimed: its selected_ids is still to be computed, inside load_subset
    seconds["load_subset"], subset = timed(None, lambda: pracset.load_subset(fresh, dataset, match="id"))
    if len(subset) != expected or manifest.num_selected != expected:
        raise SystemExit(f"error: load_subset returned {len(subset)} rows, read_manifest {manifest.num_selected}; "
                         f"expected {expected}")
    seconds["load_subset(path)"], subset = timed(None, lambda: pracset.load_subset(path, dataset, match="id"))
    if len(subset) != expected:
        raise SystemExit(f"error: load_subset(path) returned {len(subset)} rows, expected {expected}")
    return seconds


def profile_stage(stage: str, path: Path, columns: dict, metadata: dict, dataset, top: int) -> str:
    """cProfile of one call of ``stage``: the top functions by own time and by cumulative time."""
    if stage == "write":
        call = lambda: write_manifest(path, columns, metadata)  # noqa: E731
    elif stage == "read":
        call = lambda: read_manifest(path)  # noqa: E731
    else:
        fresh = read_manifest(path)
        call = lambda: pracset.load_subset(fresh, dataset, match="id")  # noqa: E731
    profiler = cProfile.Profile()
    profiler.enable()
    call()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__)
    parser.add_argument("--rows", type=int, default=ROWS_IMAGENET,
                        help=f"manifest rows = dataset rows (default {ROWS_IMAGENET:,}: ImageNet-1k train)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; medians are reported (default 3)")
    parser.add_argument("--out-dir", default=None,
                        help="where the manifest is written (default: a temporary folder, removed afterwards)")
    parser.add_argument("--profile", choices=("auto", "all", "none"), default="auto",
                        help="cProfile the stages that miss the target (auto, default), every stage, or none")
    parser.add_argument("--profile-top", type=int, default=20, help="functions listed per profile (default 20)")
    args = common.parse(parser, argv, smoke=SMOKE, positive=("rows", "repeats"))
    import datasets
    import pyarrow

    print(f"python {platform.python_version()}; numpy {np.__version__}; pyarrow {pyarrow.__version__}; "
          f"datasets {datasets.__version__}; pracset {pracset.__version__}; os.cpu_count()={os.cpu_count()}")
    temporary = args.out_dir is None
    out_dir = Path(tempfile.mkdtemp(prefix="pracset-bench-manifest.")) if temporary else Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.parquet"
    try:
        started = time.perf_counter()
        columns = synthetic_columns(args.rows)
        metadata = synthetic_metadata(args.rows, columns["content_hash"])
        dataset = synthetic_dataset(columns["label"])
        expected = int(columns["selected"].sum())
        print(f"{args.rows:,} rows, {expected:,} selected ({expected / args.rows:.1%}); synthetic data and "
              f"datasets.Dataset built in {time.perf_counter() - started:.1f} s (untimed)")

        # warm-up: imports and first-call costs, on a small manifest
        small = min(args.rows, 10_000)
        small_columns = synthetic_columns(small, seed=2)
        run_round(out_dir / "warmup.parquet", small_columns, synthetic_metadata(small, small_columns["content_hash"]), synthetic_dataset(small_columns["label"]),
                  int(small_columns["selected"].sum()))
        (out_dir / "warmup.parquet").unlink()

        times: dict[str, list[float]] = {}
        for r in range(args.repeats):
            seconds = run_round(path, columns, metadata, dataset, expected)
            for stage, value in seconds.items():
                times.setdefault(stage, []).append(value)
            print(f"  round {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v:.3f}s" for k, v in seconds.items()),
                  flush=True)
        size = path.stat().st_size
        median = common.medians(times)
        common.print_times("stage", times, args.rows, unit="rows/s",
                           notes={s: "   (information: read + select)" for s in times if s not in STAGES})
        print(f"manifest file size: {size:,} bytes ({size / 2**20:.1f} MiB, {size / args.rows:.1f} bytes/row)")
        checks = [common.Check(stage, median[stage], "<", TARGET_SECONDS, unit=" s", digits=3) for stage in STAGES]

        profiles = {}
        to_profile = [c.name for c in checks if args.profile == "all" or (args.profile == "auto" and not c.passed)]
        for stage in to_profile:
            text = profile_stage(stage, path, columns, metadata, dataset, args.profile_top)
            profiles[stage] = text
            print()
            print(f"==== cProfile of one {stage} ({args.rows:,} rows) ====")
            print(text)

        report = {
            "rows": args.rows, "selected": expected, "repeats": args.repeats, "seconds": times,
            "median_seconds": median, "file_bytes": size, "target_seconds": TARGET_SECONDS,
            "profiles": profiles or None,
            "versions": {"python": platform.python_version(), "numpy": np.__version__,
                         "pyarrow": pyarrow.__version__, "datasets": datasets.__version__},
        }
        return common.finish(args, report, checks)
    finally:
        if temporary:
            shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
