"""Dropout baselines: binary, Gaussian (Srivastava et al. 2014; Wang & Manning 2013) and variational
dropout A/B (Kingma, Salimans, Welling, NIPS 2015, arXiv 1506.02557).

Rule: multiply each weight layer's input (or each weight) by noise of variance alpha = p / (1 - p)
during training, fixed for binary/Gaussian dropout and learned under a log-uniform prior for
variational dropout; nothing is pruned, so each is a dense row (compression 1.0) in the tables.
Specified in docs/methods.md section 5.

Which layers get noise: every Linear, with rate ``p_input`` on the layer that reads the network
input (the first Linear/Conv2d in module order) and ``p_hidden`` on the others. Conv layers get
noise only when ``conv_noise`` says so; the default ``none`` puts dropout only before the fully
connected layers, the usual LeNet-5 choice.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from sparsebench.config import option
from sparsebench.errors import ConfigError
from sparsebench.method import SparsityMethod, StepContext
from sparsebench.registry import register_method
from sparsebench.toolkit.kl import kingma_neg_kl
from sparsebench.toolkit.surgery import modules_of_type, replace_modules

from ._noise import NOISY_LAYERS, BernoulliNoise, GaussianNoise, Noise, NoisyConv2d, NoisyLinear, WeightNoise

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
KINGMA = "Kingma, Salimans, Welling. Variational Dropout and the Local Reparameterization Trick. NIPS 2015"


@dataclass
class DropoutConfig:
    p_input: float = option(0.2, "drop probability on the network input, i.e. the first weight layer's input")
    p_hidden: float = option(0.5, "drop probability on the input of every other weight layer")
    conv_noise: Literal["none", "element", "channel"] = option(
        "none",
        "noise on conv layers: none (dropout only before Linear layers, the usual LeNet-5 choice), "
        "element (independent per input pixel, like nn.Dropout) or channel (whole input feature maps, "
        "like nn.Dropout2d)",
    )
    max_norm: float = option(
        0.0, "after each step cap the L2 norm of every unit's incoming weights (Srivastava; ars: 3); 0 = off"
    )


@dataclass
class GaussianDropoutConfig(DropoutConfig):
    variant: Literal["A", "B"] = option(
        "A",
        "A: N(1, alpha) noise on layer inputs (Srivastava); B: independent per-weight noise sampled as "
        "the pre-activation (Wang & Manning's fast dropout)",
    )
    eps0: float = option(1e-8, "variant B: floor added to the pre-activation variance inside the square root")


@dataclass
class VariationalDropoutConfig(DropoutConfig):
    """``p_input`` and ``p_hidden`` set the initial alpha = p / (1 - p); they must be in (0, 0.5]."""

    variant: Literal["A", "A2", "B"] = option(
        "A",
        "A: one learned alpha per input unit, noise on inputs; A2: A with the KL scaled by 1/3; "
        "B: one learned alpha per weight, sampled through the local reparameterisation trick",
    )
    eps0: float = option(1e-8, "variant B: floor added to the pre-activation variance inside the square root")


def log_alpha_of(p: float) -> float:
    """log(p / (1 - p)): the Gaussian noise variance that matches binary dropout at rate p."""
    return math.log(p) - math.log1p(-p)


class _DropoutMethod(SparsityMethod):
    """What the three baselines share: which layers get noise, all-True masks, plain export."""

    config: DropoutConfig
    paper = KINGMA

    def check_rate(self, name: str, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"method.{name} is a drop probability and must lie in [0, 1), got {p}")

    def per_channel(self, layer: nn.Module) -> bool:
        return self.config.conv_noise == "channel" and isinstance(layer, nn.Conv2d)

    def make_noise(self, layer: nn.Module, p: float) -> Noise | None:
        """The noise for ``layer`` at rate ``p``, or None to leave the layer plain."""
        raise NotImplementedError

    def convert(self, model: nn.Module) -> nn.Module:
        cfg = self.config
        self.check_rate("p_input", cfg.p_input)
        self.check_rate("p_hidden", cfg.p_hidden)
        first = next(iter(modules_of_type(model, WEIGHT_LAYERS)), None)

        def swap(path: str, m: nn.Module) -> nn.Module | None:
            if isinstance(m, NOISY_LAYERS) or not isinstance(m, WEIGHT_LAYERS):
                return None
            if isinstance(m, nn.Conv2d) and cfg.conv_noise == "none":
                return None
            noise = self.make_noise(m, cfg.p_input if path == first else cfg.p_hidden)
            if noise is None:
                return None
            return NoisyLinear.wrap(m, noise) if isinstance(m, nn.Linear) else NoisyConv2d.wrap(m, noise)

        return replace_modules(model, swap)

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        if self.config.max_norm > 0:
            with torch.no_grad():
                for m in modules_of_type(model, WEIGHT_LAYERS).values():
                    m.weight.copy_(torch.renorm(m.weight, 2, 0, self.config.max_norm))

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        layers = modules_of_type(model, WEIGHT_LAYERS)
        return {path: torch.ones_like(m.weight, dtype=torch.bool) for path, m in layers.items()}

    def export(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
        """Standard layers with the trained weights: in eval mode every noise is the identity."""
        exported = replace_modules(
            copy.deepcopy(model), lambda path, m: m.plain() if isinstance(m, NOISY_LAYERS) else None
        )
        return super().export(exported, masks)

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {
            "method.p_input": trial.suggest_float("method.p_input", 0.0, 0.5),
            "method.p_hidden": trial.suggest_float("method.p_hidden", 0.0, 0.7),
        }


@register_method("binary_dropout")
class BinaryDropout(_DropoutMethod):
    """Inverted Bernoulli dropout on the input of every weight layer (Srivastava et al. 2014)."""

    description = "Bernoulli dropout on layer inputs (dense baseline)"
    paper = "Srivastava et al. Dropout: A Simple Way to Prevent Neural Networks from Overfitting. JMLR 2014"
    Config = DropoutConfig

    def make_noise(self, layer: nn.Module, p: float) -> Noise | None:
        if p == 0.0:
            return None
        return BernoulliNoise(p, per_channel=self.per_channel(layer))


def _check_b_conv(cfg: GaussianDropoutConfig | VariationalDropoutConfig) -> None:
    if cfg.variant == "B" and cfg.conv_noise == "channel":
        raise ConfigError(
            "variant B puts independent noise on every weight, so conv noise cannot be per channel; "
            "set method.conv_noise to element or none"
        )


@register_method("gaussian_dropout")
class GaussianDropout(_DropoutMethod):
    """Gaussian dropout with the variance alpha = p / (1 - p) of binary dropout at the same rate.

    Variant A multiplies the layer input by N(1, alpha) (Srivastava et al. 2014, section 10).
    Variant B samples the pre-activation from N(x theta^T, alpha (x*x)(theta*theta)^T), which is
    per-weight N(1, alpha) noise through the local reparameterisation trick and Wang & Manning's
    fast dropout rescaled for inverted dropout (Kingma's "Gaussian dropout B").
    """

    description = "Gaussian dropout on layer inputs (A) or per weight via the LRT (B, fast dropout)"
    Config = GaussianDropoutConfig
    config: GaussianDropoutConfig

    def convert(self, model: nn.Module) -> nn.Module:
        _check_b_conv(self.config)
        return super().convert(model)

    def make_noise(self, layer: nn.Module, p: float) -> Noise | None:
        if p == 0.0:
            return None
        log_alpha = torch.tensor(log_alpha_of(p), dtype=layer.weight.dtype)
        if self.config.variant == "B":
            return WeightNoise(log_alpha, learned=False, eps0=self.config.eps0)
        return GaussianNoise(log_alpha, learned=False, per_channel=self.per_channel(layer))


@register_method("variational_dropout")
class VariationalDropout(_DropoutMethod):
    """Gaussian dropout whose alpha is learned by maximising the ELBO under a log-uniform prior.

    - A: one log alpha per input unit (per input channel of a conv), noise on the layer input;
    - A2: A with the KL multiplied by 1/3 ("downscaled by a factor 3", Kingma section 5);
    - B: one log alpha per weight, sampled through the local reparameterisation trick.

    log alpha starts at log(p / (1 - p)) and is projected to <= 0 after every optimiser step,
    because Kingma's KL polynomial holds only for alpha <= 1. The regularizer is
    scale * sum(-kingma_neg_kl(alpha)) / N with one term per alpha *parameter* (the gngdb
    convention): a per-unit alpha of variant A counts once, not once per outgoing weight. The
    paper leaves this open and methods.md section 5.4 flags it. The polynomial's constant is
    dropped, so the logged regularizer is the KL up to an additive constant.
    """

    description = "Kingma's variational dropout: learned alpha per input unit (A, A2) or per weight (B)"
    Config = VariationalDropoutConfig
    config: VariationalDropoutConfig

    def check_rate(self, name: str, p: float) -> None:
        if not 0.0 < p <= 0.5:
            raise ConfigError(
                f"method.{name} sets the initial alpha = p / (1 - p), which must be in (0, 1]: "
                f"choose p in (0, 0.5], got {p}"
            )

    def convert(self, model: nn.Module) -> nn.Module:
        _check_b_conv(self.config)
        return super().convert(model)

    def make_noise(self, layer: nn.Module, p: float) -> Noise | None:
        value = log_alpha_of(p)
        w = layer.weight
        if self.config.variant == "B":
            return WeightNoise(torch.full_like(w, value), learned=True, eps0=self.config.eps0)
        # Shaped to broadcast over the input: (in_features,) for a Linear, (channels, 1, 1) for a conv.
        shape = (layer.in_features,) if isinstance(layer, nn.Linear) else (layer.in_channels, 1, 1)
        log_alpha = torch.full(shape, value, dtype=w.dtype, device=w.device)
        return GaussianNoise(log_alpha, learned=True, per_channel=self.per_channel(layer))

    def log_alphas(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The learned log alpha of every noisy layer, keyed by the layer's path."""
        return {path: m.noise.log_alpha for path, m in modules_of_type(model, NOISY_LAYERS).items()}

    def kl(self, model: nn.Module) -> torch.Tensor:
        """Sum over alpha parameters of -(Kingma's polynomial), i.e. the KL up to a constant."""
        terms = [-kingma_neg_kl(torch.exp(la)).sum() for la in self.log_alphas(model).values()]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def regularizer(self, model: nn.Module, ctx: StepContext) -> torch.Tensor | None:
        scale = 1.0 / 3.0 if self.config.variant == "A2" else 1.0
        return self.kl(model) * (scale / ctx.num_train)

    def on_step_end(self, model: nn.Module, ctx: StepContext) -> None:
        with torch.no_grad():
            for log_alpha in self.log_alphas(model).values():
                log_alpha.clamp_(max=0.0)
        super().on_step_end(model, ctx)

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            metrics = {"kl": float(self.kl(model))}
            for path, la in self.log_alphas(model).items():
                metrics[f"mean_alpha.{path}"] = float(torch.exp(la).mean())
                # Share of alphas held at the alpha <= 1 bound: where the prior beats the data.
                metrics[f"alpha_at_bound.{path}"] = float((la >= 0).float().mean())
            return metrics

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {
            "method.p_input": trial.suggest_float("method.p_input", 0.05, 0.5),
            "method.p_hidden": trial.suggest_float("method.p_hidden", 0.05, 0.5),
        }
