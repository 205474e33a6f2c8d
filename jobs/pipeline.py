"""Ray job entrypoint: the daily pipeline (`ray-app pipeline`): the stale Dagster assets,
materialised in this driver against the persistent Dagster instance.

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python jobs/pipeline.py --config ray_app/configs/local.yaml

Arguments are those of `ray-app pipeline` (the RayCronJob adds --calendar).
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    main(["pipeline", *sys.argv[1:]])
