"""iCaRL: herding exemplars, sigmoid distillation, nearest-mean-of-exemplars classification."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clbench.errors import IncompatibleError
from clbench.protocol import Method
from clbench.registry import register_method
from clbench.search import with_base
from clbench.streams import Batch, Experience, Split, StreamInfo


@dataclass(frozen=True)
class ICaRLConfig:
    """Options of :class:`ICaRL`.

    Attributes:
        mem_size: exemplars in total, split equally over the classes seen so far
            (``ceil(mem_size / classes)`` per class, as the official code and Avalanche).
        fixed_memory: ``False`` keeps ``mem_size`` exemplars *per class* instead (Avalanche's
            ``fixed_memory=False``).
        classifier: ``nme`` classifies by the nearest mean of exemplars (the paper's iCaRL);
            ``head`` by the network's outputs (the paper's "hybrid1" ablation).
        hflip_means: image inputs (N, C, H, W): class means also average the features of the
            horizontally flipped exemplars, as the official code and Avalanche.
    """

    mem_size: int = 200
    fixed_memory: bool = True
    classifier: Literal["nme", "head"] = "nme"
    hflip_means: bool = True

    def __post_init__(self) -> None:
        if self.mem_size < 1:
            raise ValueError(f"mem_size must be >= 1, got {self.mem_size}")


def unit_norm(D: Tensor) -> Tensor:
    """L2 norms of the columns of ``D`` (of a vector), at least 1e-12: an all-zero feature (a
    dead ReLU layer) stays zero instead of becoming NaN; every other value is Avalanche's."""
    return torch.norm(D, dim=0).clamp_min(1e-12)


def herding_order(features: Tensor, m: int) -> Tensor:
    """Herding selection (Rebuffi et al., Algorithm 4) of ``m`` exemplars from ``features`` (N, D).

    Features are L2-normalised; the k-th pick maximises ``<k mu - S_{k-1}, phi(x)>``, which for
    unit-norm features is the sample whose addition brings the mean of the picks closest to the
    class mean ``mu`` (``S_{k-1}`` sums the earlier picks). A sample picked again is not stored
    twice but still counts in ``S``, as the official code and Avalanche (the same arithmetic).

    Returns:
        (N,) float tensor: the rank (1..m) at which each sample was picked, 0 = not picked.
    """
    D = features.T
    D = D / unit_norm(D)
    mu = torch.mean(D, dim=1)
    order = torch.zeros(D.shape[1])
    want, limit = min(m, D.shape[1]), max(1000, 2 * m)
    w_t, i, added, selected = mu, 0, 0, set[int]()
    while added < want and i < limit:
        ind_max = int(torch.argmax(torch.mm(w_t.unsqueeze(0), D)))
        if ind_max not in selected:
            added += 1
            order[ind_max] = added
            selected.add(ind_max)
        w_t = w_t + mu - D[:, ind_max]
        i += 1
    return order


def class_mean(features: Tensor, flipped: Tensor | None = None) -> Tensor:
    """The unit-norm mean of unit-norm ``features`` (N, D), averaged with that of ``flipped``."""
    div = torch.ones(features.shape[0], device=features.device) / features.shape[0]
    means = []
    for f in (features, features if flipped is None else flipped):
        D = f.T
        D = D / unit_norm(D)
        means.append(torch.mm(D, div.unsqueeze(1)).squeeze(1))
    mean = (means[0] + means[1]) / 2
    return mean / unit_norm(mean)


def nme_scores(features: Tensor, means: Tensor, known: Tensor) -> Tensor:
    """(N, C) negative Euclidean distances of the L2-normalised ``features`` to the class
    ``means`` (C, D); classes not ``known`` (no exemplars yet) get the lowest score."""
    x = features.float()
    x = (x.T / unit_norm(x.T)).T
    scores = (-torch.cdist(means.to(x.device), x)).T
    return scores.masked_fill(~known.to(x.device), torch.finfo(scores.dtype).min)


def head_inputs(model: nn.Module, x: Tensor) -> Tensor:
    """The features the model's ``head`` module receives for ``x`` (one forward pass)."""
    seen: list[Tensor] = []
    head = model.get_submodule("head")
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[-1]


