"""A sweep's privacy: the ledger of every run, the RDP filter, private selection, the statement.

``ledger``: every run that touches the training data, recorded before it runs. ``mechanism``: one
trial's DP-SGD mechanism and the ε of trials composed or alone. ``adaptive``: the RDP filter of an
adaptive sweep's budget. ``selection``: releasing the best trial (Papernot–Steinke).
``statement``: what the sweep's privacy statement says. ``sweep_secret``: the secret root seed.
Pure: no Ray, MLflow or Optuna.
"""

from sweeps.privacy.adaptive import RdpFilter
from sweeps.privacy.ledger import CONFIRMATION_ROLES, LEDGER_FILE, LedgerEntry, PrivacyLedger
from sweeps.privacy.mechanism import TrialMechanism, as_mechanism
from sweeps.privacy.selection import draw_trial_count, select_trials, sweep_privacy
from sweeps.privacy.statement import SelectionPrivacy, shared_seed_note

__all__ = [
    "CONFIRMATION_ROLES",
    "LEDGER_FILE",
    "LedgerEntry",
    "PrivacyLedger",
    "RdpFilter",
    "SelectionPrivacy",
    "TrialMechanism",
    "as_mechanism",
    "draw_trial_count",
    "select_trials",
    "shared_seed_note",
    "sweep_privacy",
    "adaptive",
    "ledger",
    "mechanism",
    "selection",
    "statement",
    "sweep_secret",
]
