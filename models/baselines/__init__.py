"""Baselines on the same inputs and contract as HUM (multi-treatment, multi-response).

Every network maps field-bucket indices to expected outcomes under every arm.
Positive outputs: outcomes are softplus of a logit; models that add an effect to
the control prediction (EFIN, M3TN, DESCN) add it in logit space, so every
prediction stays > 0 and δ stays defined.
"""

from models.baselines.descn import DESCN
from models.baselines.efin import EFIN
from models.baselines.m3tn import M3TN
from models.baselines.nets import NetConfig, SLearner, TARNet, TLearner

__all__ = ["NetConfig", "SLearner", "TLearner", "TARNet", "EFIN", "M3TN", "DESCN"]
