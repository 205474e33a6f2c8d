"""Ray job entrypoint: build the feature set of the latest data version.

    ray job submit --working-dir . -- python jobs/features.py --config ray_app/configs/local.yaml

Arguments are those of `ray-app features`.
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    main(["features", *sys.argv[1:]])
