"""Train a tiny language model on MQAR and evaluate it; results come back as plain data (dicts of
numbers and strings, ready for ``json.dump``).

    result = train("linear-grm", steps=1000, num_kv_pairs=32, seed=0)
    result["accuracy"], result["eval"], result["history"], result["train_seconds"]

Recipe (results/README.md, "Set-up"): AdamW lr 1e-2, betas (0.9, 0.98), weight decay 0.1 on
weight matrices only, 50 warm-up steps then cosine to 0.1x, gradient clipping 1.0, a fresh batch
of MQAR sequences every step. Runs on the GPU when there is one, else on the CPU.
"""
import math
import random
import time

import torch

from .checks import check_number, check_positive_int
from .data import accuracy, mqar
from .layers import tiny_lm

EVAL_SEED = 1 << 40             # held-out sequences come from seeds no training batch uses


def set_seed(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def lr_at(step, steps, lr=1e-2, warmup=50, final=0.1):
    """Linear warm-up over ``warmup`` steps, then cosine from lr down to final * lr at the end."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - 1 - warmup)
    return lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def make_optimizer(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98)):
    """AdamW; weight decay on weight matrices only (not on norms, biases, convolution taps)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "conv" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "conv" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr, betas=betas)


@torch.no_grad()
def evaluate(model, seq_len=128, num_kv_pairs=32, n=1000, vocab_size=256, seed=EVAL_SEED,
             batch_size=250, device=None):
    """Accuracy (mean over answer positions) and loss on ``n`` held-out MQAR sequences."""
    seed = seed + 7919 * seq_len + num_kv_pairs                # one held-out set per setting
    inputs, labels = mqar(n, seq_len, num_kv_pairs, vocab_size, seed=seed)
    return {"seq_len": seq_len, "num_kv_pairs": num_kv_pairs,
            **evaluate_on(model, inputs, labels, batch_size, device)}


@torch.no_grad()
def evaluate_on(model, inputs, labels, batch_size=250, device=None, by_position=False):
    """Accuracy and loss (nats) averaged over the labelled positions of (inputs, labels)
    [n, T]; ``by_position``: also the loss at every position t ("loss_by_position", a list of T
    numbers, NaN where nothing is labelled), e.g. for bits per byte as the context grows."""
    device = device or next(model.parameters()).device
    was_training, hits, loss, count = model.training, 0.0, 0.0, 0
    per_t = torch.zeros(inputs.shape[1], dtype=torch.float64)
    n_t = torch.zeros(inputs.shape[1], dtype=torch.float64)
    model.eval()
    for a in range(0, len(inputs), batch_size):
        x, y = inputs[a:a + batch_size].to(device), labels[a:a + batch_size].to(device)
        batch_loss, logits = model(x, y)
        mask = y != -100
        m = int(mask.sum())
        hits, loss, count = hits + accuracy(logits, y) * m, loss + batch_loss.item() * m, count + m
        if by_position:                                     # logits: [n_labelled, vocab]
            ce = torch.nn.functional.cross_entropy(logits, y[mask], reduction="none")
            t = mask.nonzero()[:, 1].cpu()
            per_t.index_add_(0, t, ce.double().cpu())
            n_t.index_add_(0, t, torch.ones_like(t, dtype=torch.float64))
    model.train(was_training)
    out = {"accuracy": hits / count, "loss": loss / count}
    if by_position:
        out["loss_by_position"] = (per_t / n_t).tolist()
    return out


def batch(step, batch_size, seq_len, pairs, vocab_size, seed):
    """The training batch of ``step``, split evenly between the settings in ``pairs`` (a mix)."""
    n = len(pairs)
    parts = [mqar(batch_size // n + (i < batch_size % n), seq_len, p, vocab_size,
                  seed=(seed * 1_000_003 + step) * 64 + i) for i, p in enumerate(pairs)]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def train(model="linear", *, steps=1000, batch_size=32, seq_len=128, num_kv_pairs=32,
          vocab_size=256, lr=1e-2, warmup=50, weight_decay=0.1, clip=1.0, seed=0, evals=None,
          eval_n=1000, log_every=100, eval_every=None, threads=None, device=None, verbose=True,
          name=None, **model_options):
    """Train a preset name (``tiny_lm(model, **model_options)``, built after seeding) or a given
    ``nn.Module`` in place. ``num_kv_pairs`` may be a list: every batch is split evenly between
    its settings (a mixture, as in Zoology). ``evals``: [(seq_len, num_kv_pairs), ...]
    evaluated at the end (default: every training setting). ``threads``: torch.set_num_threads.

    Returns a dict: config, params, state_size, accuracy (mean over evals), eval (one dict per
    setting), history (step, loss, batch accuracy, lr, seconds; plus eval accuracy every
    ``eval_every`` steps), train_seconds, device."""
    pairs = list(num_kv_pairs) if isinstance(num_kv_pairs, (list, tuple)) else [num_kv_pairs]
    _check_train_args(model, steps, batch_size, seq_len, pairs, vocab_size, lr, warmup,
                      weight_decay, clip, eval_n, log_every, eval_every, threads, evals)
    if evals is None:
        evals = [(seq_len, p) for p in dict.fromkeys(pairs)]
    evals = [tuple(e) for e in evals]
    config = dict(steps=steps, batch_size=batch_size, seq_len=seq_len, num_kv_pairs=pairs,
                  vocab_size=vocab_size, lr=lr, warmup=warmup, weight_decay=weight_decay,
                  clip=clip, seed=seed, eval_n=eval_n)
    return fit(model, lambda step: batch(step, batch_size, seq_len, pairs, vocab_size, seed),
               lambda m: [evaluate(m, s, p, n=eval_n, vocab_size=vocab_size) for s, p in evals],
               config=config, steps=steps, lr=lr, warmup=warmup, weight_decay=weight_decay,
               clip=clip, seed=seed, log_every=log_every, eval_every=eval_every,
               threads=threads, device=device, verbose=verbose, name=name,
               vocab_size=vocab_size, **model_options)


