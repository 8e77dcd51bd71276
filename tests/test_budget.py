"""The memory budget: limits, cgroups, admission and eviction, workers, a ceiling that holds."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader, Dataset

import vcfstore as vs
from vcfstore.memory import LruCache, MemorySample, format_bytes, malloc_trim
from vcfstore.memory.limits import Limit, cgroup_limits, effective_machine_limit, parse_size
from vcfstore.testing import run_measured

GB = 10**9


def test_parse_size():
    assert parse_size("11GB") == 11 * 10**9
    assert parse_size("11GiB") == 11 * 2**30
    assert parse_size("1.5 mb") == 1_500_000
    assert parse_size(12345) == 12345
    assert parse_size("80%", machine_limit=1000) == 800
    for bad in ("eleven", "11XB", "0GB", "150%", -1, True):
        with pytest.raises(vs.VcfstoreError):
            parse_size(bad, machine_limit=1000)


def _fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo.replace("ROOT", str(tmp_path)))
    return tmp_path / "proc"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_nested_and_unlimited(tmp_path):
    cg = tmp_path / "cg2"
    _write(cg / "memory.max", "max\n")  # the root: unlimited
    _write(cg / "slurm" / "memory.max", "8000000000\n")
    _write(cg / "slurm" / "job1" / "memory.max", "max\n")
    _write(cg / "slurm" / "job1" / "memory.high", "6000000000\n")
    proc = _fake_proc(tmp_path, "0::/slurm/job1\n", "41 31 0:38 / ROOT/cg2 rw - cgroup2 cgroup2 rw\n")
    limits = cgroup_limits(proc)
    assert sorted(lim.nbytes for lim in limits) == [6 * GB, 8 * GB]
    assert all("v2" in lim.source for lim in limits)
    assert effective_machine_limit(proc).nbytes == min(6 * GB, effective_machine_limit("/nonexistent").nbytes)


def test_cgroup_v1_nested_sentinel_and_container_root(tmp_path):
    cg = tmp_path / "mem"
    _write(cg / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "unlimited"
    _write(cg / "process_api" / "memory.limit_in_bytes", "9223372036854771712\n")
    _write(cg / "process_api" / "abc" / "memory.limit_in_bytes", "4000000000\n")
    mounts = (
        "35 31 0:32 / ROOT/mem rw,relatime - cgroup cgroup rw,memory\n32 31 0:29 / ROOT/cpu rw - cgroup cgroup rw,cpu\n"
    )
    proc = _fake_proc(tmp_path, "4:memory:/process_api/abc\n1:cpu:/\n", mounts)
    assert [lim.nbytes for lim in cgroup_limits(proc)] == [4 * GB]
    # In a container the process's path is not under the mount: the mount root is its cgroup.
    other = tmp_path / "c"
    other.mkdir()
    _write(other / "mem2" / "memory.limit_in_bytes", "3000000000\n")
    proc2 = _fake_proc(
        other, "4:memory:/docker/xyz\n", "35 31 0:32 /docker/xyz ROOT/mem2 rw - cgroup cgroup rw,memory\n"
    )
    assert [lim.nbytes for lim in cgroup_limits(proc2)] == [3 * GB]


def test_no_cgroup_information(tmp_path):
    assert cgroup_limits(tmp_path / "missing") == []
    assert effective_machine_limit(tmp_path / "missing").source == "physical RAM"


def test_limit_capped_by_machine():
    b = vs.MemoryBudget("100GB", machine_limit=Limit("cgroup v2 /x/memory.max", 8 * GB), meter=_FakeMeter())
    assert b.limit == 8 * GB and "cgroup" in b.limit_source
    assert vs.MemoryBudget("50%", machine_limit=Limit("physical RAM", 8 * GB), meter=_FakeMeter()).limit == 4 * GB


class _FakeMeter:
    """Anonymous memory = a base figure plus whatever the caches hold (as if freed on eviction)."""

    def __init__(self, base: int = 0) -> None:
        self.base = base
        self.caches: list[LruCache] = []

    def read(self) -> MemorySample:
        anon = self.base + sum(c.usage()["anon"] for c in self.caches)
        return MemorySample(rss=anon, anon=anon)


def _budget(limit=1000, base=100, **kw):
    meter = _FakeMeter(base)
    b = vs.MemoryBudget(limit, meter=meter, machine_limit=Limit("test", 10**12), **kw)
    return b, meter


def test_admission_evicts_global_lru_until_it_fits():
    b, meter = _budget(1000, base=100, soft_fraction=0.8)
    a, c = LruCache("a", b), LruCache("c", b)
    meter.caches += [a, c]
    for i in range(3):
        b.admit(100)
        a.put(i, object(), anon=100)
        b.admit(100)
        c.put(i, object(), anon=100)
    assert meter.read().anon == 700 and b.stats.evictions == {}
    a.get(0)  # a[0] is now the most recently used entry
    b.admit(250)  # soft level 800: needs 150 freed -> c[0] and a[1] go (the two oldest), not a[0]
    assert 0 in a and 1 not in a and 0 not in c and 1 in c
    assert b.stats.evictions == {"c": 1, "a": 1} and b.stats.evicted_bytes == 200


def test_above_soft_below_hard_is_allowed_when_nothing_to_evict():
    b, _ = _budget(1000, base=700, soft_fraction=0.5)
    b.admit(250)  # 950 <= 1000
    assert b.stats.admitted == 1


def test_refusal_names_limit_consumers_request_and_fix():
    b, meter = _budget(1000, base=600)
    cache = LruCache("index cache", b)
    meter.caches.append(cache)
    b.admit(100)
    cache.put("w0", object(), anon=100)
    with pytest.raises(vs.MemoryBudgetExceeded) as e:
        b.admit(600, what="opening index of window 7")
    msg = str(e.value)
    assert isinstance(e.value, MemoryError)
    for part in (
        "opening index of window 7 needs 600 B",
        "limit is 1000 B",
        "index cache: 100 B anonymous",
        "everything else",
        "to fix: raise the limit",
    ):
        assert part in msg, msg
    assert "w0" in cache  # a request that can never fit does not empty the caches
    b.admit(100)  # and the budget keeps working afterwards
    assert b.report()["refused"] == 1


def test_soft_level_spares_the_entry_in_use_and_the_hard_limit_does_not():
    b, meter = _budget(1000, base=600, soft_fraction=0.5)  # soft level 500, already above it
    cache = LruCache("w", b)
    meter.caches.append(cache)
    cache.put("old", object(), anon=100)
    cache.put("cur", object(), anon=100)
    assert cache.get("cur") is not None  # the caller works with "cur" now (gathers rows from it)
    b.admit(50)  # 800 + 50 > 500: "old" goes; evicting "cur" would only make the next call load it again
    assert cache.keys() == ["cur"] and b.stats.admitted == 1
    b.admit(350)  # 700 + 350 > 1000, the hard limit: "cur" goes too
    assert cache.keys() == []


def test_mapped_memory_is_soft():
    b, _ = _budget(1000, base=0, mapped_limit=300)
    cache = LruCache("maps", b)
    for i in range(3):
        b.admit(100, kind="mapped")
        cache.put(i, object(), mapped=100)
    b.admit(150, kind="mapped")  # evicts two mapped entries
    assert cache.keys() == [2]
    b.admit(5000, kind="mapped")  # larger than the limit: admitted, counted, never raised
    assert b.stats.mapped_over_limit == 1 and len(cache) == 0


def test_shrink_and_report():
    b, meter = _budget(1000, base=0, soft_fraction=0.5)
    cache = LruCache("w", b, on_evict=lambda v: v.append("closed"))
    meter.caches.append(cache)
    values = [[] for _ in range(8)]
    for i, v in enumerate(values):
        cache.put(i, v, anon=100)
    assert b.shrink() == 3 and values[0] == ["closed"] and values[3] == []
    r = b.report()
    assert r["consumers"]["w"]["anon"] == 500 and r["evictions"] == {"w": 3} and r["peak_anon"] >= 800
    assert "memory budget" in b.report_table()


def test_max_entries_and_replacement():
    closed = []
    cache = LruCache("c", None, max_entries=2, on_evict=closed.append)
    cache.put("a", "A")
    cache.put("b", "B")
    cache.get("a")
    cache.put("c", "C")
    assert closed == ["B"] and "a" in cache and "c" in cache
    assert cache.get("d") is None and cache.stats()["misses"] == 1


def test_track_and_sampler_and_trim():
    b = vs.MemoryBudget("11GB")
    with b.track() as t:
        x = np.ones(50_000_000 // 8)
        del x
    assert t.peak_anon > 0 and t.samples >= 2
    b.start_sampler(0.01)
    b.stop_sampler()
    assert isinstance(malloc_trim(), bool)


def test_anon_ceiling_fixture_can_fail(anon_ceiling):
    with anon_ceiling(30e6):
        np.ones(1_000_000)  # 8 MB
    with pytest.raises(AssertionError, match="grew by"), anon_ceiling(30e6):
        x = np.ones(10_000_000)  # 80 MB
        x[:] = 2


class _BudgetView(Dataset):
    """Items report the budget's limit and meter as a worker process sees them."""

    def __init__(self, budget):
        self.budget = budget

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.budget.limit, type(self.budget.meter).__name__


