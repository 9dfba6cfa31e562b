"""pipeline/config.py's OPTIONS against the run flags."""
from synanno_datagen.pipeline.config import NOT_IN_MANIFEST, OPTIONS
from synanno_datagen.pipeline.options import run_flags


def test_every_run_flag_is_in_the_manifest_or_declared_left_out():
    """OPTIONS is written by hand: a run flag missing from it would be missing from the
    manifest's config and from the generation hash, with no error (found by review)."""
    flags = {a.dest for a in run_flags()}
    shown = [o.flag or o.key for o in OPTIONS if o.in_manifest]
    assert len(shown) == len(set(shown))
    assert {o.flag for o in OPTIONS if o.flag} <= flags   # a renamed key names a real flag
    assert flags - NOT_IN_MANIFEST <= set(shown), \
        "a run flag that is neither an Option of config.OPTIONS nor in config.NOT_IN_MANIFEST"
    assert NOT_IN_MANIFEST <= flags and not NOT_IN_MANIFEST & set(shown)
    assert {o.key for o in OPTIONS if o.flag} == {
        "crop_size_xyz", "block_size_xyz", "coordinate_resolution_nm_xyz"}
