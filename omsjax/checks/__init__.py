"""Host-side validation, one place: `omsjax.fields` checks single values and typed config fields (each error naming
the field) and holds the JSON round trip of config dataclasses; `inputs` checks the samplers' inputs (each error
naming the argument, the field or the zoo member) before anything is traced or compiled. Both are re-exported
here. `fields` is a module of the package root, below everything, because the core modules that `inputs` checks
(`noise`, ...) validate their own parameters with it."""

from omsjax import fields
from omsjax.checks import inputs
from omsjax.checks.inputs import *  # noqa: F403
from omsjax.fields import *  # noqa: F403

__all__ = [*fields.__all__, *inputs.__all__]