class _Needs(_BudgetView):
    """A dataset that declares what a worker needs on top of what it holds when it starts."""

    def __init__(self, budget, needs):
        super().__init__(budget)
        self.needs = needs

    def budget_needs(self):
        return self.needs


class _GpuUser(_BudgetView):
    def __getitem__(self, i):
        self.budget.admit(1000, kind="gpu", what="an index copied to the GPU")
        return 0


def _loader(budget, context, dataset=None, **kwargs):
    return DataLoader(dataset or _BudgetView(budget), batch_size=None, multiprocessing_context=context, **kwargs)


def _raised(loader: DataLoader) -> BaseException:
    """What iterating ``loader`` raises, without its traceback.

    A traceback would keep the loader's iterator alive after the test, and torch then waits
    5 s for each of its workers when it is finally collected.
    """
    try:
        list(loader)
    except Exception as e:  # noqa: BLE001 - the caller checks the type
        return e.with_traceback(None)
    raise AssertionError("iterating the loader raised nothing")


@pytest.mark.parametrize(
    "context, how",
    [("fork", how) for how in ("worker_init_fn", "dataloader_kwargs", "split_only", "equal")]
    + [("spawn", "split_only"), ("spawn", "equal")],
)
def test_worker_shares(context, how):
    """Main share + n worker shares = the limit, however the split is asked for and workers are started."""
    budget = vs.MemoryBudget("10GB", machine_limit=Limit("test", 10**12))
    assert budget.limit == 10 * GB and budget.share == 1.0  # not split yet: one process, the whole figure
    if how == "worker_init_fn":  # the configuration users run: the main process takes its share now
        kwargs = {"num_workers": 2, "worker_init_fn": budget.worker_init_fn(main_share=0.6)}
    elif how == "dataloader_kwargs":
        kwargs = budget.dataloader_kwargs(2, main_share=0.6)
    elif how == "split_only":  # no worker_init_fn: workers take their share on first use
        budget.split(2, main_share=0.6)
        kwargs = {"num_workers": 2}
    else:  # no figures at all: equal shares, the main process's once a worker has reported the count
        kwargs = {"num_workers": 2, "worker_init_fn": budget.worker_init_fn()}
    main, worker = (10 * GB / 3, 10 * GB / 3) if how == "equal" else (6 * GB, 2 * GB)
    if how != "equal":
        assert budget.limit == pytest.approx(main, abs=1) and budget.report()["role"] == "main"
    # fork workers are re-created each epoch and take their share again; spawn ones persist
    loader = _loader(budget, context, persistent_workers=context == "spawn", **kwargs)
    for _epoch in range(2):
        seen = {(limit, meter) for limit, meter in loader}
        assert {m for _, m in seen} == {"PssMeter"}
        assert [lim for lim, _ in seen] == [pytest.approx(worker, abs=1)]
        assert budget.limit == pytest.approx(main, abs=1)
        assert budget.limit + 2 * max(lim for lim, _ in seen) <= 10 * GB


