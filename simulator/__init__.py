"""SimPy discrete-event replay of decoding traces on modelled devices.

Python API (see `simulator.simulate`): `simulate(Workload(...), SimConfig(...), methods)`.
"""
from .config import Group, SimConfig, kappa_for_batch
from .costs import ConstantCosts, HardwareCosts
from .simulate import MethodResult, run_method, simulate
from .workload import SPEC_BENCH, AcceptanceModel, Task, Workload, load_traces

__all__ = ["AcceptanceModel", "ConstantCosts", "Group", "HardwareCosts", "MethodResult", "SPEC_BENCH",
           "SimConfig", "Task", "Workload", "kappa_for_batch", "load_traces", "run_method", "simulate"]
