"""Ray job entrypoint: `ray-app tune`.

    ray job submit --working-dir . -- python jobs/tune.py --config ray_app/configs/local.yaml

Arguments are those of `ray-app tune`.
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    main(["tune", *sys.argv[1:]])
