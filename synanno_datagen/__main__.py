"""``python -m synanno_datagen``: the command line (see synanno_datagen.cli)."""
from synanno_datagen.cli import entry

entry()
