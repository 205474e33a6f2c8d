"""Ray job entrypoint: the live monitor (`ray-app monitor`).

    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python jobs/monitor.py --config ray_app/configs/local.yaml

Arguments are those of `ray-app monitor`.
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    main(["monitor", *sys.argv[1:]])
