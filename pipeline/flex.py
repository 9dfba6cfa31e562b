"""Flex Template support: template parameters <-> our flags, and the launch request body.

A Flex Template parameter is a name matching ``[a-z_]+`` with one string value, passed by the
launcher as ``--name=value``. Ours are the ``run`` flags with ``_`` for ``-``; ``crop_size``,
``block_size`` and ``coordinate_resolution`` are one string ``"X Y Z"``; and Beam's
``sdk_container_image``, the workers' image. ``metadata.json`` (repository root) declares them:
it is made from the ``run`` flags (names, help texts, which are required) and the template's own
facts here (validation regexes, the worker image), and a test fails until it is made again.

Entry points:
  python pipeline/flex.py [template args...]   what the template launcher runs (the Dockerfile's
      FLEX_TEMPLATE_PYTHON_PY_FILE): template parameters as --name=value, then the launcher's
      Beam options; it runs ``synanno-datagen run``, so unknown arguments are refused there
  python -m synanno_datagen.pipeline.flex body --template-path GS --job-name NAME [environment flags] -- FLAGS
      prints the JSON body of a flexTemplates:launch request for FLAGS (used by
      ``launch_dataflow.sh schedule``)
  python -P -m synanno_datagen.pipeline.flex metadata > metadata.json   (-P: from the clone)
      writes the template's metadata anew (after a run flag changed)
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from decimal import Decimal
from typing import Dict, List, Sequence, Tuple

from synanno_datagen.errors import ConfigError, redact
from synanno_datagen.pipeline.options import NEAREST, help_text, run_flags, run_parser

NOT_TEMPLATE_PARAMETERS = {"help", "overwrite"}
# flags without a value: template parameter "true" or "false"
SWITCHES = {a.dest for a in run_flags() if a.nargs == 0 and a.const is True} \
    - NOT_TEMPLATE_PARAMETERS
# one-off parameters a schedule must not repeat every night
NOT_SCHEDULED = {"break_lease": "every night would break the lease of a run still writing; "
                                "launch the template once with break_lease=true instead",
                 "retry_failed": "every night would try again every row remembered as a "
                                 "permanent failure; launch the template once with "
                                 "retry_failed=true instead"}
# comma-separated lists (checked by check_values before they become parameters)
COMMA_LISTS = {"formats", "splits", "missing_chunks"}
# three numbers: template parameter "X Y Z"
XYZ_PARAMETERS = {a.dest for a in run_flags() if a.nargs == 3}
SET_BY = {"sdk_container_image": "IMAGE"}   # parameters that launch_dataflow.sh's variables set


# metadata.json: what the run flags do not say. Each parameter's validation regex (a flag with
# choices, or a switch, gets one made from them); a new run flag fails the metadata test until it
# has one here.
TEMPLATE = {"name": "synanno-datagen",
            "description": "Synapse seed-slice training data: table -> crops -> seed-slice "
                           "variants -> TFRecord/npy shards + manifest."}
_WHOLE = "[1-9][0-9]*"
_NUMBER = r"([0-9]+\.?[0-9]*|\.[0-9]+)"
_GS = r"^gs://[^\n\r]+$"
_VOLUME = r"^(precomputed://)?(gs://[^\n\r]+|https?://[^\n\r?#]+)$"   # no query (run's rule)
_COLUMN = r'^[^\n\r,\"]+$'
REGEXES = {
    "materialization": _GS, "source_url": _VOLUME, "target_url": _VOLUME, "output_dir": _GS,
    "num_instances": f"^{_WHOLE}$", "variants": f"^{_WHOLE}$", "max_seed_slices": f"^{_WHOLE}$",
    "crop_size": f"^{_WHOLE} {_WHOLE} {_WHOLE}$", "source_mip": f"^([0-9]+|{NEAREST})$",
    "pad_value": "^([0-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])$", "seed": "^[0-9]+$",
    "formats": "^(tfrecord|npy|tfrecord,npy|npy,tfrecord)$",
    "splits": "^[A-Za-z0-9_]+=[0-9.]+(,[A-Za-z0-9_]+=[0-9.]+)*$",
    "id_column": _COLUMN, "center_column": _COLUMN, "pre_column": _COLUMN, "post_column": _COLUMN,
    "coordinate_resolution": f"^{_NUMBER} {_NUMBER} {_NUMBER}$", "shard_size_mb": f"^{_NUMBER}$",
    "block_size": f"^{_WHOLE} {_WHOLE} {_WHOLE}$", "fetch_memory_mb": f"^{_WHOLE}$",
    "missing_chunks":
        "^(error|zero|((source|target)=(error|zero))(,(source|target)=(error|zero))?)$",
    "lease_hours": f"^{_NUMBER}$",
}
# The one Beam option declared as a template parameter too (the launcher passes it to Beam as it
# is): the workers' image goes both as the launch's environment.sdkContainerImage and as this
# parameter, the way Google's Flex Template samples pass it (no document says that the
# launcher turns the environment field into the option; a launch without it is refused).
WORKER_IMAGE = {
    "name": "sdk_container_image", "label": "Worker image",
    "helpText": "the image the workers run: this template's own image "
                "(REGION-docker.pkg.dev/PROJECT/synanno/synanno-datagen:latest unless IMAGE named "
                "another when ./launch_dataflow.sh build-template built it)",
    "isOptional": False, "regexes": [r"^[a-z0-9.-]+(:[0-9]+)?/[^\s]+$"]}


def metadata() -> dict:
    """metadata.json's content: a parameter per template parameter, in the order of the run
    flags, then the worker image."""
    names = set(template_parameters())

    def parameter_name(match):   # --output-dir -> output_dir, the name a launch gives
        name = match.group(1).replace("-", "_")
        return name if name in names else match.group(0)

    parameters = []
    for action in run_flags():
        name = action.dest
        if name not in names:
            continue
        text = re.sub(r"--([a-z][a-z-]*)", parameter_name, help_text(action))
        if name in SWITCHES:
            text, regex = f"true: {text}", "^(true|false)$"
        elif action.choices:
            regex = f"^({'|'.join(action.choices)})$"
        else:
            regex = REGEXES[name]
        if name in XYZ_PARAMETERS:
            text = f"'{' '.join(action.metavar)}': {text}"
        if regex == _GS:   # (run's help names local paths too)
            text += "; on Dataflow a gs:// path"
        if name in NOT_SCHEDULED:
            text += "; a one-off launch, never a schedule"
        parameters.append({"name": name, "label": name.replace("_", " ").capitalize(),
                           "helpText": text, "isOptional": not action.required,
                           "regexes": [regex]})
    return {**TEMPLATE, "parameters": parameters + [WORKER_IMAGE]}


def template_parameters() -> List[str]:
    """Names of the template parameters that are run flags, in the order of the run flags
    (metadata.json declares these, then WORKER_IMAGE)."""
    return [a.dest for a in run_flags() if a.dest not in NOT_TEMPLATE_PARAMETERS]


def flags_to_parameters(flags: Sequence[str]) -> Dict[str, str]:
    """``run`` flags -> {parameter: string value} for the flags given (Beam flags refused)."""
    asks_help = next((f for f in flags if f in ("-h", "--help")), None)
    if asks_help:   # argparse would print the usage as the body and exit 0
        raise ConfigError(f"{asks_help}: no template parameter; ./launch_dataflow.sh schedule "
                          "--help shows the flags")
    parser = run_parser()
    args, rest = parser.parse_known_args(list(flags))
    if rest:
        flag = rest[0].split("=", 1)[0]
        if flag in ("--quiet", "--progress-interval"):
            raise ConfigError(f"{flag}: it shapes what a command prints on this machine; a "
                              "template launch prints nothing here: leave it out")
        from synanno_datagen.pipeline.unknown_flags import check_beam_args

        # a flag neither ours nor Beam's (a typo), or a stray word (a glob the shell expanded),
        # told as run tells them; a Beam flag is told where Dataflow settings come from
        check_beam_args(rest, [option for f in run_flags() for option in f.option_strings],
                        args.materialization)
        raise ConfigError(f"{rest[0]}: only synanno-datagen run flags can be template parameters; "
                          "Dataflow settings come from the environment variables")
    from synanno_datagen.pipeline.config import check_values

    check_values(args)   # what every night's run would refuse, refused now
    given = {a.dest for a in run_flags() for f in a.option_strings
             if any(x == f or x.startswith(f + "=") for x in flags)}
    if "overwrite" in given:
        raise ConfigError("--overwrite: not in a schedule: it is no template parameter, and a "
                          "nightly run must not replace a dataset made with another config; "
                          "run once with ./launch_dataflow.sh run ... --overwrite")
    params = {}
    for name in template_parameters():
        if name in given:
            value = getattr(args, name)
            if isinstance(value, bool):
                value = "true" if value else "false"
            values = value if isinstance(value, list) else [value]
            params[name] = " ".join(map(_text, values))
            if name in COMMA_LISTS:   # run reads 'a, b' as 'a,b'; the regexes take the latter
                params[name] = ",".join(p.strip() for p in params[name].split(",") if p.strip())
    return params


def _text(value) -> str:
    """A parameter value as the template's regexes and the run flags read it: floats in
    positional notation (``0.00001``, not Python's ``1e-05``)."""
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")
    return str(value)


def parameters_to_flags(argv: Sequence[str]) -> List[str]:
    """Launcher argv (``--name=value`` for parameters, anything else for Beam) -> CLI argv."""
    names = set(template_parameters())
    flags, beam = [], []
    for arg in argv:
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if sep and name in names:
            flag = "--" + name.replace("_", "-")
            if name in SWITCHES:
                flags += [flag] if value.lower() == "true" else []
            elif name in XYZ_PARAMETERS:
                flags += [flag] + value.split()
            else:   # one token: a value starting with '-' stays the flag's value
                flags += [f"{flag}={value}"]
        else:
            beam.append(arg)
    return flags + beam


def launch_body(template_path: str, job_name: str, parameters: Dict[str, str],
                environment: Dict) -> dict:
    """Body of POST .../locations/REGION/flexTemplates:launch."""
    return {"launchParameter": {
        "jobName": job_name,
        "containerSpecGcsPath": template_path,
        "parameters": parameters,
        "environment": environment,
    }}


def check_parameters(params: Dict[str, str], metadata_file: str) -> None:
    """Raise ConfigError for a parameter value the template's regexes refuse (Dataflow would
    refuse the launch, every night)."""
    import re

    with open(metadata_file) as f:
        declared = {p["name"]: p.get("regexes", []) for p in json.load(f)["parameters"]}
    for name, value in params.items():
        regexes = declared.get(name, [])
        if regexes and not any(re.fullmatch(rx, value) for rx in regexes):
            what = SET_BY.get(name, f"--{name.replace('_', '-')}")
            raise ConfigError(f"{what} {value!r}: the template's check refuses it "
                              f"({' or '.join(regexes)}); write it so it passes")


ENVIRONMENT_FLAGS = {  # body flag -> Flex Template RuntimeEnvironment field
    "--temp-location": "tempLocation", "--staging-location": "stagingLocation",
    "--service-account": "serviceAccountEmail", "--max-workers": "maxWorkers",
    "--machine-type": "machineType", "--network": "network",
    "--sdk-container-image": "sdkContainerImage",
}


def body_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m synanno_datagen.pipeline.flex body")
    parser.add_argument("--template-path", required=True)
    parser.add_argument("--job-name", required=True)
    parser.add_argument("--metadata-file", default="",
                        help="the template's metadata.json: parameters are checked against it")
    for flag in ENVIRONMENT_FLAGS:
        parser.add_argument(flag, default="")
    ours, flags = _split_at_double_dash(list(argv))
    args = parser.parse_args(ours)
    try:
        params = flags_to_parameters(flags)
        for name, why in NOT_SCHEDULED.items():
            if params.get(name) == "true":
                raise ConfigError(f"--{name.replace('_', '-')}: not in a schedule: {why}")
        if args.sdk_container_image:
            params["sdk_container_image"] = args.sdk_container_image
        if args.metadata_file:
            check_parameters(params, args.metadata_file)
        if params.get("incremental") != "true":
            raise ConfigError("--incremental: a schedule needs it: each night adds the table's "
                              "new synapses to one dataset; without it every night would fetch "
                              "every instance again and rewrite the dataset in place (for a "
                              "dataset made once: ./launch_dataflow.sh run ...)")
    except ConfigError as e:
        print(redact(f"synanno-datagen: error: {e}"), file=sys.stderr)
        return 2
    environment = {}
    for flag, field in ENVIRONMENT_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value:
            environment[field] = int(value) if field == "maxWorkers" else value
    body = launch_body(args.template_path, args.job_name, params, environment)
    print(json.dumps(body, sort_keys=True))
    return 0


def main(argv: Sequence[str] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["body"]:
        return body_main(argv[1:])
    if argv == ["metadata"]:
        print(json.dumps(metadata(), indent=2))
        return 0
    from synanno_datagen.cli import main as cli_main

    return cli_main(["run"] + parameters_to_flags(argv))


def _split_at_double_dash(argv: List[str]) -> Tuple[List[str], List[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


if __name__ == "__main__":
    sys.exit(main())
