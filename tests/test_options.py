"""The run flags' help texts (pipeline/options.py)."""
from synanno_datagen.pipeline.options import run_flags, run_parser


def test_every_run_flag_has_help_naming_its_default_from_the_parser():
    """A default written in a help by hand drifts from ``default=`` (found by review): a help
    names a flag's default with ``%(default)s``."""
    flags = run_flags()
    assert all(a.help for a in flags), [a.dest for a in flags if not a.help]
    with_default = {a.dest for a in flags if a.default is not None and a.default is not False}
    assert with_default == {a.dest for a in flags if "%(default)s" in a.help}


def test_run_help_shows_defaults_as_they_are_typed():
    text = " ".join(run_parser().format_help().split())
    assert "crop size in target voxels (default 128 128 16)" in text
    assert "a run's lease expires this many hours after it was last renewed (default 20;" in text
    assert "approximate TFRecord shard size (default 256)" in text
    assert "(default source=error,target=zero: absent label chunks" in text
    assert "%(" not in text
