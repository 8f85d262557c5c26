"""Bad input beyond issue 29's classes: what a hostile probe of 103 cases (72 calls of the API, 31 `omsjax`
commands) found slipping through, each now a one-line ValueError naming the argument: a folder given as an
archive file, a key that is not a key, a sample shape that is not one, a search space of one position, and
`FindOptions` fields checked only when a search started (an unknown spacing, a NaN guidance scale)."""

import math

import jax
import pytest

import omsjax
from omsjax import noise, presets
from omsjax.search import FindOptions, SearchSpace
from omsjax.search.archive import Archive
from omsjax.search.evaluate import Evaluator

NS = noise.vp_linear()
MODEL = omsjax.Model(lambda p, x, t: 0.1 * x, None, name="tenth", sample_shape=(3,))


def test_an_archive_that_is_a_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=rf"^archive {tmp_path} is a folder, not a JSON-lines file"):
        Archive(tmp_path)
    with pytest.raises(ValueError, match=r"is a folder, not a JSON-lines file"):
        Evaluator(MODEL, NS, num_samples=4, metric=lambda s, x: 0.0, archive=tmp_path)


@pytest.mark.parametrize("key", ["k", 1.5, None, [0, 1]], ids=repr)
def test_prior_names_a_key_that_is_not_one(key):
    with pytest.raises(ValueError, match=r"^prior: key must be a jax\.random key, got"):
        omsjax.prior(NS, key, 2, (3,))


@pytest.mark.parametrize("shape", [(-3,), (0, 2), ("3",), 3, (2.0,)], ids=repr)
def test_generate_and_prior_name_a_shape_that_is_not_one(shape):
    with pytest.raises(ValueError, match=r"^generate: shape must be a tuple of positive ints"):
        omsjax.generate(MODEL, NS, presets.ddim(NS, 2), 2, shape, key=0)
    with pytest.raises(ValueError, match=r"^prior: shape must be a tuple of positive ints"):
        omsjax.prior(NS, jax.random.PRNGKey(0), 2, shape)


def test_a_search_space_of_one_position_is_refused():
    with pytest.raises(ValueError, match=r"SearchSpace\.num_positions must be an int >= 2, got 1"):
        SearchSpace(num_positions=1, latencies=[1.0], mode="model")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(spacing="cosine"), r"FindOptions\.spacing must be one of \('logSNR',"),
        (dict(guidance=math.nan), r"FindOptions\.guidance must be a finite number, got nan"),
        (dict(guidance="2"), r"FindOptions\.guidance must be a finite number, got '2'"),
        (dict(guidance_choices=(1.0, math.inf)), r"FindOptions\.guidance_choices entries must be a finite number"),
        (dict(progress="yes"), r"FindOptions\.progress must be a bool"),
        (dict(t_end=math.inf), r"FindOptions\.t_end must be a finite number, got inf"),
    ],
)
def test_find_options_are_checked_when_made(kw, match):
    with pytest.raises(ValueError, match=match):
        FindOptions(**kw)
    assert FindOptions(guidance_choices=()).guidance_choices == ()  # the default: guidance is not searched
