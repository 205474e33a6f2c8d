"""Tables before traffic: a rollout's pinned versions score the feature set on the cluster
before ``serve deploy``, so their variants read the table back instead of predicting it.

A variant answers from a table of its model's prediction for every row of the feature set
(``Variant.scores``). Made by the variant, that table is its first request's wait, and for
a family whose prediction is dear (a LightGBM model's trees cost about 8x an MLP's matrix
products over the same rows) the wait grows with the family. Made here, as a Ray task per
version before the deploy, it is a release's batch scoring: the variant then reads the
persisted table back (``read_served_scores``), which costs the same for every family. It is
the same computation: the variant's loader loads the version (``ServeArgs.loader``), the
feature set is the one the ingress will serve (``FeatureTable``) and ``score_frames`` makes
the predictions; the table carries the model's digest, so a variant reads it back only when
its own model made it.

A version whose table exists already is not scored again (rollouts that move only weights,
a second day's deploy of the same pins). A failure here never stops the rollout: the variant
then makes its table itself, as it would without this step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ray_app.core.storage import DataRoot
from ray_app.data.signals import ServedTable, read_served_scores, store_scores
from ray_app.serving.args import ServeArgs
from ray_app.serving.features import FeatureTable
from ray_app.serving.loader import import_loader
from ray_app.serving.predictor import ColumnSelector, score_frames

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precomputed:
    """What precomputing one pinned version did."""

    variants: tuple[str, ...]
    ref: str
    version: int | None = None
    feature_version: str = ""
    rows: int = 0
    seconds: float = 0.0
    reused: bool = False
    error: str = ""

    @property
    def detail(self) -> str:
        who = "/".join(self.variants)
        if self.error:
            return f"{who} {self.ref}: not precomputed ({self.error})"
        how = "already there" if self.reused else f"{self.rows} rows in {self.seconds:.2f} s"
        return f"{who} v{self.version} on {self.feature_version}: table {how}"


def score_version(
    args: ServeArgs, variants: tuple[str, ...], ref: str, feature_version: str | None
) -> Precomputed:
    """Load ``ref`` as the variants do, and persist its predictions over the feature set
    ``feature_version`` (None: the newest) unless its own table is there; never raises."""
    started = time.perf_counter()
    try:
        settings = args.settings()
        model = import_loader(args.loader)(args)(ref)
        table = FeatureTable.load(settings, feature_version)
        root = DataRoot(settings.data_root)
        served = ServedTable(variants[0], model.name, str(model.version), table.feature_version)
        dates = table.dates
        done = read_served_scores(root, served, dates, model.digest) is not None
        if not done:
            select, columns = ColumnSelector(model.columns), tuple(table.columns)
            preds = score_frames(model, select, columns, table.frames)
            store_scores(root, served, {t: (dates[t], p) for t, p in preds.items()}, model.digest)
    except Exception as exc:  # the variant makes its table itself
        return Precomputed(variants, ref, error=f"{type(exc).__name__}: {exc}")
    return Precomputed(
        variants,
        ref,
        model.version,
        table.feature_version,
        sum(len(days) for days in dates.values()),
        time.perf_counter() - started,
        done,
    )


def precompute_tables(
    args: ServeArgs, refs: dict[str, str], feature_version: str | None
) -> list[Precomputed]:
    """Each distinct version of ``refs`` (variant name to model reference) scored in a Ray
    task of its own, in parallel; what each did, in the order of ``refs``."""
    import ray

    by_ref: dict[str, list[str]] = {}
    for variant, ref in refs.items():
        by_ref.setdefault(ref, []).append(variant)
    task = ray.remote(num_cpus=1)(score_version)
    pending = [
        task.remote(args, tuple(names), ref, feature_version) for ref, names in by_ref.items()
    ]
    done: list[Precomputed] = ray.get(pending)
    for result in done:
        logger.info("precompute: %s", result.detail)
    return done
