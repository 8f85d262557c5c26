"""Write tests/data/regression.npz: the golden outputs of `tests/regression_cases.py`.

Run it on the code whose behaviour is to be pinned (it was run on the commit before the package restructuring of
issue 13), from the repository root: `python tests/make_regression.py`. It overwrites the file atomically.
`python tests/make_regression.py CASE...` re-records only the named cases and keeps the others' recorded outputs.
"""

import os
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regression_cases import CASES  # noqa: E402


def main(only: list[str]) -> None:
    out = Path(__file__).resolve().parent / "data" / "regression.npz"
    unknown = sorted(set(only) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown regression case(s) {unknown}; the cases are {sorted(CASES)}")
    arrays = {}
    if only:  # keep every other case's recorded outputs
        with np.load(out) as f:
            arrays = {k: f[k] for k in f.files if k.split("/", 1)[0] not in only}
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in CASES.items():
            if only and name not in only:
                continue
            scratch = Path(tmp) / name
            scratch.mkdir()
            for key, value in case(scratch).items():
                arrays[f"{name}/{key}"] = np.asarray(value)
            print(f"{name}: {sorted(k for k in arrays if k.startswith(name + '/'))}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=out.parent, suffix=".npz")
    os.close(fd)
    with open(tmp_path, "wb") as f:
        np.savez(f, **arrays)
    os.chmod(tmp_path, 0o644)
    os.replace(tmp_path, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
