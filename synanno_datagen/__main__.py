"""``python -m synanno_datagen``: the command line (see synanno_datagen.cli)."""
import sys

from synanno_datagen.cli import main

sys.exit(main())
