"""`search.loop`: the whole S3 loop end to end, and resumed from its archive with nothing evaluated again."""

import json
from pathlib import Path

import jax
import pytest
from search_cases import NS, tiny_zoo

from omsjax.schedule import check_schedule
from omsjax.search import evaluate as EV
from omsjax.search import ga, loop
from omsjax.search.space import SearchSpace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    return tiny_zoo()


@pytest.mark.slow  # the whole S3 loop on two U-Nets, run twice: about 90 s on 2 cores
def test_search_loop_end_to_end_and_resume(tiny, tmp_path):
    space = SearchSpace(num_positions=4, latencies=[m.latency for m in tiny], mode="joint")
    path = tmp_path / "a.jsonl"
    cfg = loop.LoopConfig(stages=1, initial_random=6, per_stage=4, generations=5, predictor_epochs=5, final_top=2,
                          ga=ga.GAConfig(pop_size=8, num_children=8), heldout_tau=False)  # fmt: skip

    def go():
        # The batch shapes of test_evaluator_archive_resume_reevaluates_nothing (12 samples, chunks of 4), for both
        # evaluators: the programs compiled there and here are the same (one per schedule length and method).
        ev = EV.Evaluator(tiny, NS, space, num_samples=12, archive=path, chunk=4, sample_shape=(8, 8, 1))
        fev = EV.Evaluator(tiny, NS, space, num_samples=12, noise_seed=9, archive=path, chunk=4, sample_shape=(8, 8, 1))
        return ev, fev, loop.search(ev, space, key=jax.random.PRNGKey(0), config=cfg, budget=8.0,
                                    final_evaluator=fev, progress=False)  # fmt: skip

    ev, fev, res = go()
    check_schedule(res.schedule, 2, NS)
    assert float(res.schedule.cost(space.latencies)) <= 8.0
    assert res.final[0].score == min(r.score for r in res.final) and res.final[0].eval_key == "seed9-n12"
    assert [s["stage"] for s in res.stages] == [0, 1] and ev.evaluated == len(res.records)
    assert all(r.cost <= 8.0 for r in res.records)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == ev.evaluated + fev.evaluated
    ev2, fev2, res2 = go()  # the same search again: everything comes from the archive
    assert ev2.evaluated == 0 and fev2.evaluated == 0
    assert res2.schedule.to_json() == res.schedule.to_json()
    with pytest.raises(ValueError, match="needs a finite budget"):
        loop.search(ev, space, key=jax.random.PRNGKey(0), config=cfg, progress=False)
