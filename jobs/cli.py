"""The command line every job shares: ``python -m jobs.<name> --config PRESET key.sub=value ...``.

``--help`` lists the options of the sections the job reads, with their types, defaults and
documentation (taken from the config dataclasses). A user error (a bad option, a missing input, a
mismatched checkpoint) prints one line naming the option, and the job exits with status 2;
``--debug`` shows the traceback instead. Real crashes keep their tracebacks.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from animatediff.config import Config, ConfigError, load_config, option_docs
from jobs.cluster import HOME_ENV, anchor_results, results_home, submitted_job

EXIT_USAGE = 2


class UserError(ConfigError):
    """Something the user can fix (an input that does not exist, a model that cannot be
    reached); the message names the option and the fix."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "your input is wrong", not "the program is broken"."""
    from animatediff.checkpoints import CheckpointError
    from animatediff.lora import LoraError
    from pipelines.fingerprint import FingerprintMismatchError

    return (ConfigError, CheckpointError, LoraError, FingerprintMismatchError)


@dataclass(frozen=True)
class Job:
    """How a job presents itself on the command line."""

    name: str
    """``python -m jobs.<name>``."""
    summary: str
    """One line: what the job does."""
    examples: str
    """Example command lines of this job."""
    sections: tuple[str, ...]
    """Config sections (dotted prefixes) whose options ``--help`` lists."""


def options_help(sections: Sequence[str]) -> str:
    """The documented options under ``sections``, for ``--help``."""
    lines = []
    for option in option_docs(Config):
        if not any(option.name == s or option.name.startswith(s + ".") for s in sections):
            continue
        lines.append(f"  {option.name} ({option.type}, default: {option.default!r})")
        doc = " ".join(option.doc.split())
        lines += textwrap.wrap(doc, width=92, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def parser(job: Job) -> argparse.ArgumentParser:
    """The job's argument parser: ``--config``, ``--debug`` and dotted overrides."""
    epilog = (
        f"examples:\n{textwrap.indent(job.examples.strip(), '  ')}\n\n"
        f"options (override any as key=value; YAML values, e.g. train.lr=1e-4):\n"
        f"{options_help(job.sections)}"
    )
    result = argparse.ArgumentParser(
        prog=f"python -m jobs.{job.name}",
        description=job.summary,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    result.add_argument("--config", default=None, help="YAML preset, e.g. configs/tiny.yaml")
    result.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    result.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=10")
    return result


def parse(
    argv: Sequence[str] | None,
    job: Job,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[Config, argparse.Namespace]:
    """``(config, parsed arguments)`` of a job's command line."""
    cli = parser(job)
    if add_arguments is not None:
        add_arguments(cli)
    args = cli.parse_args(argv)
    return submitted_results(load_config(args.config, args.overrides)), args


def submitted_results(cfg: Config) -> Config:
    """``cfg`` as a job runs it: under ``ray job submit``, relative result paths resolve under
    the results home (``jobs.cluster.anchor_results``), never in Ray's working-dir copy."""
    if not submitted_job():
        return cfg
    home = results_home()
    print(f"results: relative paths resolve under {home} (${HOME_ENV} sets it)", flush=True)
    return anchor_results(cfg, home)


def run(main: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; a user error becomes one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except _user_errors() as error:
        if "--debug" in argv:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


class Progress:
    """Numbered stage headers with the elapsed time: ``[3/8   42.0s] training ...``."""

    def __init__(self, total: int) -> None:
        self.total, self.step, self.start = total, 0, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.step += 1
        print(f"\n[{self.step}/{self.total}  {self.elapsed():6.1f}s] {message}", flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
