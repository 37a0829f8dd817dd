"""How many aten ops one call dispatches, and how many of them wait for the device (host syncs).

On a GPU the host launches every op and the step is only as fast as it can launch them, so the op count is
a cost that can be measured on any machine: torch.profiler on the CPU sees the same ops. Counted: every
`aten::` event, nested ones included (an op that calls others counts them all), as bench/README.md's
tables do. Host syncs: `aten::_local_scalar_dense`, which every `.item()`, `bool(tensor)` and `if tensor:`
reaches (a CPU tensor's `.tolist()` dispatches nothing to count; on a GPU it is a device-to-host copy).
"""

from typing import Callable, Dict

SYNC_OPS = ("aten::_local_scalar_dense",)


def count_ops(fn: Callable[[], object]) -> Dict[str, int]:
    """{"aten_ops", "host_syncs"} of one call `fn()` (run once, under the profiler; CPU events only)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [event.name for event in prof.events() if event.name.startswith("aten::")]
    return {"aten_ops": len(names), "host_syncs": sum(name in SYNC_OPS for name in names)}
