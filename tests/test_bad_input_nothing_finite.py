"""Bad input, class 2: a search in which nothing scores finite. A metric that returns inf or NaN for every
schedule used to give a "best" schedule of score inf and no word; now the search raises, naming the metric and
how many schedules it tried. Where some baseline scored finite but no search candidate did, the search warns and
returns the best baseline (never a schedule of unknown quality)."""

import json
import math

import numpy as np
import pytest

import omsjax
from omsjax import noise, presets
from omsjax.search import FindOptions, final, find_schedule
from omsjax.search.archive import Record, schedule_key
from omsjax.search.evaluate import Evaluator

NS = noise.vp_linear()
MODEL = omsjax.Model(lambda p, x, t: 0.1 * x, None, name="tenth", sample_shape=(3,))
OPTIONS = FindOptions(num_samples=4, heldout_samples=4, metric_name="score")


def _find(metric):
    return find_schedule(MODEL, NS, metric=metric, key=0, nfe=3, quick=True, options=OPTIONS)


@pytest.mark.slow(seconds=35)  # a whole quick search (its baselines, 2 stages and the paired end): ~30 s on 2 cores
def test_a_metric_that_is_never_finite_is_an_error():
    with pytest.raises(ValueError, match=r"^no schedule scored finite on the metric score: the \d+ baselines and the"):
        _find(lambda samples, x_T: math.inf)


@pytest.mark.parametrize("value", [math.nan, -math.inf], ids=["nan", "-inf"])
def test_a_metric_of_nan_or_minus_inf_is_an_error_at_once(value):
    """NaN and -inf are no scores at all (+inf is the worst one): the first is an error naming the schedule."""
    with pytest.raises(ValueError, match=rf"^metric score returned {value} on schedule \w+: it must return a real"):
        _find(lambda samples, x_T: value)


def test_a_search_whose_candidates_all_fail_warns_and_returns_the_best_baseline():
    """`final.finish` (the end of every search) with a pool of candidates that all scored inf and a baseline that
    scores finite: a warning that says so, and the baseline is the result."""
    ev = Evaluator(MODEL, NS, num_samples=4, metric=lambda samples, x_T: float(np.mean(samples**2)), metric_name="ms")
    failed = presets.dpm_solver_pp(NS, 3, 2)
    pool = [Record(schedule_key(failed), ev.eval_key, math.inf, 3.0, 3, json.loads(failed.to_json()))]
    baselines = {"DDIM": presets.ddim(NS, 3)}
    with pytest.warns(UserWarning, match=r"no search candidate scored finite on the metric ms \(1 evaluated"):
        res = final.finish(ev, pool, baselines, final.FinalConfig(samples=4))
    assert res.name == "DDIM" and res.verdict == final.NO_BETTER and math.isfinite(res.searched_record.score)
