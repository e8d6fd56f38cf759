"""Latency models of devices, model shapes and links (numpy/scipy only).

Public API (used by the simulator):

    get_device, get_model, get_link, known_devices, known_models, known_links,
    forward_latency, link_latency, allreduce_time, Device, Link, ModelShape, Latency,
    head_pass_seconds, stream_pass_seconds, host_seconds, step_parts, step_seconds (one speculative
    step, hwmodels.steps)
"""
from .hardware import Device, Link
from .devices import get_device, get_link, known_devices, known_links, link_latency
from .errors import InputError
from .latency import Latency, allreduce_time, forward_latency, pass_work
from .models import ModelShape, get_model, known_models
from .steps import head_pass_seconds, host_seconds, step_parts, step_seconds, stream_pass_seconds

__all__ = [
    "Device", "InputError", "Latency", "Link", "ModelShape", "allreduce_time", "forward_latency",
    "get_device", "get_link", "get_model", "known_devices", "known_links", "known_models",
    "link_latency", "pass_work", "head_pass_seconds", "host_seconds", "step_parts", "step_seconds",
    "stream_pass_seconds",
]
