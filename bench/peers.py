"""The Python peers of ultradict-bench: UltraDict (PyPI `ultradict`) and
multiprocessing.Manager, measured the way the Rust harness measures ultradict.

Usage: python3 peers.py single OPS KEYS | writers PROCESSES OPS | bulk ENTRIES
Prints one JSON object per line: {"scenario", "peer", "value", "unit"} or {"skip": reason}.
"""
import json
import multiprocessing
import sys
import time


# Writes to "distinct keys" cycle through this many keys, as in the Rust harness.
DISTINCT_KEYS = 10_000


def emit(scenario, peer, value, unit="ops/s"):
    print(json.dumps({"scenario": scenario, "peer": peer, "value": value, "unit": unit}), flush=True)


def rate(ops, fn):
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        fn(ops)
        best = max(best, ops / (time.perf_counter() - start))
    return best


def key_str(i):
    return "key-%012d" % i


def ultradicts():
    try:
        from UltraDict import UltraDict  # noqa: F401
    except Exception as err:  # not installed, or its dependencies are missing
        print(json.dumps({"skip": "Python UltraDict: %s" % err}), flush=True)
        return []
    peers = [("Python UltraDict (fork-only lock)", dict(shared_lock=False))]
    try:
        import atomics  # noqa: F401  (UltraDict's shared_lock needs it)
        peers.append(("Python UltraDict (shared_lock)", dict(shared_lock=True)))
    except Exception as err:
        print(json.dumps({"skip": "Python UltraDict shared_lock: %s" % err}), flush=True)
    return peers


def scenarios(peer, ops, keys, d, s, lock):
    """Scenario 1 on one peer: `d` maps u64 keys (hashed as in the Rust harness) to ints,
    `s` maps 16-byte strings to strings, `lock` guards a read-modify-write."""
    ks = [i * 2654435769 % 2**64 for i in range(keys)]
    sk = [key_str(i) for i in range(keys)]
    for i in range(keys):
        d[ks[i]] = i
        s[sk[i]] = key_str(i + 1)

    def distinct(n):
        for i in range(n):
            d[10**12 + i % DISTINCT_KEYS] = i

    def hot(n):
        for i in range(n):
            d[7] = i

    def update(n):
        for _ in range(n):
            with lock:
                d[7] = d.get(7, 0) + 1

    emit("1. read u64, no news", peer, rate(ops, lambda n: [d[ks[i % keys]] for i in range(n)]))
    emit("1. read String(16), no news", peer, rate(ops, lambda n: [s[sk[i % keys]] for i in range(n)]))
    emit("1. write u64, distinct keys", peer, rate(ops, distinct))
    emit("1. write u64, one hot key", peer, rate(ops, hot))
    emit("1. update (read-modify-write) u64", peer, rate(ops, update))


def single(ops, keys):
    for peer, options in ultradicts():
        from UltraDict import UltraDict
        d = UltraDict(buffer_size=1_000_000, auto_unlink=True, **options)
        s = UltraDict(buffer_size=1_000_000, auto_unlink=True, **options)
        scenarios(peer, ops, keys, d, s, d.lock)
        d.unlink()
        s.unlink()
    with multiprocessing.Manager() as m:
        scenarios("multiprocessing.Manager dict", min(ops, 20_000), keys, m.dict(), m.dict(), m.Lock())


def _increment(d, ops):
    # The instance is inherited through fork, as UltraDict's fork-only lock requires.
    for _ in range(ops):
        with d.lock:
            d["counter"] += 1


def writers(processes, ops):
    for peer, options in ultradicts():
        from UltraDict import UltraDict
        d = UltraDict(buffer_size=1_000_000, auto_unlink=True, **options)
        d["counter"] = 0
        start = time.perf_counter()
        procs = [multiprocessing.Process(target=_increment, args=(d, ops)) for _ in range(processes)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - start
        d.apply_update()
        total = d["counter"]
        if total != processes * ops:
            print(json.dumps({"skip": "%s lost updates: %d of %d" % (peer, total, processes * ops)}), flush=True)
        emit("2. %d writers, locked increments (aggregate)" % processes, peer, processes * ops / elapsed)
        d.unlink()


def bulk(entries):
    for peer, options in ultradicts()[:1]:
        from UltraDict import UltraDict
        data = {i: i for i in range(entries)}
        start = time.perf_counter()
        d = UltraDict(data, buffer_size=1_000_000, auto_unlink=True, **options)
        elapsed = time.perf_counter() - start
        emit("5. bulk load %d entries" % entries, "Python UltraDict(dict)", elapsed, "s")
        d.unlink()


if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    mode = sys.argv[1]
    if mode == "single":
        single(int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "writers":
        writers(int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "bulk":
        bulk(int(sys.argv[2]))
