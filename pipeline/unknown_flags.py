"""Refuse flags that nobody declares, before any work.

Beam drops an argument that no PipelineOptions class declares with only a log line ("Discarding
unparseable args"), so ``run ... --num-instance 5`` would quietly run on every instance. Every
argument left after the ``run`` flags must therefore be an option some PipelineOptions class
declares, in either ``--flag=value`` or ``--flag value`` form.

Beam's declared options are asked of Beam itself: every PipelineOptions subclass loaded in this
process (all of Beam's own, defined in ``apache_beam.options.pipeline_options``, plus any a
runner or user module defines) declares its flags on a parser through its
``_add_argparse_args(parser)`` classmethod. That is the hook each options class implements and
the one ``PipelineOptions.get_all_options`` calls to parse; Beam has no public list of option
names. The parser here records the names and parses the arguments as Beam would (abbreviations
off), so a Beam option with a bad value is refused too, in one line.
"""
from __future__ import annotations

import argparse
import difflib
import os
import posixpath
from typing import Iterable, List, Optional, Sequence, Set

from synanno_datagen.errors import ConfigError, first_line

HELP_HINT = "see 'synanno-datagen run --help'; anything else must be a Beam pipeline option"


class _DeclaredOptions(argparse.ArgumentParser):
    """A parser Beam's options classes declare their flags on; it remembers their names."""

    def __init__(self):
        super().__init__(add_help=False, allow_abbrev=False, conflict_handler="resolve")
        self.names: Set[str] = set()

    def add_argument(self, *args, **kwargs):
        self.names.update(a for a in args if a.startswith("-"))
        return super().add_argument(*args, **kwargs)

    def add_value_provider_argument(self, *args, **kwargs):  # Beam's templated options
        return self.add_argument(*args, **kwargs)

    def error(self, message):
        raise ConfigError(message)


def _options_classes() -> List[type]:
    """Every PipelineOptions subclass loaded now, each once, that declares flags itself."""
    from apache_beam.options.pipeline_options import PipelineOptions

    found, todo = [], list(PipelineOptions.__subclasses__())
    while todo:
        cls = todo.pop(0)
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return [cls for cls in found if "_add_argparse_args" in vars(cls)]


def beam_parser() -> _DeclaredOptions:
    """A parser holding every option Beam's options classes declare."""
    parser = _DeclaredOptions()
    for cls in _options_classes():
        cls._add_argparse_args(parser)  # the hook every options class implements
    return parser


def beam_option_names() -> Set[str]:
    """``--runner``, ``--temp_location``, ...: every flag some PipelineOptions class declares."""
    return set(beam_parser().names)


