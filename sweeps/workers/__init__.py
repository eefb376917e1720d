"""What runs in Ray's workers: a sweep's units of work, one runner per kind.

``trainable``: the function Ray Tune runs for every unit and the runners' registry (cheap to
import: Ray imports it in every fresh trial actor). ``trial``, ``pack``, ``federated``: the runners
of a lone trial, a pack and a federated trial; ``federated_actors``: a federated trial's clients;
``confirmation``: the confirmation stage's jobs; ``threads``: torch's threads in a worker;
``own_data``: a sweep's own datasets, from the driver through Ray's object store.
"""

from sweeps.workers.trainable import RUNNERS, run_trial

__all__ = [
    "RUNNERS",
    "run_trial",
    "confirmation",
    "federated",
    "federated_actors",
    "own_data",
    "pack",
    "threads",
    "trainable",
    "trial",
]
