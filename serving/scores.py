"""δ for a batch of users from Feast's online store (the decision service's only store read)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.feature_store import DECISION_SERVICE, MODEL_VERSION, SCORE_DATE, delta_feature


@dataclass(frozen=True)
class UserScores:
    delta: np.ndarray                  # (B, K, R); NaN rows for users without scores
    score_date: list[str | None]       # (B,)
    model_version: list[str | None]    # (B,)


class OnlineScores:
    """Reads the ``decision_service`` feature service through Feast's ``get_online_features``.

    The store is whatever ``feature_store.yaml`` in ``repo_dir`` names: SQLite in the
    embedded profile, Redis in production.
    """

    def __init__(self, repo_dir: Path, join_key: str, treatments: list[str], responses: list[str]):
        from feast import FeatureStore

        self.store = FeatureStore(repo_path=str(repo_dir))
        self.join_key, self.treatments, self.responses = join_key, treatments, responses
        self.names = [delta_feature(t, r) for t in treatments for r in responses]
        self.service = self.store.get_feature_service(DECISION_SERVICE)

    def read(self, user_ids: list[int]) -> UserScores:
        got = self.store.get_online_features(
            features=self.service, entity_rows=[{self.join_key: int(u)} for u in user_ids],
        ).to_dict()
        k, r = len(self.treatments), len(self.responses)
        cols = [np.asarray([np.nan if v is None else v for v in got[n]], dtype=np.float64) for n in self.names]
        delta = np.stack(cols, axis=1).reshape(len(user_ids), k, r)  # names are treatment-major
        return UserScores(delta, list(got[SCORE_DATE]), list(got[MODEL_VERSION]))
