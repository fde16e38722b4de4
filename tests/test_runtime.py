"""The allocator setting of mosmos_components.runtime: large tensors freed and allocated again are reused, not
faulted in anew (counted in page faults, not timed)."""

import json
import os
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, Linux only")

PROBE = """
import json, resource, sys, torch
from mosmos_components.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(ROUNDS):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 * 2**20 // 4).sum()  # 64 MB, freed at once
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps([applied, faults]))
"""

ROUNDS = 32
PAGES = 64 * 2**20 // 4096  # the pages of one 64 MB tensor


def _probe(mode: str, **env) -> tuple[bool, int]:
    """Whether the setting applied, and the median page faults of one allocation over the last half of the rounds:
    glibc's heap takes a varying number of rounds (up to 9 seen) to grow to where a block is reused, so any fixed
    short count after a warm-up sometimes catches one more growth; the median of the settled half does not."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE.replace("ROUNDS", str(ROUNDS)), mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    ).stdout
    applied, faults = json.loads(out)
    return applied, int(statistics.median(faults[ROUNDS // 2 :]))


def test_freed_memory_is_reused_not_faulted_in_again():
    applied, faults = _probe("keep")
    if not applied:
        pytest.skip("not glibc: the setting does not apply")
    _, default_faults = _probe("default")
    assert default_faults > PAGES // 2  # glibc unmaps each one: every page is faulted in again
    assert faults < PAGES // 20  # kept: the same pages serve each allocation


def test_the_opt_out_variable_leaves_malloc_alone():
    applied, faults = _probe("keep", MOSMOS_SYSTEM_MALLOC="1")
    assert applied is False and faults > PAGES // 2
