"""Variants of the stacked default VQ-MAF, trained as a run trains it (``select_charts`` with ``stack=True``).

    python benchmarks/stack_variants.py knotted 0,1,2,3,4 four-exact four-subset eight      # one line per run
    python benchmarks/stack_variants.py knotted 0 eight eight+top2 --rounds 2          # alternated, medians

Each variant is a member list and an early-stopping rule (the rest as the default run: the same model, data,
seeds and training settings); every line printed is JSON with the test gap to the oracle, the seconds, each
member's epochs and stacking weight. Variants:

* ``four-exact``: four members (8, 16, 32, 64 charts), patience 10, the exact epoch-0 check on every
  validation point (the default before this version);
* ``four-subset``: the same with the check on 512 validation points, epoch 0 compared on all at the end;
* ``four-subset-ema``: that, the check and the kept weights an exponential moving average of each member's
  flow weights (decay 0.95 per step);
* ``five-128`` / ``five-4``: ``four-subset`` with a fifth, 128- or 4-component atlas;
* ``four-subset-last``: ``four-subset`` with each member's last epoch stacked beside its kept one;
* ``eight-p10``: two draws of each size, patience 10; ``eight``: the default (two draws, patience 5);
* ``six``: ``eight`` without the 8-component atlases; ``seven``: without the second 8-component draw.

A variant's name can carry modifiers, ``eight+top2+h32``: ``topN`` (charts per point of the training
objective), ``hN`` (hidden features), ``tN`` (transforms), ``checkN`` (the check's nearest charts),
``batchN`` (batch size), ``eN`` (the most epochs), ``lrN`` (the learning rate, ``N``·1e-4), ``decayN`` (the
learning rate times 0.3 after every ``N`` epochs without a better check), ``patN`` (the check's patience),
``capN`` (the most epochs of the 8-component members alone).
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vqflows, not an installed one

import torch

import vqflows
import vqflows.training.loop as loop
from vqflows.config import RunConfig
from vqflows.ensemble import VQFlowEnsemble, stacking_weights
from vqflows.runs import evaluate
from vqflows.selection import REPEAT_SEED, select_charts
from vqflows.training import EarlyStopping

#: the loop's own parts, put back before each run (a variant may replace them)
ORIGINAL = (loop.set_up, loop.check, loop._end)
VARIANTS = ("four-exact", "four-subset", "four-subset-ema", "five-128", "five-4", "four-subset-last", "eight-p10", "eight", "six",
            "seven")


def _ema(decay: float) -> None:
    """Make the loop's check score (and keep) an exponential moving average of the flow's weights."""
    set_up, check = loop.set_up, loop.check

    def averaged_set_up(*args, **kwargs):
        state = set_up(*args, **kwargs)
        params = list(state.model.flow.parameters())
        state.ema = [p.detach().clone() for p in params]
        step = state.opt.step

        def stepped(*a, **k):
            out = step(*a, **k)
            with torch.no_grad():
                for e, p in zip(state.ema, params):
                    e.mul_(decay).add_(p.detach(), alpha=1 - decay)
            return out

        state.opt.step = stepped
        return state

    def averaged_check(state, epoch):
        params = list(state.model.flow.parameters())
        raw = [p.detach().clone() for p in params]
        with torch.no_grad():
            for e, p in zip(state.ema, params):
                p.copy_(e)
        stop = check(state, epoch)
        with torch.no_grad():
            for r, p in zip(raw, params):
                p.copy_(r)
        return stop

    loop.set_up, loop.check = averaged_set_up, averaged_check


def _decay_on_stall(every: int) -> None:
    """Make the loop's check multiply the learning rate by 0.3 after every ``every`` epochs without a better score."""
    check = loop.check

    def decaying(state, epoch):
        stop = check(state, epoch)
        if not stop and state.since_best and state.since_best % every == 0:
            for group in state.opt.param_groups:
                group["lr"] *= 0.3
        return stop

    loop.check = decaying


#: modifiers after a variant's name, ``eight+top2+h32``: training ``top``, ``hidden``, ``transforms``,
#: the check's ``top`` (``check8``), ``batch``, the most ``epochs`` (``e30``), the 8-component members' most epochs (``cap25``)
MODIFIERS = {"cap": "cap", "decay": "decay", "pat": "patience", "top": "top", "h": "hidden", "t": "transforms", "check": "check", "batch": "batch_size", "e": "epochs", "lr": "lr"}


def _cap_fewest(epochs: int) -> None:
    """Make the members with the fewest charts (the 8-component ones) train at most ``epochs`` epochs."""
    set_up = loop.set_up

    def capped_set_up(model, *args, **kwargs):
        state = set_up(model, *args, **kwargs)
        if model.K == 8:
            state.config = state.config.replace(epochs=epochs)
        return state

    loop.set_up = capped_set_up