@register_method("icarl")
class ICaRL(Method):
    """iCaRL: Incremental Classifier and Representation Learning.

    Paper: Rebuffi, Kolesnikov, Sperl & Lampert, "iCaRL: Incremental Classifier and
    Representation Learning", CVPR 2017, arXiv:1611.07725. Official code: github.com/srebuffi/iCaRL;
    Avalanche 0.6 ``ICaRL`` (``_ICaRLPlugin``, ``ICaRLLossPlugin``, ``NCMClassifier``) is the
    reference and the default here, parity-tested.

    Mechanism: training data = the experience's data followed by the exemplar memory. The loss
    is ``BCE(sigmoid(logits), t)`` over all output units, averaged over units and samples, with
    ``t`` the one-hot label except on the classes of earlier experiences, where ``t`` is the
    sigmoid output of the model frozen at the end of the previous experience (distillation).
    After each experience, the ``m = ceil(mem_size / seen classes)`` exemplars of each new class
    are chosen by herding on L2-normalised features (:func:`herding_order`), older classes keep
    their first ``m`` herding picks, and each class mean is the normalised mean of its
    exemplars' normalised features. Evaluation predicts the class whose mean is nearest to the
    normalised feature (NME); features are the input of the model's ``head`` module.

    Hooks used: ``setup`` (head check), ``on_experience_start`` (seen classes), ``train_data``
    (data + exemplars), ``loss`` (BCE with distillation targets), ``on_experience_end`` (herding,
    class means, teacher), ``predict`` (NME), ``experience_report``,
    ``state_dict``/``load_state_dict``.

    Deviations from the paper/official code:
        - As Avalanche, one output layer covers every class of the stream from the start and
          the BCE is averaged over all its units (the paper sums it over the units of the
          classes seen so far and grows the layer), so the units of classes not seen yet are
          also pushed towards 0.
        - ``m = ceil(mem_size / seen classes)`` as the official code and Avalanche (the paper
          writes ``K / t``): the memory may exceed ``mem_size`` by less than one exemplar per
          class. Herding stores a repeated pick once and goes on until ``m`` distinct samples
          are picked, as the official code and Avalanche (the paper's ``argmin`` may repeat);
          it stops after ``max(1000, 2 m)`` iterations (Avalanche: 1000, which cannot fill more
          than 1000 exemplars per class).
        - ``hflip_means`` (default on) averages the features of flipped exemplars into the
          class means for image inputs, as the official code and Avalanche (not in the paper).
        - NME ignores classes without exemplars (lowest score); Avalanche gives them a zero
          mean, at distance 1 from every normalised feature, so it can predict a class it has
          never seen. The two agree whenever some seen class mean lies within distance 1
          (cosine above 1/2) of the feature, which is everywhere on split digits (parity test).
        - Before the first experience ends there are no class means: ``predict`` uses the
          network's outputs (Avalanche cannot evaluate then).
        - The teacher runs in eval mode (Avalanche's old model stays in train mode, so dropout
          and batch-norm batch statistics would be live in it); identical without them.
        - Norms are clamped at 1e-12, so an all-zero feature stays zero (Avalanche: NaN).
        - Features are the input of the model's ``head`` module (every clbench classifier has
          one), where Avalanche takes a separate feature-extractor module; class-incremental
          streams and the classification objective only.
        - ``mem_size`` is a budget, not a tuned hyperparameter (a larger memory always helps), so
          the search space is the learning rate alone; the paper has no other knob.
    """

    Config = ICaRLConfig
    scenario_types: ClassVar[frozenset[str]] = frozenset({"class_incremental"})
    objectives: ClassVar[frozenset[str]] = frozenset({"classification"})
    mechanism_figures: ClassVar[tuple[str, ...]] = ("exemplars",)
    search_space = with_base()

    def __init__(self, config: ICaRLConfig | None = None) -> None:
        super().__init__(config)
        self.exemplars: dict[int, dict[str, Tensor]] = {}  # class -> x (data order), order (herding rank)
        self.observed: list[int] = []  # classes seen so far, in order of arrival
        self.old_classes: list[int] = []  # classes of finished experiences (distilled)
        self.means: Tensor | None = None  # (num_classes, D) unit-norm class means, zeros if unknown
        self.known: Tensor | None = None  # (num_classes,) which classes have a mean
        self.teacher: nn.Module | None = None
        self._pending: dict[str, Tensor] | None = None  # teacher weights from load_state_dict
        self._num_classes = 0
        self._train_bs = 0

    def setup(self, model: nn.Module, stream_info: StreamInfo) -> nn.Module:
        if not isinstance(getattr(model, "head", None), nn.Module):
            raise IncompatibleError(f"method 'icarl' needs a model with a `head` module (its input is "
                                    f"the NME feature); {type(model).__name__} has none")
        self._num_classes = stream_info.num_classes
        return model

    def on_experience_start(self, exp: Experience, model: nn.Module) -> None:
        self._train_bs = 0
        self.observed += [c for c in exp.classes if c not in self.observed]

    def per_class(self) -> int:
        """Exemplars per class: ``ceil(mem_size / seen classes)`` (``mem_size`` if not fixed)."""
        if not self.config.fixed_memory:
            return int(self.config.mem_size)
        return int(math.ceil(self.config.mem_size / max(len(self.observed), 1)))

    def memory(self) -> Split | None:
        """The exemplars as one split (classes in order of arrival, each in data order)."""
        if not self.exemplars:
            return None
        xs = [e["x"] for e in self.exemplars.values()]
        ys = [torch.full((len(e["x"]),), c, dtype=torch.long) for c, e in self.exemplars.items()]
        return Split(torch.cat(xs), torch.cat(ys))

    def train_data(self, exp: Experience, seen: Sequence[Experience]) -> Split:
        mem = self.memory()
        if mem is None:
            return exp.train
        return Split.concat([Split(exp.train.x, exp.train.y), Split(mem.x.to(exp.train.x.device), mem.y)])

    def loss(self, model: nn.Module, batch: Batch, outputs: Tensor, base_loss: Tensor) -> Tensor:
        self._train_bs = max(self._train_bs, len(batch))
        if self._pending is not None:
            self.teacher, self._pending = self._freeze(model, self._pending), None
        assert batch.y is not None
        logits = outputs.float()
        target = torch.zeros(len(batch.y), logits.shape[1], dtype=torch.float, device=logits.device)
        target[range(len(batch.y)), batch.y.long()] = 1
        if self.teacher is not None and self.old_classes:
            with torch.no_grad():
                old = torch.sigmoid(self.teacher(batch.x).float())
            target[:, self.old_classes] = old[:, self.old_classes]
        with torch.autocast(logits.device.type, enabled=False):  # BCE is refused under autocast
            return F.binary_cross_entropy(torch.sigmoid(logits), target)

    def on_experience_end(self, exp: Experience, model: nn.Module) -> None:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                self._add_exemplars(model, exp)
                self._compute_means(model)
        finally:
            model.train(was_training)
        self.teacher = self._freeze(model)
        self.old_classes = sorted(set(self.old_classes) | set(exp.train.y.unique().tolist()))

    def _features(self, model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
        device = next(model.parameters()).device
        parts = [head_inputs(model, x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)]
        return torch.cat(parts).float()

    def _add_exemplars(self, model: nn.Module, exp: Experience) -> None:
        """Herding for the experience's classes, then every older class keeps its first ``m`` picks."""
        m, x, y = self.per_class(), exp.train.x, exp.train.y
        bs = self._train_bs or max(len(x), 1)
        for c in exp.classes:
            idx = (y == c).nonzero().squeeze(1)
            if len(idx) == 0:
                continue
            order = herding_order(self._features(model, x[idx], bs), m)
            keep = ((order > 0) & (order < m + 1)).nonzero().squeeze(1)
            self.exemplars[c] = {"x": x[idx][keep].cpu(), "order": order[keep]}
        for c, e in self.exemplars.items():
            keep = (e["order"] < m + 1).nonzero().squeeze(1)
            self.exemplars[c] = {"x": e["x"][keep], "order": e["order"][keep]}

    def _compute_means(self, model: nn.Module) -> None:
        """Every class's mean from its exemplars (zeros and not ``known`` for the others)."""
        device = next(model.parameters()).device
        means: dict[int, Tensor] = {}
        for c, e in self.exemplars.items():
            xs = e["x"].to(device)
            flip = self.config.hflip_means and xs.dim() == 4
            flipped = head_inputs(model, torch.flip(xs, [3])).float() if flip else None
            means[c] = class_mean(head_inputs(model, xs).float(), flipped)
        if not means:
            return
        dim = next(iter(means.values())).shape[0]
        self.means = torch.zeros(self._num_classes, dim, device=device)
        self.known = torch.zeros(self._num_classes, dtype=torch.bool, device=device)
        for c, mean in means.items():
            self.means[c], self.known[c] = mean, True

    def predict(self, model: nn.Module, batch: Batch) -> Tensor:
        if self.config.classifier == "head" or self.means is None or self.known is None:
            return model(batch.x)
        return nme_scores(head_inputs(model, batch.x), self.means, self.known)

    @staticmethod
    def _freeze(model: nn.Module, state: dict[str, Tensor] | None = None) -> nn.Module:
        teacher = copy.deepcopy(model)
        if state is not None:
            teacher.load_state_dict(state)
        teacher.eval()
        teacher.requires_grad_(False)
        return teacher

    def experience_report(self) -> dict[str, Any]:
        return {"exemplars": sum(len(e["x"]) for e in self.exemplars.values()),
                "exemplars_per_class": self.per_class()}

    def state_dict(self) -> dict[str, Any]:
        teacher = self.teacher.state_dict() if self.teacher is not None else self._pending
        return {"exemplars": [{"cls": c, **e} for c, e in self.exemplars.items()],
                "observed": list(self.observed), "old_classes": list(self.old_classes),
                "means": self.means, "known": self.known, "teacher": teacher}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.exemplars = {int(e["cls"]): {"x": e["x"], "order": e["order"]} for e in state["exemplars"]}
        self.observed = [int(c) for c in state["observed"]]
        self.old_classes = [int(c) for c in state["old_classes"]]
        self.means, self.known = state["means"], state["known"]
        self.teacher, self._pending = None, state["teacher"]
