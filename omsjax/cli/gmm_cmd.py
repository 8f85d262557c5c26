"""`omsjax gmm`: every preset solver (and EDM's Heun) on an exact Gaussian mixture against the diffrax reference."""

from __future__ import annotations

import json
import time

from omsjax.cli.common import SOLVERS, solver_schedule


def _default_gmm(dim: int = 16, components: int = 8, seed: int = 0):
    import numpy as np

    from omsjax import oracles

    rng = np.random.RandomState(seed)
    weights = rng.dirichlet(np.full(components, 2.0))
    return oracles.GaussianMixture.create(rng.randn(components, dim), 0.05 + 0.3 * rng.rand(components), weights)


HEUN = "EDM Heun"  # omsjax.sample_heun, outside the USF presets


def cmd_gmm(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import omsjax
    from omsjax import noise, oracles
    from omsjax.spacing import time_steps

    ns = noise.vp_linear()
    gmm = _default_gmm()
    model = gmm.model(ns)
    x_T = jax.random.normal(jax.random.PRNGKey(args.seed), (args.batch, gmm.means.shape[1]), jnp.float64)
    t0 = time.perf_counter()
    ref = oracles.reference_solution(lambda x, t: gmm.eps(ns, x, t), ns, x_T, ns.t_max, ns.default_t_end)
    ref_seconds = time.perf_counter() - t0
    run = jax.jit(lambda s, x: omsjax.sample(model, ns, s, x))
    table = {}
    t0 = time.perf_counter()
    for name in SOLVERS:
        row = {}
        for n in args.nfe:
            sched = solver_schedule(name, ns, n, args.skip)
            if sched is None:
                row[n] = None
                continue
            out = run(sched, x_T)
            row[n] = float(jnp.sqrt(jnp.mean((out - ref) ** 2)))
        table[name] = row
    compiles = run._cache_size()
    # EDM's Heun sampler (2 model calls per step: even NFE only) on the same spacing.
    table[HEUN] = {
        n: None
        if n % 2
        else float(
            jnp.sqrt(jnp.mean((omsjax.sample_heun(model, ns, time_steps(ns, n // 2, args.skip), x_T) - ref) ** 2))
        )
        for n in args.nfe
    }
    seconds = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"metric": "rmse_vs_reference", "skip": args.skip, "table": table, "compiles": compiles}))
        return 0
    print(f"Exact Gaussian mixture ({gmm.means.shape[0]} components, {gmm.means.shape[1]}-D), continuous linear VP,")
    print(f"{args.batch} samples, {args.skip} spacing. RMSE of the final sample against the diffrax reference")
    print(f"(Dopri8, rtol=atol=1e-10, {ref_seconds:.1f} s). Lower is better; NFE = model calls.\n")
    head = f"{'solver':<18}" + "".join(f"{'NFE ' + str(n):>11}" for n in args.nfe)
    print(head)
    print("-" * len(head))
    for name, row in table.items():
        cells = "".join(f"{'-':>11}" if v is None else f"{v:>11.2e}" for v in row.values())
        print(f"{name:<18}{cells}")
    best = {n: min((r[n], k) for k, r in table.items() if r[n] is not None) for n in args.nfe}
    print("\nbest per NFE: " + ", ".join(f"{n}: {k}" for n, (_, k) in best.items()))
    print(
        f"{len(table) * len(args.nfe)} runs, {compiles} compilations of the USF sampler (one per schedule length), "
        f"{seconds:.1f} s"
    )
    return 0 if all(np.isfinite(v) for r in table.values() for v in r.values() if v is not None) else 1


def add_gmm(sub) -> None:
    """The `omsjax gmm` parser."""
    from omsjax.spacing import SPACINGS

    g = sub.add_parser("gmm", help="every preset on an exact Gaussian mixture vs. the diffrax reference")
    g.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10, 20])
    g.add_argument("--skip", default="logSNR", choices=list(SPACINGS))
    g.add_argument("--batch", type=int, default=256)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    g.set_defaults(func=cmd_gmm)
