"""Writes tests/data/pandas/*.parquet: tables as pandas (2.1 or later) writes them, its
``DataFrame.attrs`` in the file's metadata (``PANDAS_ATTRS``), as CAVEclient's ``query_table``
sets them. pandas is no dependency of the package nor of its tests (with pandas installed,
pyarrow hands some values to Python as pandas' own, so rows would read otherwise), hence files
made once: ``pip install 'pandas>=2.1,<2.4'`` in a venv of your own, then, in the clone,
``python -m tests.data.make_pandas_tables``. The files record the pandas version that wrote them
(their ``pandas`` metadata).
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent / "pandas"
# CAVEclient's attrs of a query_table (metadata=True) of a MICrONS synapse table, but the units
CAVE_ATTRS = {"datastack_name": "minnie65_public", "join_query": False,
              "table_name": "synapses_pni_2", "table_voxel_resolution": [4, 4, 40],
              "table_schema_type": "synapse", "live_query": False}
# file -> attrs of a one-row table with columns id, x, y, z (None: no dataframe_resolution)
SMALL = {
    "res_4_4_40.parquet": {**CAVE_ATTRS, "dataframe_resolution": [4, 4, 40]},
    "res_8_8_40.parquet": {**CAVE_ATTRS, "dataframe_resolution": [8, 8, 40]},
    "res_4_4_33.parquet": {**CAVE_ATTRS, "dataframe_resolution": [4.0, 4.0, 33.0]},
    "res_none.parquet": {**CAVE_ATTRS, "dataframe_resolution": None},
    "res_absent.parquet": dict(CAVE_ATTRS),
    "res_mixed.parquet": {**CAVE_ATTRS, "join_query": True,
                          "dataframe_resolution": "mixed_resolutions"},
    "res_two.parquet": {**CAVE_ATTRS, "dataframe_resolution": [4, 4]},
}
CAVE_TABLE = "cave_4_4_33.parquet"   # tests.test_table_exports.ROWS in 4 x 4 x 33 nm units


def cave_positions(rows, target_nm, table_nm):
    """``ctr_pt_position`` of ``rows`` (id, centre xyz in target voxels, reason) in units of
    ``table_nm``, a little inside each target voxel so that flooring matters."""
    def in_units(center):
        if center is None:
            return None
        return [v if v is None or isinstance(v, float) else v * t // r + (t // r - 1)
                for v, t, r in zip(center, target_nm, table_nm)]

    return [in_units(c) for _, c, _ in rows]


def main() -> None:
    import pandas as pd

    from tests.test_table_exports import ROWS, TARGET_NM

    HERE.mkdir(exist_ok=True)
    for name, attrs in SMALL.items():
        df = pd.DataFrame({"id": [1], "x": [2], "y": [3], "z": [4]})
        df.attrs = attrs
        df.to_parquet(HERE / name)
    df = pd.DataFrame({"id": [sid for sid, _, _ in ROWS],
                       "ctr_pt_position": cave_positions(ROWS, TARGET_NM, (4, 4, 33)),
                       "valid": [True] * len(ROWS)})
    df.attrs = {**CAVE_ATTRS, "dataframe_resolution": [4, 4, 33]}
    df.to_parquet(HERE / CAVE_TABLE)


if __name__ == "__main__":
    main()
