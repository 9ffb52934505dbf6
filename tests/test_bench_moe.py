"""bench_moe's GEMM floor: the experts' grouped GEMMs at balanced loads against dense's GEMMs of the same FLOPs."""

import sys
from pathlib import Path

import torch.nn.functional as F
from tiny_config import make_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_moe  # noqa: E402


def test_gemm_floor_times_the_expert_and_dense_gemms_of_equal_flops(monkeypatch):
    config = make_config()
    shapes = []
    grouped_mm = F.grouped_mm

    def recording(x, w, offs):
        shapes.append((tuple(x.shape), tuple(w.shape), offs.tolist()))
        return grouped_mm(x, w, offs=offs)

    monkeypatch.setattr(bench_moe.F, "grouped_mm", recording)
    floor = bench_moe.gemm_floor(config, tokens=64, rounds=2)
    batched = "expert GEMMs alone, one bmm each (balanced loads)"
    workers = "expert GEMMs alone, whole experts to single-threaded workers (balanced loads)"
    assert set(floor) == {"expert GEMMs alone (balanced loads)", batched, workers, "dense GEMMs alone"}
    assert all(seconds > 0 for seconds in floor.values())
    e, h, i, k = config.num_experts, config.hidden_size, config.moe_intermediate_size, config.num_experts_per_tok
    rows = 64 * k
    balanced = [rows // e * (n + 1) for n in range(e)]
    # Every expert gets the same rows, the up projection then the down projection, as the training path runs them.
    assert shapes[0] == ((rows, h), (e, h, 2 * i), balanced) and shapes[1] == ((rows, i), (e, i, h), balanced)
    assert len(shapes) == 2 * 3  # two GEMMs per round, the warm-up round included
    assert balanced[-1] == rows  # the offsets cover every row


def test_gemm_floor_batches_the_same_expert_gemms_in_one_bmm_each(monkeypatch):
    config = make_config()
    shapes = []
    bmm = bench_moe.torch.bmm

    def recording(x, w):
        shapes.append((tuple(x.shape), tuple(w.shape)))
        return bmm(x, w)

    monkeypatch.setattr(bench_moe.torch, "bmm", recording)
    bench_moe.gemm_floor(config, tokens=64, rounds=1)
    e, h, i, k = config.num_experts, config.hidden_size, config.moe_intermediate_size, config.num_experts_per_tok
    per_expert = 64 * k // e
    assert shapes[:2] == [((e, per_expert, h), (e, h, 2 * i)), ((e, per_expert, i), (e, i, h))]


def test_single_threaded_workers_are_started_threads_and_leave_the_callers_thread_count():
    threads = bench_moe.torch.get_num_threads()
    workers = bench_moe.single_threaded_workers(2)
    try:
        assert len(workers._threads) == 2  # both started before the first timed step
        assert bench_moe.torch.get_num_threads() == 2  # the workers' set_num_threads(1) did not stick to the caller
        idents = set(workers.map(lambda _: bench_moe.threading.get_ident(), range(8)))
        assert idents <= {thread.ident for thread in workers._threads}  # the work runs on them, not the caller
    finally:
        workers.shutdown()
        bench_moe.torch.set_num_threads(threads)
