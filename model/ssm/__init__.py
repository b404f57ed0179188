"""The recurrent form of a TNN: conversion maths (ETSC, reduced order), prefill, the state layout and the step.

Grouped by job: `etsc` (the exact DFT-grid conversions), `reduced` (the reduced-order fit), `modal` (a recurrence
with arbitrary stable poles and a FIR head, its kernel and prefill), `prefill` (either kind on the state layout),
`step` (the state layout, the in-place step and its fused twin).
"""

from tnn.model.ssm.etsc import (
    MAX_AMPLIFICATION,
    TAIL_DAMPINGS,
    TAIL_MODE,
    SsmParams,
    complex_dtype_for,
    decay_powers,
    etsc,
    etsc_prefill,
    pole_power,
    ssm_kernel,
    ssm_kernel_from_modes,
    tail_dampings,
)
from tnn.model.ssm.modal import (
    ModalParams,
    UnstablePole,
    modal_kernel,
    modal_kernel_from_powers,
    modal_prefill,
    require_stable,
)
from tnn.model.ssm.prefill import LayerParams, realised_kernel, ssm_prefill
from tnn.model.ssm.step import (
    StepWeights,
    fused_step_available,
    fused_step_compiled,
    pack_state,
    ssm_scan,
    ssm_step,
    ssm_step_fused,
    state_rows,
    step_weights,
    unpack_state,
    zero_state,
)

__all__ = [
    "MAX_AMPLIFICATION",
    "TAIL_DAMPINGS",
    "TAIL_MODE",
    "LayerParams",
    "ModalParams",
    "SsmParams",
    "StepWeights",
    "UnstablePole",
    "complex_dtype_for",
    "decay_powers",
    "etsc",
    "etsc_prefill",
    "fused_step_available",
    "fused_step_compiled",
    "modal_kernel",
    "modal_kernel_from_powers",
    "modal_prefill",
    "pack_state",
    "pole_power",
    "realised_kernel",
    "require_stable",
    "ssm_kernel",
    "ssm_kernel_from_modes",
    "ssm_prefill",
    "ssm_scan",
    "ssm_step",
    "ssm_step_fused",
    "state_rows",
    "step_weights",
    "tail_dampings",
    "unpack_state",
    "zero_state",
]
