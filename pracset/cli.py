"""The ``pracset`` command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import warnings
import os
import select
import sys
from typing import NoReturn, Sequence

from tqdm.contrib.logging import logging_redirect_tqdm

from pracset import __version__
from pracset.build import BuildConfig, build_manifest
from pracset.config import add_arguments, from_dict
from pracset.data import SOURCES, DataConfig
from pracset.device import MAX_THREADS, resolve_device, set_threads
from pracset.distributed import init_from_env, is_main, leave
from pracset.errors import ConfigError, DegenerateTrainingWarning, PracsetError
from pracset.manifest import read_manifest
from pracset.manifest.describe import format_summary
from pracset.models import MODELS, torchvision_names
from pracset.pipeline import load_pipeline, load_toml, run_pipeline
from pracset.runs import PipelineLayout
from pracset.selection import SelectionConfig
from pracset.sparse.early_bird import EarlyBirdConfig
from pracset.export import EXPORT_FORMATS, export_ticket
from pracset.tickets import METHOD_SECTIONS, TICKET_METHODS, IMPConfig, find_tickets
from pracset.train import TrainConfig
from pracset.train.run import train_dense

log = logging.getLogger("pracset")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2, with no abbreviated flags."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _cmd_datasets(args: argparse.Namespace) -> int:
    width = max(len(n) for n in SOURCES.names())
    for name, source in SOURCES.items():
        print(f"{name:<{width}}  {source.description}")
        if args.verbose:
            print(f"{'':<{width}}  example_id: {source.id_order}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    width = max(len(n) for n in MODELS.names())
    for name, entry in MODELS.items():
        print(f"{name:<{width}}  {entry.description}")
    names = torchvision_names()
    print(f"\nand any of torchvision's {len(names)} classification models as torchvision/NAME, e.g. "
          f"torchvision/{names[0]}" + ("" if not args.verbose else ":\n  " + ", ".join(names)))
    return 0


class _Settings:
    """The configs of a command: a ``--config`` TOML file's tables, with the flags given on top of them."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.file = getattr(args, "config", None)
        self.raw = load_toml(self.file) if self.file else {}
        self.arch = args.arch or self.raw.get("arch")
        if not self.arch:
            raise ConfigError("give --arch, or an arch in the --config file")
        self.weights = getattr(args, "weights", None) or self.raw.get("weights")
        if self.weights is not None and not isinstance(self.weights, str):
            raise ConfigError(f"{self.file}: weights must be a string, got {self.weights!r}")

    def get(self, cls, section: str, prefix: str = "", **overrides):
        """``cls`` from the file's ``[section]`` table and the flags that were given (the flags win)."""
        table = self.raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{self.file}: [{section}] must be a table")
        dest = (lambda name: f"{prefix.replace('-', '_')}_{name}") if prefix else (lambda name: name)
        given = {f.name: getattr(self.args, dest(f.name), None) for f in dataclasses.fields(cls) if f.init}
        values = {**table, **{k: v for k, v in given.items() if v is not None},
                  **{k: v for k, v in overrides.items() if v is not None}}
        try:
            return from_dict(cls, values, where=section if self.file else "")
        except ConfigError as exc:
            raise ConfigError(f"{self.file}: {exc}" if self.file else str(exc)) from None