def test_dataloader_kwargs_without_workers_keeps_the_whole_limit():
    budget = vs.MemoryBudget("10GB", machine_limit=Limit("test", 10**12))
    kwargs = budget.dataloader_kwargs(0, main_share=0.6, multiprocessing_context="fork", persistent_workers=True)
    assert kwargs == {"num_workers": 0}
    assert budget.limit == 10 * GB and list(DataLoader(_BudgetView(budget), batch_size=None, **kwargs))


def test_budget_given_to_workers_without_a_split_is_split_equally():
    budget = vs.MemoryBudget("9GB", machine_limit=Limit("test", 10**12))
    seen = {limit for limit, _ in _loader(budget, "fork", num_workers=2)}
    assert seen == {3 * GB} and budget.limit == 3 * GB and budget.report()["role"] == "main"


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_share_too_small_is_refused_up_front(context):
    """A worker whose share cannot hold what it uses at start plus one window fails before any item."""
    budget = vs.MemoryBudget("20GB", machine_limit=Limit("test", 10**12))
    needs = 5 * GB  # more than the worker's 20 GB * 0.2 share
    loader = _loader(budget, context, _Needs(budget, needs), **budget.dataloader_kwargs(2, main_share=0.6))
    e = _raised(loader)
    assert isinstance(e, vs.MemoryBudgetExceeded)
    msg = str(e)
    for part in (
        "memory budget too small for DataLoader worker",
        f"its share is {format_bytes(4 * GB)} ((1 - main_share 0.60) / 2 of {format_bytes(20 * GB)})",
        f"needs {format_bytes(needs)} more (its dataset's budget_needs(): reading one window)",
        "to fix: raise the limit to at least",
        "or lower main_share to at most",
    ):
        assert part in msg, msg
    # the figures it states are right: the limit it asks for fits what the worker said it uses
    used = parse_size(msg.split("already uses ")[1].split(" (")[0].replace(" ", ""))
    asked = parse_size(msg.split("raise the limit to at least ")[1].split(",")[0].replace(" ", ""))
    assert asked == pytest.approx((used + needs) * 2 / 0.4, rel=0.01)