def fit(model, next_batch, evaluate_fn, *, config=None, steps=1000, lr=1e-2, warmup=50,
        weight_decay=0.1, clip=1.0, seed=0, log_every=100, eval_every=None, threads=None,
        device=None, verbose=True, name=None, vocab_size=256, **model_options):
    """The training loop behind ``train``, for any task: ``next_batch(step)`` gives the step's
    (inputs, labels) [B, T] (-100: no loss), ``evaluate_fn(model)`` a list of dicts with an
    "accuracy" each (run at the end, and its last entry every ``eval_every`` steps). The recipe
    is train()'s (AdamW, warm-up, cosine, clipping); ``model`` is a preset name (built after
    seeding, with ``vocab_size`` and ``model_options``) or an ``nn.Module`` trained in place.
    Returns the dict train() documents; ``config`` (a dict) is recorded with model, lr, seed."""
    if not callable(next_batch) or not callable(evaluate_fn):
        raise TypeError("next_batch and evaluate_fn must be callables (step -> (x, y); "
                        "model -> [dict, ...])")
    check_positive_int(steps=steps, log_every=log_every)
    if threads is not None:
        torch.set_num_threads(threads)
    device = device or default_device()
    set_seed(seed)
    name = name or (model if isinstance(model, str) else type(model).__name__)
    if isinstance(model, str):
        model = tiny_lm(model, vocab_size=vocab_size, **model_options)
    model = model.to(device).train()
    opt = make_optimizer(model, lr, weight_decay)
    config = dict(model=name, **(config or dict(steps=steps, lr=lr, seed=seed)),
                  model_options=dict(model_options))
    history, start = [], time.perf_counter()
    for step in range(steps):
        x, y = next_batch(step)
        x, y = x.to(device), y.to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss, logits = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        last = step == steps - 1
        evaluate_now = eval_every and (step + 1) % eval_every == 0
        if (step + 1) % log_every == 0 or last or evaluate_now:
            row = dict(step=step + 1, loss=loss.item(), batch_accuracy=accuracy(logits, y),
                       lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - start)
            if evaluate_now and not last:
                row["eval_accuracy"] = evaluate_fn(model)[-1]["accuracy"]
            history.append(row)
            if verbose:
                extra = f"  eval {row['eval_accuracy']:.1%}" if "eval_accuracy" in row else ""
                print(f"{name:>22}  seed {seed}  step {step + 1:5d}/{steps}  "
                      f"loss {row['loss']:.3f}  batch acc {row['batch_accuracy']:6.1%}{extra}  "
                      f"{row['seconds']:6.1f}s", flush=True)
    train_seconds = time.perf_counter() - start
    results = evaluate_fn(model)
    if verbose:
        accs = "  ".join(f"acc@{r['num_kv_pairs']}kv/T{r['seq_len']} {r['accuracy']:.1%}"
                         if "num_kv_pairs" in r else f"acc {r['accuracy']:.1%}"
                         for r in results)
        print(f"{name:>22}  seed {seed}  {accs}  ({train_seconds:.0f}s)", flush=True)
    T = x.shape[1]
    return dict(config=config, params=sum(p.numel() for p in model.parameters()),
                state_size=model.state_size(T),
                accuracy=sum(r["accuracy"] for r in results) / len(results), eval=results,
                history=history, train_seconds=train_seconds, device=str(device))


def _check_train_args(model, steps, batch_size, seq_len, pairs, vocab_size, lr, warmup,
                      weight_decay, clip, eval_n, log_every, eval_every, threads, evals):
    if not isinstance(model, (str, torch.nn.Module)):
        raise TypeError(f"model must be a preset name or an nn.Module, got {type(model).__name__}")
    check_positive_int(steps=steps, batch_size=batch_size, seq_len=seq_len, vocab_size=vocab_size,
                       eval_n=eval_n, log_every=log_every, **{f"num_kv_pairs[{i}]": x
                                                              for i, x in enumerate(pairs)})
    check_positive_int(**{n: x for n, x in (("eval_every", eval_every), ("threads", threads))
                          if x is not None})
    check_number("lr", lr)
    check_number("clip", clip)
    check_number("weight_decay", weight_decay, positive=False)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    if evals is not None and not all(isinstance(e, (tuple, list)) and len(e) == 2
                                     for e in evals):
        raise ValueError(f"evals must be a list of (seq_len, num_kv_pairs) pairs, got {evals!r}")
