"""Host allocator tuning: freed training memory is reused, not faulted in again every step."""
import json
import subprocess
import sys

import pytest

# Allocates, touches and frees a 64 MiB buffer (above glibc's largest mmap threshold, like small-cnn's 33.5 MB fc1
# gradient) step after step, and reports the median minor page faults of a step: the heap takes a few steps to grow
# to what a step needs (aligned allocations do not fit their freed twin at once), and now and then another
# allocation lands in the freed space, so single steps may fault either way; the median is what a run pays.
PROBE = r"""
import json, resource, statistics
import torch
from pneumo_hpc.runtime.host_memory import keep_freed_memory
state = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
per_step = []
for _ in range(25):
    before = faults()
    torch.ones(16 << 20).sum()  # 64 MiB, touched, freed
    per_step.append(faults() - before)
print(json.dumps({"state": state, "faults": statistics.median(per_step), "per_step": per_step}))
"""


def probe(env_extra):
    env = {"PATH": "/usr/bin:/bin", **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_freed_memory_is_reused_without_page_faults():
    kept, system = probe({}), probe({"PNEUMO_HPC_HOST_MALLOC": "system"})
    assert (kept["state"], system["state"]) == ("keep", "system")
    pages = (64 << 20) // 4096
    assert system["faults"] > pages // 2, system  # glibc unmapped the buffer: every page faults in again
    assert kept["faults"] < pages // 20, kept  # kept in the heap: touched again without faults


@pytest.mark.parametrize("env", [{"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"},
                                 {"MALLOC_ARENA_MAX_": "2"}, {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}])
def test_a_user_tuned_allocator_is_left_alone(env):
    from pneumo_hpc.runtime.host_memory import _user_tuned

    assert _user_tuned(env)
    assert not _user_tuned({"PATH": "/usr/bin", "LD_PRELOAD": ""})
