"""``python -m benchmark {train,...}``: the command line of the suite.

User mistakes (:class:`~benchmark.errors.UserError`) print one line on stderr and exit with
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator

from .config import DEVICE, MAX_THREADS
from .errors import EXIT_USER_ERROR, ConfigError, UserError, validation_error
from .interrupts import EXIT_INTERRUPTED, stop_on_signals


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import run

    config = load_config(args.config, args.overrides)
    if args.tuned:  # the values of the family's study of this method, alpha and graph
        from .config import parse_overrides
        from .grid import tuned_config

        config = tuned_config(config, args.tuned, parse_overrides(args.overrides))
    args.run_config = config  # what an interrupt left depends on it (_after_interrupt)
    metrics = run(config, args.out, restart=args.restart)
    final = metrics.final
    summary = f"{metrics.status}: wall {metrics.wall_time_s:.1f}s"
    if final is not None:
        summary += (f", consensus acc {final.consensus_acc:.2f}%, local acc "
                    f"{final.local_acc_mean:.2f} ± {final.local_acc_std:.2f}%")
    if not config.distributed or os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 speaks
        print(summary)
    return 0


def _tune(args: argparse.Namespace) -> int:
    from .io import check_writable_dir
    from .tuning.spec import load_tuning
    from .tuning.study import study_dir, tune

    # a bad --study path is refused before anything is built: the journal's folder and the
    # outputs' folder beside it (best.json...) can be written
    check_writable_dir(study_dir(args.study), "--study")
    config, spec = load_tuning(args.config, args.overrides)
    if config.tracking:  # a dead server: one line now, before the journal exists
        from .tracking import check_store

        check_store()
    result = tune(config, spec, args.study, trials=args.trials)
    best = result.best
    values = ", ".join(f"{k}={v:.4g}" for k, v in best["values"].items())
    print(f"{result.study.study_name}: {best['n_complete']} complete, {best['n_pruned']} pruned, "
          f"{best['n_failed']} failed; best {values}: validation consensus acc "
          f"{best['value']:.2f}% -> {result.out_dir / 'best.json'}")
    return 0


def _tune_table(args: argparse.Namespace) -> int:
    from .tuning.outputs import write_best_table

    write_best_table(_table_inputs(args.best, args.out), args.out)
    return 0


def _table_inputs(paths: list[str], out: str) -> list:
    """tune-table's files (quoted patterns expanded, one matching nothing refused) after
    checking that ``--out`` (a path without suffix) can be written: one line each."""
    from pathlib import Path

    from .report.load import check_out_dir, expand

    check_out_dir(Path(out).parent)
    return expand(paths, "tune-table")


def _report(args: argparse.Namespace) -> int:
    from .report import build_report

    written = build_report(args.metrics, args.out, family=args.family,
                           skip_invalid=args.skip_invalid)
    print(f"wrote {len(written)} files: {written['table_md']} and the rest under {args.out}/")
    return 0


def _topology(args: argparse.Namespace) -> int:
    from .config import build_config, parse_overrides
    from .stability import describe
    from .topology import FIXED_SIZES

    options = parse_overrides(args.overrides)
    options.setdefault("n_agents", FIXED_SIZES.get(args.name, 16))
    # validated as run options (unknown keys, bad sizes: one line), stability not enforced here
    c = build_config({"topology": args.name, **options, "allow_unstable": True})
    print(describe(c.graph(), momentum=c.momentum))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from .data.fetch import fetch

    print(fetch(args.item, args.data_dir))
    return 0


def _families(args: argparse.Namespace) -> list:
    from .grid import load_families
    from .names import check_name

    for name in args.family:
        check_name("--family", name)
    families = load_families(args.config_dir)
    unknown = [name for name in args.family if name not in families]
    if unknown:
        from .errors import ConfigError

        raise ConfigError("family", unknown[0], list(families))
    return [families[name] for name in args.family] if args.family else list(families.values())


class _Flags(BaseModel):
    """A command's numeric flags, validated as run options are: ``--gpus: invalid value -2;
    allowed: greater than or equal to 1``, before any work."""

    model_config = ConfigDict(allow_inf_nan=False,
                              alias_generator=lambda name: "--" + name.replace("_", "-"))

    @classmethod
    def check(cls, args: argparse.Namespace) -> None:
        flags = {cls.model_fields[k].alias: v for k, v in vars(args).items()
                 if k in cls.model_fields}
        try:
            cls.model_validate(flags)
        except ValidationError as err:
            raise validation_error(err, cls) from None


class _PlanFlags(_Flags):
    gpus: int = Field(ge=1)
    slots: list[PositiveInt] | None


class _CalibrateFlags(_Flags):
    iterations: int = Field(ge=1)
    warmup: int = Field(ge=0)
    agents: list[PositiveInt] | None
    device: str | None
    threads: int | None = Field(ge=1, le=MAX_THREADS)
    concurrency: list[PositiveInt] | None
    concurrency_seconds: float = Field(gt=0)

    @field_validator("device")
    @classmethod
    def _device(cls, device: str | None) -> str | None:
        if device is not None and not DEVICE.fullmatch(device):
            raise ConfigError("--device", device, "auto, cpu, cuda, cuda:N (N a GPU index) or mps")
        return device


def _calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate
    from .config import check_device
    from .io import check_writable_file

    _CalibrateFlags.check(args)
    if args.device:
        check_device(args.device)
    check_writable_file(args.out, "--out")  # before timing anything
    cal = calibrate(_families(args), args.out, iterations=args.iterations, warmup=args.warmup,
                    agents=set(args.agents) if args.agents else None, device=args.device,
                    threads=args.threads,
                    concurrency_ks=args.concurrency, concurrency_s=args.concurrency_seconds,
                    time_each=not args.only_concurrency)
    print(f"{args.out}: {len(cal.entries)} workloads timed on {cal.device} ({cal.device_name})"
          + (f"; concurrency speed-ups {cal.concurrency}" if cal.concurrency else ""))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .plan import Calibration, describe, plan_family, wall_hours

    _PlanFlags.check(args)
    family = _families(args)[0]
    calibration = Calibration.load(args.calibration) if Path(args.calibration).exists() else None
    plan = plan_family(family, calibration)
    slots = args.slots or [family.base.gpu_slots_per_device or 1]
    print("\n".join(describe(family.name, plan, calibration, args.calibration, args.gpus, slots)))
    if args.json:  # one machine-readable line (benchmarks/gpu_check.sh collects it)
        import json
        from dataclasses import asdict

        walls = {}
        if calibration and plan.device_hours is not None:
            walls = {s: wall_hours(plan.device_hours, args.gpus, s, calibration.concurrency)
                     for s in slots}
        print("PLAN " + json.dumps({"family": family.name, "gpus": args.gpus,
                                    "calibrated_on": calibration and calibration.device_name,
                                    "wall_hours_by_slots": walls, **asdict(plan)}))
    return 0


def _ints(text: str) -> list[int]:
    """``1,2,4`` -> [1, 2, 4] (argparse type)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers separated by commas"
                                         ) from None