def _modifiers(variant: str) -> tuple[str, dict[str, int]]:
    name, *mods = variant.split("+")
    out = {}
    for mod in mods:
        key = mod.rstrip("0123456789")
        if key not in MODIFIERS or key == mod:
            raise SystemExit(f"unknown modifier {mod!r} (expected one of {', '.join(k + 'N' for k in MODIFIERS)})")
        out[MODIFIERS[key]] = int(mod[len(key):]) * (1e-4 if key == "lr" else 1)
    return name, out


def run(name: str, seed: int, variant: str) -> dict:
    loop.set_up, loop.check, loop._end = ORIGINAL
    full, (variant, mods) = variant, _modifiers(variant)
    check_top = mods.pop("check", None)
    decay, patience_set = mods.pop("decay", None), mods.pop("patience", None)
    cap = mods.pop("cap", None)
    if cap:
        _cap_fewest(cap)
    if decay:
        _decay_on_stall(decay)
    train_mods = {k: mods.pop(k) for k in ("top", "batch_size", "epochs", "lr") if k in mods}
    config = RunConfig(dataset=name, model="vq-maf", seed=seed, **mods)
    splits = vqflows.datasets.load(name, n=10_000, seed=seed)
    sizes, draws, patience = [8, 16, 32, 64], 1, 10
    again = None  # the sizes drawn again (None: all)
    rule = EarlyStopping(patience, 512, None, initial=True)
    if variant == "four-exact":
        rule = EarlyStopping(patience, None, None, initial=True)
    elif variant == "five-128":
        sizes = sizes + [128]
    elif variant == "five-4":
        sizes = [4] + sizes
    elif variant == "six":
        sizes, draws, patience = [16, 32, 64], 2, 5
        rule = EarlyStopping(patience, 512, None, initial=True)
    elif variant == "seven":
        draws, patience, again = 2, 5, [16, 32, 64]
        rule = EarlyStopping(patience, 512, None, initial=True)
    elif variant.startswith("eight"):
        draws, patience = 2, 10 if variant == "eight-p10" else 5
        rule = EarlyStopping(patience, 512, None, initial=True)
    if patience_set is not None:
        rule = EarlyStopping(patience_set, rule.points, rule.top, initial=True)
    if check_top is not None:
        rule = EarlyStopping(rule.patience, rule.points, check_top, initial=True)
    if variant == "four-subset-ema":
        _ema(0.95)
    lasts: list[dict] = []
    if variant == "four-subset-last":
        end = loop._end

        def keep_last(state, hooks):
            lasts.append(copy.deepcopy(state.model.state_dict()))
            return end(state, hooks)

        loop._end = keep_last

    def make(k, partition=None, repeat=0):
        torch.manual_seed(seed + REPEAT_SEED * repeat)
        return config.build_model(3, charts=k, partition=partition)

    candidates = [("gmm", k) for k in sizes] + [("gmm", k, True, r) for r in range(1, draws) for k in again or sizes]
    t0 = time.perf_counter()
    model, _, table = select_charts(make, splits.train, splits.val, candidates=candidates,
                                    config=config.training().replace(early_stopping=rule, **train_mods), stack=True, progress=False)
    seconds = time.perf_counter() - t0
    if lasts:
        members = list(model.members)
        for member, state in zip(list(members), lasts):
            last = copy.deepcopy(member)
            last.load_state_dict(state)
            members.append(last.eval())
        with torch.no_grad():
            weights = stacking_weights(torch.stack([m.log_prob(splits.val) for m in members], -1))
        model = VQFlowEnsemble(members, weights).eval()
    metrics = evaluate(model, splits)
    return {"set": name, "seed": seed, "variant": full, "gap": round(metrics["gap_to_oracle"], 4),
            "seconds": round(seconds, 1), "epochs": [r["epochs"] for r in table if r["trained"]],
            "weights": [round(r["weight"], 3) for r in table if "weight" in r]}


def main(argv: list[str]) -> None:
    rounds = 1
    if "--rounds" in argv:  # the variants alternated, ROUNDS times over, then each one's median seconds
        i = argv.index("--rounds")
        rounds, argv = int(argv[i + 1]), argv[:i] + argv[i + 2:]
    if len(argv) < 3 or any(_modifiers(v)[0] not in VARIANTS for v in argv[2:]):
        raise SystemExit(f"usage: stack_variants.py SET SEEDS VARIANT... [--rounds N] (variants: {', '.join(VARIANTS)})")
    torch.set_num_threads(1)
    seconds: dict[str, list[float]] = {v: [] for v in argv[2:]}
    if rounds > 1:  # imports and first calls before any timed run: one epoch of the first variant, discarded
        run(argv[0], int(argv[1].split(",")[0]), argv[2] + "+e1")
    for seed in (int(s) for s in argv[1].split(",")):
        for _ in range(rounds):
            for variant in argv[2:]:
                line = run(argv[0], seed, variant)
                seconds[variant].append(line["seconds"])
                print(json.dumps(line), flush=True)
    if rounds > 1:
        print(json.dumps({"median_seconds": {v: statistics.median(t) for v, t in seconds.items()}}))


if __name__ == "__main__":
    main(sys.argv[1:])