def test_main_share_too_small_is_refused_at_split():
    used = vs.MemoryBudget("11GB").measure()[0]
    budget = vs.MemoryBudget(int(used * 1.5))
    with pytest.raises(vs.MemoryBudgetExceeded, match=r"too small for the main process: .*main_share 0\.50.*to fix"):
        budget.split(2, main_share=0.5)


def test_workers_have_no_gpu_share():
    budget = vs.MemoryBudget("10GB", gpu_limit="8GB", machine_limit=Limit("test", 10**12))
    loader = _loader(budget, "fork", _GpuUser(budget), **budget.dataloader_kwargs(1, main_share=0.5))
    e = _raised(loader)
    assert isinstance(e, vs.MemoryBudgetExceeded) and "workers have no share of the GPU limit" in str(e)
    assert budget.gpu_limit == 8 * GB  # the main process keeps all of it


def test_reserve_counts_what_the_block_has_not_allocated_yet():
    b, meter = _budget(1000, base=100, soft_fraction=0.8)  # soft level 800
    cache = LruCache("c", b)
    meter.caches.append(cache)
    for i in range(4):
        b.admit(100)
        cache.put(i, object(), anon=100)  # 500 in all
    with b.reserve(200, "the batch's search"):
        assert b.reserved() == 200 and b.stats.evictions == {}  # 700 fits under 800
        meter.base += 120  # the block allocates 120 of its 200
        assert b.reserved() == 80
        b.admit(150)  # 620 + 80 + 150 = 850 > 800: one entry goes (520 + 80 + 150 = 750)
        assert b.stats.evictions == {"c": 1} and cache.keys() == [1, 2, 3]
        assert b.reserved() == 80  # the eviction freed memory; it did not allocate the reservation
        with pytest.raises(vs.MemoryBudgetExceeded, match="reserved for the batch's search: 200 B"):
            b.admit(750)  # 520 - 300 + 80 + 750 > 1000 with every cache emptied
        assert cache.keys() == [1, 2, 3]
    assert b.reserved() == 0 and b.report()["reserved"] == 0
    with pytest.raises(vs.ArgumentError):
        b.reserve(10, kind="mapped").__enter__()


