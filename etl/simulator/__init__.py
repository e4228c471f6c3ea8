"""A local, Bird-compatible stock listing with an evolving synthetic stock and faults, for
demos, tests and benchmarks. It only ever needs 127.0.0.1."""

from etl.simulator.faults import Faults
from etl.simulator.server import RequestRecord, Simulator
from etl.simulator.stock import SyntheticStock

__all__ = ["Faults", "RequestRecord", "Simulator", "SyntheticStock"]
