"""Replay: re-execute a recorded run from its ledger and compare it, draw by draw.

``replay_run`` certifies a run or names its first divergence and the likely cause;
``diff_runs`` compares two runs; the registry decides which code replay may run. A plug-in
replayer (``register_replayer``) takes the ``ReplayContext`` and an event body and returns a
``Redraw`` with the digests to compare.
"""

from replay.causes import Cause
from replay.diff import DiffReport, diff_runs
from replay.engine import Divergence, ReplayReport, replay_run
from replay.context import ReplayContext
from replay.registry import ENTRY_POINT_GROUP, Redraw, register_replayer

__all__ = ["ENTRY_POINT_GROUP", "Cause", "DiffReport", "Divergence", "Redraw", "ReplayContext",
           "ReplayReport", "diff_runs", "register_replayer", "replay_run"]
