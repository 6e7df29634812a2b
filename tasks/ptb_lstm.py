"""Word-level Penn Treebank language model: Zaremba et al.'s 2-layer LSTM (arXiv 1409.2329).

Presets (methods.md section 3.3): ``small`` (200 units, 20 unrolled steps, no dropout, weights
U(-0.1, 0.1)) and ``medium`` (650 units, 35 steps, dropout 0.5, U(-0.05, 0.05)), both with an
untied embedding of the hidden size, batch 20, plain SGD and gradient clipping. The hidden state
is carried from one chunk of a row to the next (truncated BPTT) and reset before every pass over
a split. The metric is perplexity, exp(mean token NLL); validation uses PTB's own valid file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from sparsebench.config import TrainConfig, option
from sparsebench.data.ptb import SPLITS, SUBDIR, TokenBatches, file_stem, load_ptb
from sparsebench.errors import ConfigError
from sparsebench.registry import register_task
from sparsebench.task import Metric, PaperResult, Splits, Task

PTB_VOCABULARY = 10_000


@dataclass(frozen=True)
class Preset:
    hidden: int
    steps: int
    dropout: float
    init_scale: float
    epochs: int
    lr_decay: float
    decay_after: int
    """Epochs at the full learning rate before the per-epoch decay starts."""
    max_grad_norm: float


# Zaremba main.lua (small) and the TensorFlow ptb_word_lm.py configs (methods.md section 3.3). Medium
# decays x0.8 per epoch as in the TF tutorial, whose 82.07 is the reference; Zaremba's paper says /1.2.
PRESETS = {
    "small": Preset(
        hidden=200,
        steps=20,
        dropout=0.0,
        init_scale=0.1,
        epochs=13,
        lr_decay=0.5,
        decay_after=4,
        max_grad_norm=5.0,
    ),
    "medium": Preset(
        hidden=650,
        steps=35,
        dropout=0.5,
        init_scale=0.05,
        epochs=39,
        lr_decay=0.8,
        decay_after=6,
        max_grad_norm=5.0,
    ),
}

ZAREMBA_TF = (
    "Zaremba, Sutskever, Vinyals 2014 (arXiv 1409.2329); numbers from the TensorFlow ptb_word_lm.py docstring"
)
SBRNN = "Chirkova, Lobacheva, Vetrov 2018 (arXiv 1810.10927), sbrnn Experiments/Word_PTB/Results"


@dataclass
class PtbLstmConfig:
    preset: Literal["small", "medium"] = option(
        "medium", "Zaremba's small (200 units) or medium (650 units) LSTM"
    )
    hidden: int | None = option(None, "LSTM units and embedding size (None = the preset's)")
    steps: int | None = option(None, "unrolled time steps per chunk of truncated BPTT (None = the preset's)")
    layers: int = option(2, "stacked LSTM layers")
    dropout: float | None = option(
        None,
        "drop probability on the embedding output, between LSTM layers and before the softmax "
        "(None = the preset's)",
    )
    init_scale: float | None = option(None, "every parameter starts U(-s, s) (None = the preset's)")


class WordLanguageModel(nn.Module):
    """Embedding -> stacked LSTM -> softmax layer, carrying its (h, c) state across calls.

    The state is detached between calls, so gradients flow through one chunk only (truncated
    BPTT). A batch with fewer rows than the carried state continues the state's *last* rows: a
    split's leftover tokens follow its last row in the stream (``sparsebench.data.ptb``).
    """

    def __init__(self, vocabulary: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, hidden)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(hidden, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, vocabulary)
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None

    def reset_state(self) -> None:
        self.state = None

    def carried_state(self, rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.state is None or self.state[0].shape[1] < rows:
            return None
        h, c = self.state
        return h[:, -rows:].contiguous(), c[:, -rows:].contiguous()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (batch, steps, vocabulary) of the next token at every position."""
        x = self.dropout(self.embedding(tokens))
        out, state = self.lstm(x, self.carried_state(tokens.shape[0]))
        self.state = (state[0].detach(), state[1].detach())
        return self.decoder(self.dropout(out))


