"""What is simulated: models, device groups, the link, and the speculation parameters.

The defaults are the Mirror-SD paper's testbed, and they apply to the testbed only:
its TP 8 and unified-memory link come with its devices (`TESTBED`); any other
pair of devices gets TP 1 unless told, and the link the two devices' shared
tensor-parallel link when they are the same device, else it must be named.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import InputError


@dataclass(frozen=True)
class Group:
    """A device group: a device (hwmodels name or Device), how many, and the tensor-parallel degree.

    `count // tp` replicas share a batch evenly; `count` defaults to `tp`.
    """

    device: Any
    tp: int = 1
    count: int | None = None

    @property
    def devices(self) -> int:
        return self.count if self.count is not None else self.tp

    @property
    def replicas(self) -> int:
        return self.devices // self.tp


#: The Mirror-SD testbed (mirror-sd.md §6): 8 M2 Ultras, the target on their GPUs, the draft on their
#: Neural Engines, the two meeting through each machine's unified memory.
TESTBED = {"target_hw": "m2-ultra-gpu", "draft_hw": "m2-ultra-ane", "tp": 8, "draft_tp": 8,
           "link": "m2-ultra-unified"}


def _device_key(device) -> str:
    """A device's catalog key, from its name ('KEY@CALIBRATION' included) or a hwmodels Device."""
    return str(getattr(device, "key", device)).partition("@")[0]


def is_testbed(target_hw, draft_hw) -> bool:
    return _device_key(target_hw) == TESTBED["target_hw"] and _device_key(draft_hw) == TESTBED["draft_hw"]


def default_link(target_device, draft_device):
    """The link between the target and draft groups when none is named (see the module docstring).

    `target_device`/`draft_device` are hwmodels Devices."""
    if target_device.key == TESTBED["target_hw"] and draft_device.key == TESTBED["draft_hw"]:
        return TESTBED["link"]
    if target_device.key == draft_device.key and target_device.tp_link is not None:
        return target_device.tp_link
    raise InputError(f"--link: name the link between {target_device.key} and {draft_device.key} "
                     f"(the testbed's unified memory is only the default for "
                     f"{TESTBED['target_hw']} + {TESTBED['draft_hw']})")


def check_tensor_parallel(shape, tp: int, option: str) -> None:
    """Tensor parallelism splits attention heads: the query heads must divide by `tp`, and the
    KV heads divide by it or be replicated evenly (tp a multiple of them)."""
    if shape.n_heads % tp:
        raise InputError(f"{option}: {tp} does not divide the {shape.n_heads} attention heads of {shape.name}")
    if shape.n_kv_heads % tp and tp % shape.n_kv_heads:
        raise InputError(f"{option}: {tp} neither divides nor is a multiple of the {shape.n_kv_heads} "
                         f"KV heads of {shape.name}")


def kappa_for_batch(batch: int) -> int:
    """Mirror-SD's κ by batch size (mirror-sd.md §8.4): 8 up to B = 8, then 4, 2, and 1 from B = 64."""
    if batch <= 8:
        return 8
    if batch <= 16:
        return 4
    if batch <= 32:
        return 2
    return 1


def ss_streams_for_batch(batch: int) -> int:
    """Speculative Streaming lookahead streams of Mirror-SD's draft: 2 for B <= 8, else 1 (§8.4)."""
    return 2 if batch <= 8 else 1


@dataclass(frozen=True)
class Drafting:
    """How a self-drafting method's recorded steps draft, as refimpl runs them (refimpl.trace's
    ``ss`` and ``medusa`` params; `simulator.workload.drafting_of` reads them from a header).

    ss: each record's draft pass is its stream rows through the last `stream_layers` layers and
    a `vocab`-row draft classifier, after the verification (`schedule` "deferred") or inside it
    ("fused": `gamma` of them reach the classifier). medusa: the `gamma` heads on the last
    committed row, their rows through the target's classifier shortlisted to `vocab` rows.
    Without one (synthetic workloads, other traces) the simulator prices the papers' layouts:
    ss's streams inside the verification pass's rows, Medusa's own-classifier heads on every
    verified row."""

    method: str
    gamma: int
    vocab: int
    stream_layers: int = 0
    schedule: str = "deferred"


@dataclass(frozen=True)
class SimConfig:
    """One simulated system. Defaults: the Mirror-SD paper's testbed (mirror-sd.md §6, §9).

    `kappa`, `exit_layer` and `ss_streams` left at None follow the paper's rules
    (κ by batch, ℓe = N/2, SS streams by batch); `link` left at None is the testbed's
    unified memory on the testbed's devices (set here), else `default_link` (in the cost model).
    """

    target_model: Any = "qwen3-32b"
    draft_model: Any = "qwen3-0.6b"
    target: Group = field(default_factory=lambda: Group("m2-ultra-gpu", tp=8))
    draft: Group = field(default_factory=lambda: Group("m2-ultra-ane", tp=8))
    link: Any = None
    dtype: str = "fp16"
    draft_dtype: str | None = None
    gamma: int = 7
    kappa: int | None = None
    exit_layer: int | None = None
    batch: int = 1
    ss_streams: int | None = None
    tree_nodes: int | None = None
    branches: int | None = None
    draft_sharding: str = "spd"
    draft_on_target: bool = False     # the draft shares the target's devices (their work queues)
    drafting: Drafting | None = None  # ss / medusa: how the replayed traces draft (see Drafting)
    # Work that runs on the target and draft groups at once: how many times slower the memory-bound
    # part of each runs while the other runs too (1: independent memories; two cores of one CPU share
    # its memory bus: one stream's bandwidth over each of two concurrent streams' share)
    memory_contention: float = 1.0
    compute_contention: float = 1.0  # likewise for the rest of their work (1: a core each; >1: cores shared)
    rollout: str = "batched"  # Mirror-SD's branch rollouts: "batched" (the paper's) or "tree" (refimpl's; costs.rollout)

    def __post_init__(self):
        if self.link is None and is_testbed(self.target.device, self.draft.device):
            object.__setattr__(self, "link", TESTBED["link"])
        for name, minimum in (("gamma", 1), ("batch", 1), ("kappa", 1), ("exit_layer", 1),
                              ("ss_streams", 1), ("tree_nodes", 1), ("branches", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
                raise InputError(f"--{name.replace('_', '-')}: must be an integer >= {minimum}, got {value!r}")
        if self.rollout not in ("batched", "tree"):
            raise InputError(f"--rollout: must be batched or tree, got {self.rollout!r}")
        for name in ("memory_contention", "compute_contention"):
            contention = getattr(self, name)
            if isinstance(contention, bool) or not isinstance(contention, (int, float)) or not 1 <= contention <= 1e3:
                raise InputError(f"--{name.replace('_', '-')}: must be a number in [1, 1000], got {contention!r}")
        for role, group in (("target", self.target), ("draft", self.draft)):
            option = "--tp" if role == "target" else "--draft-tp"
            if not isinstance(group.tp, int) or group.tp < 1:
                raise InputError(f"{option}: must be an integer >= 1, got {group.tp!r}")
            if group.devices < group.tp or group.devices % group.tp:
                raise InputError(f"--{role}-devices: {group.devices} devices do not split into "
                                 f"tensor-parallel groups of {group.tp}")

    @property
    def kappa_used(self) -> int:
        return self.kappa if self.kappa is not None else kappa_for_batch(self.batch)

    @property
    def ss_tokens(self) -> int:
        """Tokens per draft pass with Speculative Streaming: the main stream plus the lookahead streams."""
        streams = self.ss_streams if self.ss_streams is not None else ss_streams_for_batch(self.batch)
        return 1 + streams
