"""SimPy discrete-event replay of decoding traces on modelled devices.

Python API (see `simulator.simulate`): `simulate(Workload(...), SimConfig(...), methods)`.
"""
from .config import Group, SimConfig, kappa_for_batch
from .costs import ConstantCosts, HardwareCosts
from .serving import ServingResult, poisson_arrivals, read_arrivals, serve
from .simulate import MethodResult, run_method, simulate
from .workload import SPEC_BENCH, AcceptanceModel, Task, Workload, load_traces

__all__ = ["AcceptanceModel", "ConstantCosts", "Group", "HardwareCosts", "MethodResult", "SPEC_BENCH",
           "ServingResult", "SimConfig", "Task", "Workload", "kappa_for_batch", "load_traces", "poisson_arrivals",
           "read_arrivals", "run_method", "serve", "simulate"]