def test_reserve_gpu():
    b, _ = _budget(10**9, base=0, gpu_limit=1000)
    cache = LruCache("gpu indexes", b)
    for i in range(2):
        b.admit(300, kind="gpu")
        cache.put(i, object(), gpu=300)
    with b.reserve(500, "retrieved embeddings", kind="gpu"):
        assert cache.keys() == [1] and b.report()["reserved_gpu"] == 500  # 600 + 500 > 1000: one copy went
        with pytest.raises(vs.MemoryBudgetExceeded, match="with 500 B reserved"):
            b.admit(600, kind="gpu")
        b.admit(300, kind="gpu")  # 300 + 500 + 300 > 1000: the other copy goes
        assert cache.keys() == []
    assert b.reserved("gpu") == 0


def _sleep_until(event):
    event.wait(30)


def test_tree_counts_pages_shared_by_fork_once():
    """Summed Pss_Anon of a parent and its forked child counts their shared pages once; summed RssAnon twice."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    x = np.ones(200_000_000 // 8)  # 200 MB the child shares copy-on-write
    event = ctx.Event()
    child = ctx.Process(target=_sleep_until, args=(event,))
    child.start()
    try:
        tree = vs.memory.tree_pss_anon()
        assert set(tree.by_pid) >= {os.getpid(), child.pid}
        parent_rss = vs.memory.StatmMeter().read().anon
        child_rss = vs.memory.StatmMeter(child.pid).read().anon
        assert child_rss > 190e6  # the child maps the 200 MB ...
        assert tree.by_pid[child.pid] < 0.6 * child_rss  # ... and is charged about half of it
        # the pair is charged the pages once: about the parent's RssAnon, not the two RssAnon summed
        # (other children of this process, e.g. a test server, are in the tree too: left out here)
        pair = tree.by_pid[os.getpid()] + tree.by_pid[child.pid]
        assert pair < parent_rss + 60e6 < parent_rss + child_rss - 100e6
        with vs.memory.TreePeakSampler(interval=0.01) as sampler:
            time.sleep(0.05)
        assert sampler.max_processes >= 2 and sampler.peak_total >= 200e6
    finally:
        event.set()
        child.join()
    del x


WORKLOAD = """
import json, resource, sys
import numpy as np
import vcfstore as vs
from vcfstore.memory import StatmMeter
store = vs.open_store(sys.argv[1])
_ = store.window_alleles(0)  # warm zarr's codecs and thread pool before taking the baseline
base = StatmMeter().read().anon
limit = base + int(float(sys.argv[2]))
# A hard backstop below the machine: if the budget failed, the process would die, not the box.
resource.setrlimit(resource.RLIMIT_DATA, (limit + 400_000_000, resource.RLIM_INFINITY))
budget = vs.MemoryBudget(limit)
cache = vs.WindowCache(store, budget)
touched = 0
for epoch in range(4):
    for w in range(store.n_windows):
        a = cache.alleles(w, rows=np.arange(0, store.n_haplotypes, 7))
        touched += store.n_haplotypes * -(-len(store.window_sites(w)) // 8)  # the packed bytes cached
        del a
print(json.dumps({"limit": limit, "touched": touched, "report": budget.report()}))
"""


@pytest.fixture(scope="module")
def wide_store(tmp_path_factory):
    from vcfstore.simulate import TreeSequenceSource, simulate_panel

    src = TreeSequenceSource(simulate_panel(1004, 6e6, seed=5))
    return vs.build_store(src, tmp_path_factory.mktemp("wide") / "s", progress=False)


def test_ceiling_holds_in_subprocess(wide_store):
    """Iterate every window four times with room for a few windows: peak RssAnon stays under."""
    headroom = 4e6  # one read's peak (2 MB: it decodes 514 KB shards) and a few packed windows (259 KB each)
    run = run_measured([sys.executable, "-c", WORKLOAD, str(wide_store.path), str(headroom)], interval=0.001)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["touched"] > 5 * headroom  # the workload touches far more than the budget holds
    assert out["report"]["evictions"]["decoded windows"] > 0
    assert run.peak_anon < out["limit"], f"peak {run.peak_anon / 1e6:.1f} MB over limit {out['limit'] / 1e6:.1f} MB"


def test_window_cache_holds_windows_packed(wide_store):
    """A cached window costs its packed bytes (an eighth of its alleles); reads from it equal the store's."""
    cache, w = vs.WindowCache(wide_store), 3
    n_sites = len(wide_store.window_sites(w))
    packed = cache.packed(w)
    assert packed.bits.shape == (wide_store.n_haplotypes, -(-n_sites // 8)) and packed.n_sites == n_sites
    assert cache.cache.usage()["anon"] == packed.bits.nbytes
    full = wide_store.window_alleles(w)
    rows = np.array([5, 0, 5, wide_store.n_haplotypes - 1])
    np.testing.assert_array_equal(cache.alleles(w, rows), full[rows])
    np.testing.assert_array_equal(cache.alleles(w), full)
    assert cache.cache.usage()["anon"] == packed.bits.nbytes  # unpacked copies are the caller's, not cached


def test_budget_too_small_for_one_window(wide_store):
    vs.memory.malloc_trim()  # the budget trims before it refuses: the baseline must not hold freed pages
    budget = vs.MemoryBudget(vs.memory.StatmMeter().read().anon + 1_000_000)
    cache = vs.WindowCache(wide_store, budget)
    sites = wide_store.window_sites(3)
    needs = vs.memory.format_bytes(wide_store.read_peak_bytes(sites.start, sites.stop))
    with pytest.raises(vs.MemoryBudgetExceeded, match=rf"reading window 3 \(decoded windows\) needs {needs}"):
        cache.alleles(3)
    big = vs.MemoryBudget("11GB")
    assert vs.WindowCache(wide_store, big).alleles(3).shape[0] == 2008  # the process keeps working


def test_gpu_memory_is_hard_and_evicts_gpu_entries():
    b, _ = _budget(10**9, base=0, gpu_limit=250)
    cache = LruCache("gpu indexes", b)
    for i in range(2):
        b.admit(100, kind="gpu")
        cache.put(i, object(), gpu=100)
    b.admit(100, kind="gpu")  # 300 > 250: the least recently used GPU entry goes
    assert cache.keys() == [1] and b.report()["evictions"] == {"gpu indexes": 1}
    with pytest.raises(vs.MemoryBudgetExceeded, match="GPU limit"):
        b.admit(300, kind="gpu")
    assert b.report()["gpu"] == 100 and b.report()["peak_gpu"] == 200
