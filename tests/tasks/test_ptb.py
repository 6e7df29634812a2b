"""PTB reader and truncated-BPTT batches on a generated corpus, and the ptb_lstm task."""

from __future__ import annotations

import copy
import gzip
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsebench.data.ptb import EOS, TokenBatches, build_vocabulary, load_ptb, read_words
from sparsebench.env import Env
from sparsebench.errors import DataError
from sparsebench.measure.counts import WEIGHT_LAYERS, weight_tensors
from sparsebench.registry import METHODS
from sparsebench.run.loop import evaluate, lr_factor
from sparsebench.run.plan import RunRequest
from sparsebench.run.train import train
from sparsebench.tasks.ptb_lstm import PtbLstm, PtbLstmConfig, WordLanguageModel
from sparsebench.testing import check_method_conformance

WORDS = [f"w{i}" for i in range(30)] + ["<unk>"]


def make_ptb(root: Path, lines: int = 300, compress: bool = True, seed: int = 0) -> Path:
    """A PTB look-alike: lines start with a space and end with " \\n"; word i tends to follow i - 1."""
    g = torch.Generator().manual_seed(seed)
    folder = root / "ptb"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", lines), ("valid", lines // 5), ("test", lines // 5)):
        text = []
        for _ in range(n):
            length = int(torch.randint(3, 12, (1,), generator=g))
            word = int(torch.randint(0, len(WORDS), (1,), generator=g))
            sentence = []
            for _ in range(length):
                sentence.append(WORDS[word])
                word = (
                    (word + 1) % len(WORDS)
                    if float(torch.rand(1, generator=g)) < 0.8
                    else int(torch.randint(0, len(WORDS), (1,), generator=g))
                )
            text.append(" " + " ".join(sentence) + " \n")
        data = "".join(text).encode()
        if compress:
            (folder / f"ptb.{split}.txt.gz").write_bytes(gzip.compress(data))
        else:
            (folder / f"ptb.{split}.txt").write_bytes(data)
    return root


@pytest.fixture(scope="module")
def ptb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ptb(tmp_path_factory.mktemp("ptb"))


# --- reader ---------------------------------------------------------------------------------------