def closest(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The candidate ``name`` most likely meant, ignoring ``_`` vs ``-``; None if none is close."""
    by_form = {}
    for c in candidates:
        by_form.setdefault(_form(c), c)
    if _form(name) in by_form:
        return by_form[_form(name)]
    match = difflib.get_close_matches(_form(name), list(by_form), n=1, cutoff=0.8)
    return by_form[match[0]] if match else None


def _form(flag: str) -> str:
    return flag.replace("_", "-")


def check_beam_args(beam_args: Sequence[str], own_flags: Iterable[str],
                    table: Optional[str] = None) -> None:
    """Raise ConfigError (one line) for the first argument in ``beam_args`` (what the run flags
    left) that no PipelineOptions class declares, naming the closest flag of ``own_flags`` or
    Beam's; a stray file beside ``table`` (--materialization) of its format is taken for a
    glob the shell expanded."""
    parser = beam_parser()
    try:
        known, unknown = parser.parse_known_args(list(beam_args))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a Beam option's own parsing action failed
        raise ConfigError(f"Beam options {' '.join(beam_args)}: {type(e).__name__}: "
                          f"{first_line(e)}") from None
    own = sorted(own_flags)
    for arg in unknown:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            # Our own flags first: a near miss of ours is likelier than of Beam's 175.
            guess = closest(name, own) or closest(name, sorted(parser.names))
            hint = f"did you mean {guess}?" if guess else HELP_HINT
            raise ConfigError(f"unknown flag {name}; {hint}")
    if unknown:
        raise ConfigError(f"unexpected argument {unknown[0]!r}: not the value of any flag; "
                          f"{_stray_advice(unknown[0], table)}")
    workers = getattr(known, "direct_num_workers", None)
    if workers is not None and int(workers) < 0:   # Beam's runner fails with an IndexError
        raise ConfigError(f"--direct_num_workers {workers}: must be 0 (one per core) or more")


def _stray_advice(stray: str, table: Optional[str]) -> str:
    """What to do about a stray word: quote the glob when it is a file beside --materialization's
    of the same suffix (the shell expanded ``--materialization DIR/*.parquet`` into its files,
    the first taken as the table, the rest left over), else see the help."""
    if not table or posixpath.dirname(stray) != posixpath.dirname(table) or \
            _suffix(stray).lower() != _suffix(table).lower() or not _is_file(stray):
        return HELP_HINT
    folder = posixpath.dirname(table)
    glob = (folder + "/" if folder else "") + "*" + _suffix(table)   # ('*.csv' matches no A.CSV)
    return (f"a glob the shell expanded into the table's shards? quote it: "
            f"--materialization '{glob}'")


def _suffix(path: str) -> str:
    """A table file's suffix (``.csv.gz`` whole) as written; empty without one."""
    name = posixpath.basename(path)
    return name[-len(".csv.gz"):] if name.lower().endswith(".csv.gz") else \
        posixpath.splitext(name)[1]


def _is_file(path: str) -> bool:
    """Whether ``path`` is a file (locally) or an object (in storage)."""
    if "://" not in path:
        return os.path.isfile(os.path.expanduser(path))
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.exists(path)
    except Exception:  # noqa: BLE001 - unreachable storage: no advice of a glob
        return False


def runs_on_dataflow(beam_args: Sequence[str]) -> bool:
    """Whether ``--runner`` names Dataflow's runner, by any name Beam takes (``dataflow``,
    ``DataflowRunner``, a dotted path, a subclass such as TestDataflowRunner)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.runners.runner import create_runner

    name = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner
    if not name:
        return False
    try:
        runner = create_runner(name)
    except Exception:  # noqa: BLE001 - check_runner reports it
        return False
    return _is_dataflow(runner)


def _is_dataflow(runner) -> bool:
    return any(c.__name__ == "DataflowRunner" for c in type(runner).__mro__)


def check_runner(beam_args: Sequence[str]) -> None:
    """Raise ConfigError (one line) for a runner Beam does not know, a Dataflow job without the
    options Beam requires or with a malformed project or job name (its own validator; only
    the checks that need no network once the options are there: the rest may create a default
    bucket), or a template launch whose workers would lack the package. Beam checks these only
    as the job is built or submitted."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
    from apache_beam.options.pipeline_options import SetupOptions, StandardOptions, WorkerOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.runner import create_runner

    options = PipelineOptions(list(beam_args))
    name = options.view_as(StandardOptions).runner
    if not name:
        return
    try:
        runner = create_runner(name)
    except ValueError as e:
        raise ConfigError(f"--runner {name}: {first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - a dotted name Beam imports: no such module or class
        raise ConfigError(f"--runner {name}: {type(e).__name__}: {first_line(e)}") from None
    cloud = options.view_as(GoogleCloudOptions)
    dataflow = _is_dataflow(runner)
    if dataflow:
        validator = PipelineOptionsValidator(options, runner)
        if cloud.project and cloud.region and (cloud.temp_location or cloud.staging_location):
            errors = validator.validate_cloud_options(cloud)   # job name, project: no network
        else:
            errors = validator.validate()
        if errors:
            raise ConfigError(f"--runner {name}: {' '.join(' '.join(errors).split())} "
                              "(./launch_dataflow.sh passes them from its environment)")

    setup, worker = options.view_as(SetupOptions), options.view_as(WorkerOptions)
    if (dataflow and cloud.template_location
            and not (worker.sdk_container_image or worker.worker_harness_container_image)
            and not (setup.setup_file or setup.extra_packages or setup.requirements_file)):
        raise ConfigError("the template was launched without sdk_container_image: its "
                          "workers would run Beam's own image, without synanno-datagen, and "
                          "fail; launch it with the parameter sdk_container_image=IMAGE (the "
                          "template's image), as ./launch_dataflow.sh schedule does, or run "
                          "once with ./launch_dataflow.sh run FLAGS")
