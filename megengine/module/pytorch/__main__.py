"""``python -m megengine.module.pytorch build|info|clean``: the bridge operator's build, ahead of time."""
import sys

from ...core.torch_bridge import main

sys.exit(main())
