"""The CPU allocator setting: applied where glibc has mallopt, and large freed blocks are then reused."""

import subprocess
import sys
import textwrap

from spanish_moe_bert.cpu import keep_freed_memory

SCRIPT = textwrap.dedent(
    """
    import ctypes, sys
    from spanish_moe_bert.cpu import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 * 2**20  # an activation of 4096 tokens x 4 experts x 1024 floats
    small = libc.malloc(64)  # in the heap
    first = libc.malloc(size)
    libc.free(first)
    second = libc.malloc(size)
    print("reused" if first == second else "remapped", "heap" if abs(first - small) < 2**31 else "mmap")
    """
)


def test_large_blocks_come_from_the_heap_and_are_reused_once_kept():  # Linux and glibc, as CI and the GPU hosts
    def run(mode):
        out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        return out.stdout.split()

    assert run("default")[1] == "mmap"  # glibc's default: a fresh mapping for every large block
    assert run("keep") == ["reused", "heap"]


def test_other_platforms_are_left_as_they_are(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert keep_freed_memory() is False
