"""The code location `dagster dev` and the `dagster` CLI load: the definitions of the
settings that ``RAY_APP_CONFIG_FILE`` (and ``RAY_APP_*``) name, as `ray-app` reads them.

    DAGSTER_HOME=data/dagster RAY_APP_CONFIG_FILE=ray_app/configs/local.yaml \\
        dagster dev -m ray_app.orchestration.location -p 3000

(`ray-app dagster-ui` does exactly this.) Loading a code location means building its
definitions at import: that is this module's only job.
"""

from __future__ import annotations

import os
from pathlib import Path

from ray_app.core.settings import CONFIG_ENV, load_settings
from ray_app.orchestration.definitions import build_definitions

_config = os.environ.get(CONFIG_ENV)
defs = build_definitions(load_settings(Path(_config) if _config else None))
