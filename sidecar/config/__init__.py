"""The sidecar's config: keys, sources, values, checks and the --check-config report. May import plan, state
and the kernel.  The main names are re-exported here, so ``from sidecar.config import Config`` keeps
working.
"""

from .load import Config, build_config
from .values import Secret

__all__ = ["Config", "Secret", "build_config"]