def _cmd_train(args: argparse.Namespace) -> int:
    settings = _Settings(args)
    args.arch = settings.arch
    data = settings.get(DataConfig, "data")
    config = settings.get(TrainConfig, "train")
    device = resolve_device(args.device)
    result = train_dense(data, args.arch, config, args.out, device=device, resume=args.resume,
                         progress=not args.quiet and sys.stderr.isatty(), tensorboard=args.tensorboard,
                         weights=settings.weights)
    final = result.metrics
    total = result.ledger.total()
    what = "already trained" if result.skipped else "trained"
    accuracy = final.get("test_accuracy")
    print(f"{what} {args.arch} on {data.name}: test accuracy {accuracy:.4f} after {final['epoch']} epochs, "
          f"{total.train_iterations} iterations; results in {result.out_dir}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    settings = _Settings(args)
    result = build_manifest(
        settings.get(DataConfig, "data"), settings.arch, args.out, train=settings.get(TrainConfig, "train"),
        build=settings.get(BuildConfig, "build"), selection=settings.get(SelectionConfig, "selection"),
        early_bird=settings.get(EarlyBirdConfig, "early_bird", prefix="early-bird"), device=resolve_device(args.device),
        resume=args.resume, progress=not args.quiet and sys.stderr.isatty(), tensorboard=args.tensorboard,
        weights=settings.weights)
    s = result.summary
    what = "already built" if result.skipped else "built"
    accuracy = s["provenance"].get("dense_test_accuracy")
    trained = (f"dense {s['provenance']['arch']} test accuracy {accuracy:.4f}" if accuracy is not None
               else "nothing trained")
    print(f"{what} {result.manifest_path}: {s['selected']} of {s['size']} examples selected "
          f"({100 * s['fraction']:.1f}%, rule {s['selection']['rule']}); {trained}; "
          f"{s['provenance']['iterations']} training iterations")
    return 0


def _cmd_ticket(args: argparse.Namespace) -> int:
    settings = _Settings(args)
    imp = settings.get(IMPConfig, "imp")
    # A method's own settings are read only when that method is asked for; without any of its flags or its table
    # it takes its default at the target sparsity (GraNet's initial sparsity then stays below it).
    runner, own = TICKET_METHODS.get(args.method), {}
    section = runner.section
    if section and (section in settings.raw or any(v is not None for k, v in vars(args).items()
                                                   if k.startswith(section + "_"))):
        sparsity = imp.sparsity if "sparsity" in {f.name for f in dataclasses.fields(runner.config_class)} else None
        own[section] = settings.get(runner.config_class, section, prefix=section, sparsity=sparsity)
    summary = find_tickets(args.method, settings.get(DataConfig, "data"), settings.arch, args.out,
                           train=settings.get(TrainConfig, "train"), imp=imp, **own,
                           early_bird=settings.get(EarlyBirdConfig, "early_bird", prefix="early-bird"),
                           selection=settings.get(SelectionConfig, "selection"), manifest=args.manifest,
                           device=resolve_device(args.device), resume=args.resume,
                           progress=not args.quiet and sys.stderr.isatty(), tensorboard=args.tensorboard,
                           weights=settings.weights)
    print(format_tickets(summary))
    return 0


def format_tickets(summary: dict) -> str:
    """The tickets of a run as a small table, with the search and evaluation costs apart."""
    lines = [f"{'stage':<12} {'sparsity':>8} {'test acc':>8} {'iters':>7}  controls / verdict"]
    for row in summary["tickets"]:
        extra = ""
        if "controls" in row:
            c, v = row["controls"], row["verdict"]
            extra = (f"reinit {c['reinit']:.4f}, random mask {c['random_mask']:.4f}; "
                     + ("winning ticket" if v["winning_ticket"] else
                        ("matches dense" if v["matches_dense"] else "below dense")
                        + (", beats controls" if v["beats_controls"] else ", does not beat controls")))
        elif row.get("evaluated") is False:
            extra = "mask only (not trained on the full split; --evaluate every-round trains it)"
        iterations = row.get("round_iterations", row.get("iterations"))
        accuracy = "-" if row["test_accuracy"] is None else f"{row['test_accuracy']:.4f}"
        lines.append(f"{row['stage']:<12} {row['sparsity']:>8.4f} {accuracy:>8} {iterations or 0:>7}  {extra}")
    costs = summary.get("costs") or {}
    total = summary["ledger"]["total"]
    what = "already found" if summary.get("skipped") else "found"
    if costs:
        lines.append(f"search {costs['search']} + evaluation {costs['evaluation']} = {costs['search'] + costs['evaluation']} "
                     f"training iterations (probe forward passes: {costs['probe_examples']} examples)")
    lines.append(f"{what} {summary['method']} tickets for {summary['arch']} on {summary['data']}: "
                 f"{total['train_iterations']} training iterations in all; mask {summary['mask']}")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.pipeline, data_dir=args.data_dir, overrides=args.set or ())
    out = args.out or f"runs/{pipeline.name}"
    report = run_pipeline(pipeline, out, device=resolve_device(args.device), resume=args.resume,
                          progress=not args.quiet and sys.stderr.isatty(), tensorboard=args.tensorboard)
    saved = (report.get("iterations_saved") or {}).get("at")
    m = report["manifest"]
    print(f"pipeline {pipeline.name}: PrAC set {m['selected']} of {m['size']} examples "
          f"({100 * m['fraction']:.1f}%)" + (f"; iterations saved {100 * saved['saved']:.1f}% at "
                                             f"{100 * saved['sparsity']:.1f}% sparsity" if saved else "")
          + (f" ({'; '.join(report['caveats'])})" if report.get("caveats") else ""))
    print(f"report: {PipelineLayout(out).report_md}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    summary = read_manifest(args.manifest).summary()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(format_summary(summary))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    out = export_ticket(args.run, args.out, format=args.format, sparsity=args.sparsity)
    record = json.loads((out / "ticket.json").read_text())
    print(f"exported {record['stage']} of {args.run} (sparsity {record['sparsity']:.4f}) as {args.format} to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pracset`` argument parser: one subcommand per task, flags generated from the configs."""
    parser = _Parser(prog="pracset", description="Find lottery tickets on less data with Pruning-Aware Critical sets.")
    parser.add_argument("--version", action="version", version=f"pracset {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and the final result")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="more detail: a log line per epoch of every stage (by default one line per stage)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("datasets", parents=[common], help="list the data sets", description="List the data sources.")
    p.set_defaults(func=_cmd_datasets)
    p = sub.add_parser("models", parents=[common], help="list the architectures", description="List the architectures.")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", parents=[common], help="train a dense network and evaluate it",
                       description="Train a dense network on a data set and evaluate it on the test split.")
    _run_arguments(p, out_metavar="DIR", out_help="output directory of the run")
    add_arguments(p, DataConfig)
    add_arguments(p, TrainConfig)
    _positive_counts(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("build", parents=[common], help="build a PrAC manifest (dense training, probe, selection)",
                       description="Train a dense network while recording per-example statistics, probe which examples "
                                   "pruned copies of it forget, select the PrAC set (or a baseline) and write it as a "
                                   "Parquet manifest, with the full statistics next to it.")
    _run_arguments(p, out_metavar="FILE.parquet", out_help="the manifest to write")
    add_arguments(p, DataConfig)
    add_arguments(p, TrainConfig)
    add_arguments(p, BuildConfig)
    add_arguments(p, EarlyBirdConfig, prefix="early-bird")
    add_arguments(p, SelectionConfig)
    _positive_counts(p)
    p.set_defaults(func=_cmd_build)

    methods = ", ".join(TICKET_METHODS.names())
    p = sub.add_parser("ticket", parents=[common], help=f"find a sparse ticket ({methods})",
                       description=f"Find a ticket with one of the methods ({methods}), on the full training split "
                                   "or on a manifest's subset, and evaluate it on the test split.")
    p.add_argument("--method", required=True, choices=TICKET_METHODS.names(), help="how to find it")
    _run_arguments(p, out_metavar="DIR", out_help="output directory")
    p.add_argument("--manifest", metavar="FILE.parquet", help="train on this manifest's selected examples "
                   "(imp: every round and its controls on the set, IMP on a subset; prac-imp: a fixed PrAC set "
                   "built elsewhere, e.g. on another architecture, its tickets on the full split; rigl, granet: "
                   "the one run on the set)")
    add_arguments(p, DataConfig)
    add_arguments(p, TrainConfig)
    add_arguments(p, IMPConfig)
    add_arguments(p, EarlyBirdConfig, prefix="early-bird")
    add_arguments(p, SelectionConfig)
    for section, runner in METHOD_SECTIONS.items():  # each method's own flags: --SECTION-FIELD
        add_arguments(p, runner.config_class, exclude=("sparsity",), prefix=section)
    _positive_counts(p)
    p.set_defaults(func=_cmd_ticket)

    p = sub.add_parser("run", parents=[common], help="run a TOML pipeline and write its report",
                       description="Run a whole experiment from a TOML pipeline (build the manifest, find tickets, "
                                   "transfer the set, report). Finished stages are not redone.")
    p.add_argument("pipeline", metavar="PIPELINE.toml", help="the pipeline file (see pipelines/)")
    _run_arguments(p, out_metavar="DIR", out_help="output directory (default: runs/NAME)", arch=False,
                   out_required=False)
    p.add_argument("--data-dir", metavar="DIR", help="directory holding the data set (overrides the pipeline's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one setting of the file, e.g. --set train.lr=0.05 --set seeds=[0,1] (repeatable)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("inspect", parents=[common], help="summarise a manifest",
                       description="Print a manifest's size, fraction kept, per-class counts, reasons and provenance.")
    p.add_argument("manifest", metavar="MANIFEST", help="a .parquet manifest")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("export", parents=[common], help="write a ticket's mask, trained and rewind weights",
                       description="Write one ticket of a ticket run for other tools: its mask, trained weights and "
                                   "rewind weights (torch.nn.utils.prune state dicts, or safetensors).")
    p.add_argument("run", metavar="RUN", help="a directory pracset ticket wrote")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="torch-prune", help="the files' format")
    p.add_argument("--sparsity", type=float, help="the ticket nearest this sparsity (default: the final one)")
    p.add_argument("--out", required=True, metavar="DIR", help="a new or empty folder")
    p.set_defaults(func=_cmd_export)
    return parser


def _run_arguments(parser: argparse.ArgumentParser, *, out_metavar: str, out_help: str, arch: bool = True,
                   out_required: bool = True) -> None:
    """The flags every command that trains shares: --arch, --out, --device and --resume."""
    if arch:
        parser.add_argument("--arch", metavar="NAME", help="architecture (see `pracset models`; or `arch` in --config)")
        parser.add_argument("--weights", metavar="NAME", help="start a torchvision/NAME model from these "
                            "pretrained weights (e.g. DEFAULT, IMAGENET1K_V1; needs internet or torch's cache, whose file "
                            "must match the sha256 torchvision publishes in its name); the "
                            "random re-initialisation control still draws random weights")
        tables = ", ".join(f"[{t}]" for t in ("data", "train", "build", "selection", "imp", "early_bird",
                                                 *METHOD_SECTIONS))
        parser.add_argument("--config", metavar="FILE.toml", help=f"read the settings from a TOML file's tables "
                            f"({tables}; a pipeline file works); flags given on the command line win")
    parser.add_argument("--out", required=out_required, metavar=out_metavar, help=out_help)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help=f"CPU threads for torch (default: one per core; at most {MAX_THREADS}); recorded in "
                             "each run, as results on the CPU depend on it")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--tensorboard", action="store_true",
                        help="write TensorBoard scalars of every training stage while it runs (losses, accuracies, "
                             "learning rate, sparsity, examples per epoch); needs pracset[tensorboard]")