class _Parser(argparse.ArgumentParser):
    """argparse with its complaints as one line, like every other user error (exit code 2),
    and an epilog that may be written when its help is shown (``epilog_from``): the
    registry's methods and options, whose reading imports any plugin module."""

    def __init__(self, *args, epilog_from=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epilog_from = epilog_from

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        if self.epilog_from is not None:
            try:
                self.epilog = self.epilog_from()
            except UserError as err:
                self.epilog = f"(the algorithm registry cannot be read: {err})"
        return super().format_help()


def _registry_help() -> str:
    """Every method and every algorithm's options, as the registry declares them."""
    import textwrap

    from .algorithms import registered
    from .methods import METHODS

    lines = ["methods (method=NAME; benchmark/methods.py):"]
    lines += [f"  {name:<14}{method.description}" for name, method in METHODS.items()]
    lines.append("algorithm options (key=value; each is read by the algorithm that declares "
                 "it, held at its default otherwise):")
    for cls in registered().values():
        for name, field in cls.options_type.model_fields.items():
            text = f"  {name:<14}{cls.name}, default {field.default!r}: {field.description or ''}"
            lines.append(textwrap.fill(text.rstrip(), 100, subsequent_indent=" " * 16))
    return "\n".join(lines)


def build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's own parser, by name."""
    parser = _Parser(prog="benchmark", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = sub.add_parser("train", help="train one run and write metrics.json",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog_from=_registry_help)
    train.add_argument("--config", help="YAML file of run options (see config/)")
    train.add_argument("--out", required=True, help="output folder for metrics.json")
    train.add_argument("--restart", action="store_true",
                       help="discard the checkpoint / metrics.json in --out and start over "
                       "(default: resume from the checkpoint; a finished run is a no-op)")
    train.add_argument("--tuned", metavar="BEST_JSON",
                       help="the tuned values of a study's best.json (studies/<family>/<method>/"
                       "<graph>/alpha<a>/best.json; must match the family, method, alpha and "
                       "graph)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="option overrides")
    train.set_defaults(func=_train)
    tune = sub.add_parser("tune", help="Optuna study of one method's hyperparameters at one alpha "
                          "on one graph")
    tune.add_argument("--config", help="family file (run: + tuning:) or run options (YAML)")
    tune.add_argument("--study", required=True,
                      help="journal file, studies/<family>/<method>/<graph>/alpha<a>.journal")
    tune.add_argument("--trials", type=int, help="total trial budget (default: tuning.trials)")
    tune.add_argument("overrides", nargs="*", metavar="key=value",
                      help="run option or tuning.<key> overrides, e.g. method=qgm alpha=0.1 "
                      "tuning.epochs=5")
    tune.set_defaults(func=_tune)
    table = sub.add_parser("tune-table",
                           help="table of best values per method, graph and alpha (best.json "
                           "files)")
    table.add_argument("best", nargs="+",
                       help="studies/<family>/<method>/<graph>/alpha<a>/best.json")
    table.add_argument("--out", required=True, help="output path without suffix (.csv and .md)")
    table.set_defaults(func=_tune_table)
    report = sub.add_parser("report", help="tables and figures of a family from metrics.json files")
    report.add_argument("metrics", nargs="+", help="metrics.json files or folders holding them")
    report.add_argument("--family", help="name used in the output file names "
                        "(default: the family of the results)")
    report.add_argument("--out", default="reports", help="output folder (default: reports)")
    report.add_argument("--skip-invalid", action="store_true",
                        help="leave out (with a warning) files that are not a run's metrics.json "
                        "and second copies of a run, instead of stopping")
    report.set_defaults(func=_report)
    topology = sub.add_parser("topology", help="a graph's degree, diameter, spectral gaps and "
                              "the gossip step sizes (gamma) each algorithm is stable with")
    topology.add_argument("name", help="topology name (ring, torus, paper-dyck, ...)")
    topology.add_argument("overrides", nargs="*", metavar="key=value",
                          help="n_agents, torus_rows, degree, seed, momentum")
    topology.set_defaults(func=_topology)
    from .data.fetch import ITEMS

    fetch = sub.add_parser("fetch", help="download (mnist1d: generate) a dataset into data_dir "
                           "once, atomically (the workflow's fetch_data job)")
    fetch.add_argument("item", choices=ITEMS, help="dataset (imagenette: its source size)")
    fetch.add_argument("--data-dir", default="data", help="the runs' data_dir (default: data)")
    fetch.set_defaults(func=_fetch)
    calibrate = sub.add_parser("calibrate", help="time each workload of the families on this "
                               "machine's device -> calibration.json (for `plan`)")
    calibrate.add_argument("--family", action="append", default=[],
                           help="family to calibrate (repeatable; default: every family)")
    calibrate.add_argument("--config-dir", default="config", help="family files (default: config)")
    calibrate.add_argument("--out", default="calibration.json")
    calibrate.add_argument("--iterations", type=int, default=3, help="timed iterations each")
    calibrate.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    calibrate.add_argument("--agents", type=_ints, metavar="N,N",
                           help="only these agent counts (plan scales the others linearly)")
    calibrate.add_argument("--device", help="cpu, cuda... (default: the families' device)")
    calibrate.add_argument("--threads", type=int, help="torch CPU threads (default: the "
                           "families' threads)")
    calibrate.add_argument("--concurrency", type=_ints, metavar="K,K",
                           help="also measure k runs sharing the device, e.g. 1,2,4,8")
    calibrate.add_argument("--concurrency-seconds", type=float, default=10.0)
    calibrate.add_argument("--only-concurrency", action="store_true",
                           help="measure the concurrency only (keep the file's timings)")
    calibrate.set_defaults(func=_calibrate)
    plan = sub.add_parser("plan", help="runs, iterations, device-hours and wall time of a family")
    plan.add_argument("family", nargs=1, help="family name (config/<name>.yaml)")
    plan.add_argument("--config-dir", default="config", help="family files (default: config)")
    plan.add_argument("--calibration", default="calibration.json")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs the grid runs on (default 1)")
    plan.add_argument("--slots", type=_ints, metavar="K,K", help="runs per GPU, one wall time "
                      "each (default: the family's gpu_slots_per_device, else 1)")
    plan.add_argument("--json", action="store_true", help="also print the figures as one "
                      "JSON line (prefixed PLAN)")
    plan.set_defaults(func=_plan)
    return parser, sub.choices


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags and ``key=value`` words in any order, for every subcommand
    (``tune --study S method=ccl --trials 4 tuning.epochs=3``): argparse's intermixed parsing,
    run on the subcommand's own parser since it does not support a subparsers action."""
    parser, commands = build_parsers()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in commands:  # no or an unknown subcommand, -h: argparse says it
        return parser.parse_args(argv)
    args = commands[argv[0]].parse_intermixed_args(argv[1:])
    args.command = argv[0]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Snakemake and schedulers stop jobs with SIGTERM: unwind like Ctrl-C, so context managers
    # run (MLflow marks the run KILLED, the lock is released), within a second (interrupts.py)
    with stop_on_signals(lambda: _after_interrupt(args)):
        try:
            return args.func(args)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print(f"interrupted: {_after_interrupt(args)}", file=sys.stderr)
            return EXIT_INTERRUPTED


def _after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command left: a finished run, a resume hint when an epoch was saved,
    or nothing."""
    if args.command == "train":
        from pathlib import Path

        from .checkpoint import CHECKPOINT, METRICS, RunDir

        config = getattr(args, "run_config", None)
        try:
            done = RunDir(args.out, config).finished() if config is not None else None
        except UserError:  # not a finished run of this config
            done = None
        if done is not None:  # interrupted after metrics.json was written, or while logging
            record = ("; run the same command again to complete its MLflow record"
                      if config.tracking else "")
            return f"the run had finished: {Path(args.out) / METRICS} is complete{record}"
        if args.out and (Path(args.out) / CHECKPOINT).is_file():
            return "run the same command again to resume from the last completed epoch"
        return "no epoch was saved; run the same command again to start over"
    if args.command == "tune":
        return "run the same command again to resume the study"
    return "nothing to resume"


if __name__ == "__main__":
    sys.exit(main())
