"""The request loop of every bench_rnn.py worker process (ours, torch eager, torch.nn, JAX).

A worker builds, per job, a few no-argument forward+backward functions (its *contestants*,
each returning its gradients: ``[dx, *parameter gradients]`` in the cell's parameter order,
or None for one that computes no gradients, the GEMM floor)
and answers one JSON request per line on stdin with one JSON reply per line:

* ``{"setup": job}`` -> ``{"first_ms": {name: ms}, "grad_err": {name: float or null},
  "notes": [...]}``. Each contestant runs once (its JIT compile or trace, timed as
  ``first_ms``), and its gradients are compared with the job's reference: the numpy BPTT
  of ``numpy_bptt.py`` on the same weights and data, or another contestant. Warnings raised
  meanwhile, building included (a compiled cell falling back to eager, say), come back as
  notes.
* ``{"runs": n}`` -> ``{"ms": {name: [ms, ...]}}``: n times every contestant, taking turns
  run by run, so that load on the machine hits them alike.

End of input ends the worker. Only the standard library is imported here (and numpy for the
gradient check), so every family's process can share it.
"""

import json
import sys
import time
import warnings

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def relative_error(grads, reference):
    """||g - ref|| / ||ref|| over all the gradients, concatenated (inf if one is missing:
    a contestant that left a ``.grad`` unset)."""
    import numpy as np

    if any(g is None for g in grads):
        return float("inf")

    got = np.concatenate([np.asarray(g, np.float64).ravel() for g in grads])
    ref = np.concatenate([np.asarray(r, np.float64).ravel() for r in reference])
    if got.shape != ref.shape:
        raise ValueError(f"bench worker: gradient sizes differ: {got.shape} vs reference {ref.shape}")
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def serve(build, spec):
    """Answer requests until stdin ends. ``build(job) -> (contestants, reference, notes)``:
    ``contestants`` {name: fn}, ``reference`` a list of gradient arrays or the name of the
    contestant the others are checked against (None: no check), ``notes`` a list of strings
    (for instance, contestants this worker cannot run and why)."""
    now = CLOCKS[spec.get("clock", "wall")]
    contestants = {}
    for line in sys.stdin:
        request = json.loads(line)
        if "setup" in request:
            contestants = {}                     # free the last job's memory before building
            first_ms, grads = {}, {}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                contestants, reference, notes = build(request["setup"])
                for name, fn in contestants.items():
                    t0 = now()
                    grads[name] = fn()
                    first_ms[name] = 1e3 * (now() - t0)
            notes = list(notes) + sorted({f"{w.category.__name__}: {w.message}" for w in caught})
            if isinstance(reference, str):
                reference = grads[reference]
            grad_err = {name: None if reference is None or g is None or g is reference
                        else relative_error(g, reference) for name, g in grads.items()}
            reply = {"first_ms": first_ms, "grad_err": grad_err, "notes": notes}
        else:
            times = {name: [] for name in contestants}
            for _ in range(request["runs"]):
                for name, fn in contestants.items():
                    t0 = now()
                    fn()
                    times[name].append(1e3 * (now() - t0))
            reply = {"ms": times}
        print(json.dumps(reply), flush=True)
