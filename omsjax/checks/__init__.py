"""Host-side validation, one place: `fields` checks typed config fields (each error naming the field) and holds the
JSON round trip of config dataclasses; `inputs` checks the samplers' inputs (each error naming the argument, the
field or the zoo member) before anything is traced or compiled. Both are re-exported here."""

from omsjax.checks import fields, inputs
from omsjax.checks.fields import *  # noqa: F403
from omsjax.checks.inputs import *  # noqa: F403

__all__ = [*fields.__all__, *inputs.__all__]
