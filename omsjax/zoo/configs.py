"""The named training configs of the digits zoos (`CONFIGS`, `named_config`): what `omsjax train --config NAME`
trains."""

from __future__ import annotations

from omsjax import nets, train

__all__ = ["CONFIGS", "named_config"]


def _digits(channels, mults=(1, 2), steps=6000, net_kw=None, **kw) -> train.TrainConfig:
    net = nets.UNetConfig(channels=channels, channel_mults=mults, **(net_kw or {}))
    return train.TrainConfig(net=net, steps=steps, **kw)


# The shipped digits zoo is digits-xxs .. digits-m: widths 10..32 span 10x in parameters (63k .. 634k).
# digits-l (1.4M) is there to train yourself; on a 2-core CPU it costs more than the other four together.
CONFIGS: dict[str, train.TrainConfig] = {
    "digits-xxs": _digits(10),
    "digits-xs": _digits(16),
    "digits-s": _digits(24),
    "digits-m": _digits(32),
    "digits-l": _digits(48),
    "tiny": _digits(8, (1,), steps=200, batch_size=32, warmup=20, checkpoint_every=100),
}
# The class-conditional family (checkpoints/digits-cond): the same U-Nets with a class embedding, trained with 10%
# label dropout (classifier-free guidance).
CONFIGS.update(
    {
        f"digits-cond-{size}": _digits(ch, net_kw={"num_classes": 10})
        for size, ch in (("xxs", 10), ("xs", 16), ("s", 24), ("m", 32))
    }
)


def named_config(name: str, steps: int | None = None) -> train.TrainConfig:
    """The training config named `name` (a key of `CONFIGS`, e.g. "digits-m"), with `steps` replaced if given."""
    if name not in CONFIGS:
        raise ValueError(f"unknown training config {name!r}; expected one of {sorted(CONFIGS)}")
    cfg = CONFIGS[name]
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        d = cfg.to_dict()
        d["steps"] = int(steps)
        cfg = train.TrainConfig.from_dict(d)
    return cfg
