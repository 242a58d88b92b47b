"""``python -m localdev.render`` = ``faaspipe render``."""

import sys

from localdev.render.output import main

sys.exit(main())
