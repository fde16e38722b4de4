"""The allocator setting of mosmos_components.runtime: large tensors freed and allocated again are reused, not
faulted in anew (counted in page faults, not timed)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, Linux only")

PROBE = """
import resource, sys, torch
from mosmos_components.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(8):  # glibc settles on reusing the block after a few rounds
    torch.ones(64 * 2**20 // 4).sum()  # 64 MB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(64 * 2**20 // 4).sum()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


PAGES = 5 * 64 * 2**20 // 4096  # the pages of the five 64 MB tensors the probe counts


def _probe(mode: str, **env) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env={**os.environ, **env}
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_memory_is_reused_not_faulted_in_again():
    applied, faults = _probe("keep")
    if applied != "True":
        pytest.skip("not glibc: the setting does not apply")
    _, default_faults = _probe("default")
    assert default_faults > PAGES // 2  # glibc unmaps each one: every page is faulted in again
    assert faults < PAGES // 20  # kept: the same pages serve each allocation


def test_the_opt_out_variable_leaves_malloc_alone():
    applied, faults = _probe("keep", MOSMOS_SYSTEM_MALLOC="1")
    assert applied == "False" and faults > PAGES // 2