def test_words_get_an_eos_per_line_and_the_vocabulary_is_by_frequency(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text(" b a \n a c \n\n")
    assert read_words(path) == ["b", "a", EOS, "a", "c", EOS, EOS]
    vocab = build_vocabulary(read_words(path))
    assert vocab == {EOS: 0, "a": 1, "b": 2, "c": 3}  # 3, 2, then ties alphabetical


@pytest.mark.parametrize("compress", [True, False])
def test_load_ptb_encodes_every_split_with_the_training_vocabulary(tmp_path: Path, compress: bool) -> None:
    root = make_ptb(tmp_path, lines=50, compress=compress)
    corpus = load_ptb(root)
    suffix = ".gz" if compress else ""
    words = read_words(root / "ptb" / f"ptb.valid.txt{suffix}")
    inverse = {i: w for w, i in corpus.vocabulary.items()}
    assert [inverse[int(i)] for i in corpus.valid] == words
    lines = gzip.decompress((root / "ptb/ptb.train.txt.gz").read_bytes()) if compress else None
    train_lines = (lines or (root / "ptb/ptb.train.txt").read_bytes()).decode().count("\n")
    assert int((corpus.train == corpus.vocabulary[EOS]).sum()) == train_lines == 50
    assert corpus.train.dtype == torch.int64 and EOS in corpus.vocabulary


def test_unknown_words_become_unk_or_are_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "ptb"
    folder.mkdir()
    (folder / "ptb.train.txt").write_text(" a b <unk> \n")
    (folder / "ptb.valid.txt").write_text(" a zebra \n")
    (folder / "ptb.test.txt").write_text(" b \n")
    corpus = load_ptb(tmp_path)
    assert corpus.valid.tolist() == [corpus.vocabulary[w] for w in ("a", "<unk>", EOS)]
    (folder / "ptb.train.txt").write_text(" a b \n")
    with pytest.raises(DataError, match="zebra"):
        load_ptb(tmp_path)


def test_missing_and_corrupt_files_are_data_errors(tmp_path: Path) -> None:
    root = make_ptb(tmp_path, lines=20)
    (root / "ptb/ptb.test.txt.gz").unlink()
    with pytest.raises(DataError) as err:
        load_ptb(root)
    assert all(s in str(err.value) for s in ("ptb.test.txt[.gz]", "--data-dir", "SPARSEBENCH_DATA"))
    (root / "ptb/ptb.test.txt.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="corrupt"):
        load_ptb(root)


# --- batches --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "batch", "steps"), [(101, 4, 7), (100, 3, 5), (23, 5, 4), (4, 5, 2)])
def test_batches_are_consecutive_chunks_with_targets_shifted_by_one(
    length: int, batch: int, steps: int
) -> None:
    tokens = torch.arange(length)
    split = TokenBatches(tokens, steps)
    assert split.num_examples == length - 1
    chunks = list(split.iterate(batch, shuffle=True, generator=None, drop_last=False))
    assert len(chunks) == split.num_batches(batch, drop_last=False)
    columns = (length - 1) // batch
    scored = []
    for x, y in chunks:
        assert x.shape == y.shape and x.shape[1] <= steps
        assert torch.equal(y, x + 1)  # the target is the next token of the stream
        scored += y.flatten().tolist()
    assert sorted(scored) == list(range(1, length))  # every target exactly once
    # Row r of the main part is the stream from r * columns on, read in order across chunks.
    main = [x for x, _ in chunks if x.shape[0] == batch]
    if main:
        rows = torch.cat(main, dim=1)
        assert torch.equal(rows, torch.arange(batch * columns).view(batch, columns))
    full = list(split.iterate(batch, shuffle=False, generator=None, drop_last=True))
    assert len(full) == split.num_batches(batch, drop_last=True) == columns // steps
    assert all(x.shape == (batch, steps) for x, _ in full)


def test_leftover_tokens_continue_the_last_row() -> None:
    x = list(TokenBatches(torch.arange(23), 4).iterate(5, False, None, drop_last=False))
    last_main, leftover = x[-2][0], x[-1][0]
    assert leftover.shape == (1, 2) and int(leftover[0, 0]) == int(last_main[-1, -1]) + 1


# --- model and task -------------------------------------------------------------------------------


def tiny_model(vocabulary: int = 31, hidden: int = 6, layers: int = 2) -> WordLanguageModel:
    torch.manual_seed(0)
    return WordLanguageModel(vocabulary, hidden, layers, dropout=0.0).double().eval()


def test_state_is_carried_across_chunks_and_reset_per_pass() -> None:
    model, task = tiny_model(), PtbLstm()
    x = torch.randint(0, 31, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        task.on_pass_start(model, training=False)
        whole = model(x)
        task.on_pass_start(model, training=False)
        chunked = torch.cat([model(x[:, :5]), model(x[:, 5:])], dim=1)
        assert torch.allclose(whole, chunked, atol=1e-12)  # carrying the state = one long sequence
        task.on_pass_start(model, training=False)
        fresh = model(x[:, 5:])
        assert not torch.allclose(fresh, chunked[:, 5:])  # reset: no memory of the first chunk
        # A narrower batch continues the carried state's last rows.
        task.on_pass_start(model, training=False)
        model(x[:, :5])
        tail = model(x[2:, 5:])
        assert torch.allclose(tail, whole[2:, 5:], atol=1e-12)


def test_the_carried_state_does_not_backpropagate_into_the_previous_chunk() -> None:
    model = tiny_model().train()
    first = torch.tensor([[1, 2, 3], [3, 2, 1]])
    second = torch.tensor([[4, 5, 6], [6, 5, 4]])
    model(first)
    model.zero_grad()
    model(second).sum().backward()
    grad = model.embedding.weight.grad
    assert bool((grad[1:4] == 0).all()) and bool((grad[4:7] != 0).any())  # truncated BPTT


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(ptb_root: Path) -> None:
    task = PtbLstm(PtbLstmConfig(preset="small", hidden=4, steps=5))
    splits = task.load_data(ptb_root, torch.device("cpu"), val_size=0)
    model = task.build_model()
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    assert evaluate(task, model, splits.test, 7) == pytest.approx(task.vocabulary_size, rel=1e-6)
    assert task.finalize_metric(2.0 * 10, 10) == pytest.approx(math.exp(2.0))
    assert task.finalize_metric(1e6, 1) == math.inf


def test_presets_have_zaremba_shapes_and_weight_counts() -> None:
    """Weights only: nn.LSTM's second bias vector makes PyTorch's parameter count 1,600 (small) above TF's."""
    for preset, hidden, steps, weights, init in (
        ("small", 200, 20, 4_640_000, 0.1),
        ("medium", 650, 35, 19_760_000, 0.05),
    ):
        task = PtbLstm(PtbLstmConfig(preset=preset))
        with torch.device("meta"):
            model = task.build_model()
        assert model.lstm.hidden_size == hidden and model.lstm.num_layers == 2 and task.steps == steps
        count = sum(
            t.numel() for m in model.modules() if isinstance(m, WEIGHT_LAYERS) for t in weight_tensors(m)
        )
        assert count == weights
        assert task.setting("init_scale") == init
    torch.manual_seed(0)
    small = PtbLstm(PtbLstmConfig(preset="small", hidden=20)).build_model()
    assert all(float(p.detach().abs().max()) <= 0.1 for p in small.parameters())
    assert PtbLstm(PtbLstmConfig(preset="medium", hidden=8)).build_model().lstm.dropout == 0.5


def test_zaremba_learning_rate_schedule() -> None:
    recipe = PtbLstm(PtbLstmConfig(preset="small")).default_recipe("dense")
    assert (recipe.epochs, recipe.batch_size, recipe.optimizer) == (13, 20, "sgd")
    factors = [lr_factor(recipe, e, 0) for e in range(13)]
    assert factors == [1.0] * 4 + [0.5**k for k in range(1, 10)]  # TF: 0.5 ** max(i + 1 - 4, 0)


def test_lr_steps_on_the_mean_loss_is_zaremba_lr_1_on_the_summed_loss() -> None:
    """Zaremba's update (loss summed over the unrolled steps, lr 1, clip 5) equals ours (per-token mean,
    lr = steps, clip = 5 / steps), clipping active or not."""
    task = PtbLstm(PtbLstmConfig(preset="small", hidden=5, steps=6))
    task.vocabulary_size = 31
    recipe = task.default_recipe("dense")
    assert (recipe.lr, recipe.grad_clip) == (6.0, 5.0 / 6.0)
    x = torch.randint(0, 31, (4, 6), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 31, (4, 6), generator=torch.Generator().manual_seed(1))
    for scale in (1.0, 100.0):  # 100: logits large enough for the clip to bite
        torch.manual_seed(0)
        base = task.build_model().double()
        with torch.no_grad():
            base.decoder.weight.mul_(scale)
        results = []
        for lr, clip, summed in ((1.0, 5.0, True), (recipe.lr, recipe.grad_clip, False)):
            model = copy.deepcopy(base)
            task.on_pass_start(model, training=True)
            out = model(x)
            nll = nn.functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(4, 6)
            loss = nll.sum(dim=1).mean() if summed else task.loss(out, y)
            assert torch.allclose(task.loss(out, y), nll.mean())
            loss.backward()
            norm = float(nn.utils.clip_grad_norm_(model.parameters(), clip))
            with torch.no_grad():
                for p in model.parameters():
                    p -= lr * p.grad
            results.append((model, norm))
        (a, norm_a), (b, norm_b) = results
        assert norm_a == pytest.approx(6 * norm_b)
        # clip_grad_norm_ divides by norm + 1e-6, a relative difference of ~1e-6 once the clip bites.
        for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.allclose(pa, pb, rtol=0.0, atol=1e-12 if scale == 1.0 else 1e-5)


@pytest.fixture(scope="module")
def shared_tracking(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


TINY = {
    "task.preset": "small",
    "task.hidden": 8,
    "task.steps": 5,
    "train.epochs": 2,
    "train.batch_size": 4,
    "train.eval_batch_size": 10,
}


@pytest.mark.parametrize("method_name", METHODS.builtin_names())
def test_every_method_trains_on_ptb_lstm_or_says_why_not(
    method_name: str, ptb_root: Path, shared_tracking: str
) -> None:
    method_cls = METHODS.get(method_name)
    task = PtbLstm(PtbLstmConfig(preset="small", hidden=8, steps=5))
    reason = method_cls(method_cls.Config()).not_applicable(task.build_model())
    if reason is not None:
        assert isinstance(reason, str) and reason.strip()
        pytest.skip(reason)
    # The runner builds the recipe before applying task.* overrides, so pass the tiny model's lr and clip.
    recipe = task.default_recipe(method_name)
    overrides = {**TINY, "train.lr": recipe.lr, "train.grad_clip": recipe.grad_clip}
    if method_name == "sparse_vd":  # sbrnn: full KL from the first step
        overrides.update({"method.kl_warmup_start": 0, "method.kl_warmup_epochs": 0})
    result = train(
        RunRequest(
            task="ptb_lstm",
            method=method_name,
            overrides=overrides,
            env=Env.resolve(tracking_uri=shared_tracking, data_dir=str(ptb_root)),
            progress=False,
        )
    )
    assert result.status == "FINISHED"
    # 31 words + <eos>; two short epochs on a strongly patterned corpus must beat the uniform guess.
    assert 1.0 < result.test_metric < 32.0
    assert result.summary["weights"] == 2 * 32 * 8 + 2 * 2 * (4 * 8 * 8)


@pytest.mark.parametrize("method_name", METHODS.builtin_names())
def test_every_applicable_method_conforms_on_a_tiny_ptb_lstm(method_name: str) -> None:
    """The plugin contract on the medium preset shrunk (dropout included), through sparsebench.testing."""
    method_cls = METHODS.get(method_name)
    method = method_cls(method_cls.Config())
    task = PtbLstm(PtbLstmConfig(preset="medium", hidden=6, steps=4))
    task.vocabulary_size = 13
    if (reason := method.not_applicable(task.build_model())) is not None:
        pytest.skip(reason)
    check_method_conformance(method, task)


def test_dense_applies_to_ptb_lstm() -> None:
    assert METHODS.get("dense")().not_applicable(PtbLstm(PtbLstmConfig(hidden=4)).build_model()) is None


def test_recipe_for_sparse_vd_is_adam_from_a_dense_run() -> None:
    recipe = PtbLstm(PtbLstmConfig(preset="small")).default_recipe("sparse_vd")
    assert (recipe.optimizer, recipe.lr, recipe.batch_size, recipe.grad_clip) == ("adam", 1e-3, 20, 0.25)
    assert [lr_factor(recipe, e, 0) for e in range(6)] == pytest.approx([1.0, 1.0, 1.0, 1.0, 2 / 3, 1 / 3])
