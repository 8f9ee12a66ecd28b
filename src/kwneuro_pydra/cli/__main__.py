"""``python -m kwneuro_pydra.cli``: the ``kwneuro-pydra`` command."""

import sys

from kwneuro_pydra.cli import main

sys.exit(main())
