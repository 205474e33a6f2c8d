"""Ray job entrypoint: ingest daily bars.

    ray job submit --working-dir . -- python jobs/ingest.py --config ray_app/configs/local.yaml

Arguments are those of `ray-app ingest`.
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    main(["ingest", *sys.argv[1:]])
