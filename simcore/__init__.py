"""The engine: simpy clock, fluid bandwidth sharing, engines, compute tasks, memory, tracing, scenarios."""

from .errors import OutOfMemory, ScenarioError
from .records import Record, Result
from .simulation import Simulation

__all__ = ["OutOfMemory", "Record", "Result", "ScenarioError", "Simulation"]
