"""Ray job entrypoint: `ray-app train`.

    ray job submit --working-dir . -- python jobs/train.py --config ray_app/configs/local.yaml

Arguments are those of `ray-app train`.
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