def _positive_counts(parser: argparse.ArgumentParser) -> None:
    """Counts are validated by argparse itself, so a bad one is a usage error."""
    for action in parser._actions:
        if action.dest in ("epochs", "batch_size", "eval_every", "size", "early_bird_queue_length", "rounds",
                           "rigl_delta_t", "granet_delta_t"):
            action.type = _positive_int


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports an error on the writing end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a captured stdout)
        return False


class _AtLeast(logging.Filter):
    """Lets through records at ``level`` or above (the console's level, which the CLI sets)."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pracset`` command line; returns the exit code (2 for bad input, with one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The console: INFO, a line per stage; -v adds pracset's per-epoch lines (DEBUG, never other libraries'); -q
    # warnings. pracset's logger lets everything through, for the run directory's pracset.log.
    # A filter, not a handler level: tqdm's logging_redirect_tqdm copies a handler's filters, not its level.
    level, before = logging.WARNING if args.quiet else logging.INFO, set(logging.getLogger().handlers)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    console = _AtLeast(logging.DEBUG if args.verbose and not args.quiet else level)
    for handler in set(logging.getLogger().handlers) - before:  # the console handler made here, not a host's
        handler.addFilter(console)
    log.setLevel(logging.DEBUG)
    # The log already says each of these, and the results repeat them: Python's copy would say it a third time.
    warnings.filterwarnings("ignore", category=DegenerateTrainingWarning)
    quiet_rank = False
    if os.environ.get("WORLD_SIZE", "1") != "1":  # under torchrun: join the process group
        if init_from_env() and not is_main():
            logging.getLogger().setLevel(logging.ERROR)  # rank 0 logs the progress and the warnings
            log.setLevel(logging.ERROR)
            console.level = logging.ERROR
            quiet_rank = True  # and prints the results: every rank computes them alike
    try:
        # With progress bars on, log lines go through tqdm so that they do not overwrite the bar.
        set_threads(getattr(args, "threads", None))
        with logging_redirect_tqdm() if sys.stderr.isatty() and not args.quiet else contextlib.nullcontext(), \
                contextlib.redirect_stdout(io.StringIO()) if quiet_rank else contextlib.nullcontext():
            code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe (`pracset inspect | head`) is answered below
        leave(code)  # under torchrun: every rank ends together, past the process group's teardown
        return code
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # another pipe or socket broke: a real failure, not the user's `| head`
        # The reader of our output went away (as `head` does): stop quietly, as Unix tools do. Point
        # stdout at /dev/null so that the interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe
    except PracsetError as exc:
        print(f"pracset {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only output, disk full, permission denied: the system's words, in one line
        where = f": {exc.filename}" if exc.filename else ""
        print(f"pracset {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pracset {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