@register_task("ptb_lstm")
class PtbLstm(Task):
    description = "Penn Treebank word-level LM, Zaremba 2-layer LSTM (small 200 / medium 650 units)"
    paper = "Zaremba, Sutskever, Vinyals. Recurrent Neural Network Regularization. arXiv 1409.2329, 2014"
    Config = PtbLstmConfig
    metric = Metric("perplexity", unit="")
    family = "ptb"
    data_files = tuple(f"{SUBDIR}/{file_stem(split)}[.gz]" for split in SPLITS)
    references = (
        PaperResult(
            "dense", 82.07, 1.0, ZAREMBA_TF, source="TF tutorial (82.7 in Zaremba's paper)", note="medium"
        ),
        PaperResult(
            "dense", 115.91, 1.0, ZAREMBA_TF, source="TF tutorial; zaremba README says 115", note="small"
        ),
        PaperResult(
            "dense",
            129.32,
            1.0,
            SBRNN,
            source="log_dccd.txt",
            note="1x LSTM-256 one-hot, early stopped; not this model",
        ),
        PaperResult(
            "sparse_vd",
            109.22,
            22.1,
            SBRNN,
            source="log_lccl.txt",
            note="1x LSTM-256 one-hot input, 150 epochs of Adam; not this model",
        ),
    )

    def __init__(self, config: PtbLstmConfig | None = None) -> None:
        super().__init__(config)
        self.vocabulary_size = PTB_VOCABULARY  # replaced by the training file's vocabulary in load_data

    @property
    def preset(self) -> Preset:
        return PRESETS[self.config.preset]

    def setting(self, name: str) -> float:
        """A task option, falling back to the preset where it is None."""
        value = getattr(self.config, name)
        return getattr(self.preset, name) if value is None else value

    @property
    def steps(self) -> int:
        steps = int(self.setting("steps"))
        if steps < 1:
            raise ConfigError(f"task.steps must be at least 1, got {steps}")
        return steps

    def load_data(self, data_dir: Path, device: torch.device, val_size: int) -> Splits:
        """PTB's own train/valid/test files; ``val_size`` does not apply (valid is a file of its own)."""
        corpus = load_ptb(data_dir)
        self.vocabulary_size = len(corpus.vocabulary)
        steps = self.steps
        return Splits(
            TokenBatches(corpus.train.to(device), steps),
            TokenBatches(corpus.valid.to(device), steps),
            TokenBatches(corpus.test.to(device), steps),
        )

    def build_model(self) -> nn.Module:
        hidden, dropout, scale = (
            int(self.setting("hidden")),
            float(self.setting("dropout")),
            self.setting("init_scale"),
        )
        if hidden < 1 or self.config.layers < 1:
            raise ConfigError(
                f"task.hidden and task.layers must be at least 1, got {hidden} and {self.config.layers}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"task.dropout is a drop probability in [0, 1), got {dropout}")
        model = WordLanguageModel(self.vocabulary_size, hidden, self.config.layers, dropout)
        for p in model.parameters():  # Zaremba: every parameter, biases and embedding included
            nn.init.uniform_(p, -scale, scale)
        return model

    def recipes(self) -> dict[str, TrainConfig]:
        """Zaremba's SGD recipe as the standard; Adam as sbrnn trains Sparse VD for per-weight alphas.

        Zaremba minimises the NLL *summed* over the unrolled steps (averaged over the batch) with
        lr 1 and clips that gradient's norm at 5. Our loss is the per-token mean, so the same updates
        need lr = steps and clip = 5 / steps (20 and 0.25 for small, as in PyTorch's
        word_language_model example).

        Sparse VD starts from a dense run (``--init-from``) and, like sbrnn, needs no KL warm-up and
        a noise std of e^-3 to start: ``--set method.kl_warmup_start=0 method.kl_warmup_epochs=0
        method.init_log_sigma2=-6``. Six epochs of Adam 1e-3 (flat, then linearly to 0 over the
        second half) instead of sbrnn's 150 from scratch keep it within a CPU budget.
        """
        preset, steps = self.preset, self.steps
        standard = TrainConfig(
            epochs=preset.epochs,
            batch_size=20,
            optimizer="sgd",
            lr=float(steps),
            momentum=0.0,
            lr_schedule="exponential_after",
            lr_decay=preset.lr_decay,
            lr_step=preset.decay_after,
            grad_clip=preset.max_grad_norm / steps,
            eval_batch_size=20,
        )
        sbrnn = TrainConfig(
            epochs=6,
            batch_size=20,
            optimizer="adam",
            lr=1e-3,
            lr_schedule="linear",
            grad_clip=preset.max_grad_norm / steps,
            eval_batch_size=20,
        )
        return {"standard": standard, "per_weight_alpha": sbrnn}

    def example_input(self, device: torch.device) -> torch.Tensor:
        """One token, so FLOPs are counted per predicted token."""
        return torch.zeros(1, 1, dtype=torch.int64, device=device)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean NLL per target token."""
        return F.cross_entropy(output.flatten(0, -2), target.flatten())

    def score_sum(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed NLL of the target tokens (in float32 even when the logits are bf16)."""
        return F.cross_entropy(output.flatten(0, -2).float(), target.flatten(), reduction="sum")

    def finalize_metric(self, total: float, count: int) -> float:
        """Perplexity exp(mean NLL); inf where the mean is beyond float range (a diverged model)."""
        mean = total / max(1, count)
        return math.exp(mean) if mean < 700.0 else math.inf

    def on_pass_start(self, model: nn.Module, training: bool) -> None:
        for m in model.modules():
            if isinstance(m, WordLanguageModel):
                m.reset_state()
