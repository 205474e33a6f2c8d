"""Copy the files charts/ray-app renders from into the chart (``make manifests``), verbatim.

Helm reads only files inside a chart, but two of its inputs live elsewhere and stay there:
``serve_config.yaml`` (also what ``serve run``/``serve deploy`` use off Kubernetes; the
RayService's ``serveConfigV2``) and ``monitoring/prometheus/alerts.yml`` (what promtool checks
and tests; the PrometheusRule's groups). The chart holds byte-for-byte copies under
``charts/ray-app/files/``. ``ray-app rollout`` writes both serve configs itself
(``ray_app.serving.gitops``); after editing a source by hand, refresh the copies.
tests/infra/test_chart.py fails while a copy differs::

    .venv/bin/python -m tests.infra.serve_config_sync          # rewrite the copies
    .venv/bin/python -m tests.infra.serve_config_sync --check  # exit 1 when one is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ray_app.serving import gitops
from tests.infra.project import CHART, MONITORING, REPO

SERVE_CONFIG = REPO / gitops.SERVE_CONFIG
# {source: the chart's copy}
COPIES: dict[Path, Path] = {
    SERVE_CONFIG: REPO / gitops.CHART_SERVE_CONFIG,
    MONITORING / "prometheus" / "alerts.yml": CHART / "files" / "alerts.yml",
}


def stale(copies: dict[Path, Path] = COPIES) -> list[Path]:
    """The copies that are missing or differ from their source."""
    return [
        copy
        for source, copy in copies.items()
        if not copy.is_file() or copy.read_bytes() != source.read_bytes()
    ]


def sync(copies: dict[Path, Path] = COPIES) -> list[Path]:
    """Rewrite the stale copies; the ones rewritten."""
    rewritten = stale(copies)
    reverse = {copy: source for source, copy in copies.items()}
    for copy in rewritten:
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(reverse[copy].read_bytes())
    return rewritten


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        out_of_date = stale()
        for copy in out_of_date:
            print(
                f"{copy.relative_to(REPO)} is stale: run make manifests "
                "(python -m tests.infra.serve_config_sync)"
            )
        if not out_of_date:
            print("charts/ray-app/files/ is up to date")
        return 1 if out_of_date else 0
    for copy in sync():
        print(f"updated {copy.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
