"""HUM: the Hybrid Uplift Model (spec §1), multi-treatment and multi-response.

Reading order: the config, one branch (treatment-aware feature selection + a
multi-task mixture of experts), then the model that runs K branches with treated
and control inputs, the masked loss with the KL term, and prediction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from models.base import UpliftNet, without_positive_part_zeros
from models.kernels import bag_sum_relu
from models.layers import Experts, JointTower, Towers, gate_mix, positive


@dataclass
class HUMConfig:
    n_fields: int
    vocab_size: int
    n_treatments: int  # K >= 1
    n_responses: int  # R >= 1
    emb_dim: int = 32
    n_experts: int = 3
    expert_hidden: tuple[int, ...] = (128, 64)
    tower_hidden: tuple[int, ...] = (32,)
    kl_weight: float = 1.0  # 0 = "HUM w/o KL"
    dropout: float = 0.0
    # "sum": e_x^k = Σ_j a^k(j) e_{x,j} exactly as in the spec; "scale": concat_j a^k(j) e_{x,j}.
    pooling: Literal["sum", "scale"] = "sum"
    # "field": a^k = softmax(W^k e_t + b^k), the same for every user (spec);
    # "target": the treatment embedding also queries the user's field embeddings,
    # a^k(j) = softmax_j(W^k e_t + b^k + (U^k e_t)·e_{x,j} / √d), so the selection is per user.
    attention: Literal["field", "target"] = "field"
    # "outcome": the treated path predicts ŷ^k itself (spec); "residual": the treated path
    # predicts an offset to its branch's control logit, ŷ^k = softplus(z^{0,k} + u^k) (u^k starts
    # at or near 0, see offset_init), and every treated row also trains the control path.
    treated_head: Literal["outcome", "residual"] = "outcome"
    # False (spec as written, PyTorch defaults): a^k averages the fields (weights ~1/f) and
    # e_t ~ N(0, 1) while e_x ~ N(0, 0.05²), so at the start the experts' input is almost
    # all treatment embedding. True: attention weights times f (uniform attention passes
    # each field at its own scale) and e_t drawn at the field embeddings' scale.
    balanced: bool = False
    # Which control the treated outcome is compared with. "mean": ŷ^{0,*}, the mean of the
    # branches' control heads (spec §1.4), so δ^k also carries the branches' disagreement
    # on the control outcome. "own": ŷ^k = ŷ^{0,*} + (ŷ^{k} − ŷ^{0,k}), branch k's own
    # treated − control difference on top of the consensus control.
    control: Literal["mean", "own"] = "mean"
    # What the residual treated head reads. "treated": its own pass through the branch with
    # e_t^k (attention, experts and gates of the treated input, spec). "control": the control
    # pass's mixed representation, so u^k is a head on the representation every control and
    # arm-k row trains (the branch and its treated and control heads stay per treatment).
    treated_input: Literal["treated", "control"] = "treated"
    # Residual head only. False: a treated row's error trains the offset u^k and the control
    # logit it is added to. True: the control logit is held fixed on treated rows (stop-gradient),
    # so only control rows fit the control path and the offset alone carries the effect.
    detach_control: bool = False
    # Residual head only: the share of a treated row's gradient that reaches the control logit
    # (its value is unchanged). 1: as above; 0: the same as detach_control; in between, the
    # control path leans on control rows while treated rows still shape it.
    control_grad: float = 1.0
    # Residual head only: the control logit the offset u^k is added to, b^k = (1 − s)·z^{0,k} + s·z̄^0
    # with z̄^0 = mean_k z^{0,k} and s = offset_mean. 0: branch k's own (its control path is then
    # trained by control and arm-k rows only). s > 0: every arm's rows also train every branch's
    # control path (1: as M3TN's one control head is); with control="own", δ^k then takes
    # ŷ^k − softplus(b^k), the effect on the control the offset sits on, over ŷ^{0,*}.
    offset_mean: float = 0.0
    # "branch": every treatment's branch has its own experts (spec). "shared": one set of
    # experts serves every branch (each keeps its attention, gates, control and treated heads),
    # so the representation is trained on every arm's rows.
    experts: Literal["branch", "shared"] = "branch"
    # Residual head only: how the offset's output layer starts. "zero": u^k = 0 exactly, so δ
    # starts at 0, but the offset tower's hidden layers get no gradient until that layer has
    # grown, and the weak effects are never learned before early stopping (measured: t2 ρ ≈ 0).
    # "uniform": the usual ±1/√fan_in weights (bias 0), so δ starts small and every layer learns
    # from the first step.
    # "small": the uniform weights / 10, so the offset's random start (a seed-dependent effect
    # ranking that weak effects may never overwrite) is 10× smaller while every layer still learns.
    offset_init: Literal["zero", "uniform", "small"] = "zero"
    # Residual head only: the offset's towers. "response": one tower per response over that
    # response's mixed representation (as the control towers). "joint": one tower per branch over
    # every response's mixed representation, giving all R offsets, so the responses' effects share
    # what they have in common (the same users moved by the same strategy); the control path keeps
    # its per-response towers (MMoE over responses, spec).
    offset_tower: Literal["response", "joint"] = "response"
    # Residual head only: an additive ("wide") part of the offset, u^k_r += Σ_j w^k_r[x_j], one
    # scalar per (treatment, response, feature id), starting at 0. "none": the deep tower alone;
    # "add": deep tower + wide sum; "only": the wide sum alone (a generalized additive effect on
    # the control logit: few parameters, so little variance where the effect is weak).
    offset_wide: Literal["none", "add", "only"] = "none"
    # None: the prediction loss is the squared error. A number δ (in target units): squared error up to
    # |residual| δ, linear beyond (2 × Huber, so equal to the squared error near the fit): zero-inflated
    # responses (users who never came back: log1p target 0 where most sit near 1) then pull the fit, and
    # the effects' gradients, less than their square. The reported "mse" stays the squared error.
    huber_delta: float | None = None
    # Response indices fitted on their positive rows only: a row whose target is 0 there adds nothing to
    # the loss (nor to the reported mse). The amount part of a two-part model, for a zero-inflated
    # response whose zero share no treatment moves (the train stage checks): the zeros then carry no
    # effect, only noise, and the largest residuals of the log1p scale.
    positive_part: tuple[int, ...] = ()
    # How many ids each field owns, in id order (the encoder's layout: field j's ids follow
    # field j−1's). Known, it lets scale pooling project each field's embedding table once per
    # step instead of every row's f·d inputs (``HUMBranch.mix_ids``); () = unknown.
    field_sizes: tuple[int, ...] = ()
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["expert_hidden"], d["tower_hidden"] = list(self.expert_hidden), list(self.tower_hidden)
        return d


class HUMBranch(nn.Module):
    """One treatment's branch: field attention from the treatment embedding, experts, gates, towers."""

    def __init__(self, cfg: HUMConfig):
        super().__init__()
        d, f, m, r = cfg.emb_dim, cfg.n_fields, cfg.n_experts, cfg.n_responses
        self.pooling, self.m, self.r, self.d = cfg.pooling, m, r, d
        self.gain = float(f) if cfg.balanced else 1.0  # attention weights sum to f instead of 1
        self.attn = nn.Linear(d, f)  # a^k = softmax(W^k e_t + b^k)
        # Target attention: e_t -> a query in field-embedding space (keys are the embeddings).
        self.query = nn.Linear(d, d) if cfg.attention == "target" else None
        d_in = (d if cfg.pooling == "sum" else f * d) + d
        self.experts = Experts(d_in, m, cfg.expert_hidden, cfg.dropout)
        self.gates = nn.Linear(d_in, r * m)  # one softmax gate per response (MMoE)
        self.f = f
        self.tabled = cfg.pooling == "scale" and cfg.attention == "field" and bool(cfg.field_sizes)
        if self.tabled:
            pad, pos = field_layout(cfg.field_sizes, cfg.vocab_size, f)
            self.register_buffer("pad_ids", pad, persistent=False)  # (f, S): field j's ids, padded with id 0
            self.register_buffer("flat_pos", pos, persistent=False)  # (V,): id -> its row in the (f*S) grid
            # (f*S,): the field of every grid row (padding rows included; no id maps to them)
            self.register_buffer("grid_field", torch.arange(f).repeat_interleave(pad.shape[1]), persistent=False)
        self.towers = Towers(r, cfg.expert_hidden[-1], cfg.tower_hidden)
        self.uplift = None
        if cfg.treated_head == "residual":  # the treated path's own towers, outputting u^k
            tower = JointTower if cfg.offset_tower == "joint" else Towers
            self.uplift = tower(r, cfg.expert_hidden[-1], cfg.tower_hidden)
            if cfg.offset_init == "zero":
                nn.init.zeros_(self.uplift.out.weight)
            elif cfg.offset_init == "small":
                with torch.no_grad():
                    self.uplift.out.weight.mul_(0.1)
            nn.init.zeros_(self.uplift.out.bias)
        self.wide_mode = cfg.offset_wide if cfg.treated_head == "residual" else "none"
        self.wide = None
        if self.wide_mode != "none":  # one scalar per (feature id, response), summed over the row's fields
            self.wide = nn.Embedding(cfg.vocab_size, r)
            nn.init.zeros_(self.wide.weight)

    def offset(self, deep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The offset u^k (B, R) from the deep tower's logits (B, R) and the rows' ids x (B, f)."""
        if self.wide is None:
            return deep
        wide = self.wide(x).sum(1)  # (B, f, R) -> (B, R)
        return wide if self.wide_mode == "only" else deep + wide

    def field_weights(self, e_x: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        """Attention over fields: (f,) for the spec's field attention, (B, f) for target attention."""
        logits = self.attn(e_t)  # (f,)
        if self.query is not None:
            q = self.query(e_t) / self.d**0.5  # (d,)
            logits = logits + e_x @ q  # (B, f)
        return torch.softmax(logits, dim=-1) * self.gain

    def inputs(self, e_x: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        """e_x (B, f, d), e_t (d,) -> the experts' input f^k = concat(e_x^k, e_t) (B, d_in)."""
        b = e_x.shape[0]
        a = self.field_weights(e_x, e_t)
        a = a.expand(b, -1) if a.dim() == 1 else a  # (B, f)
        if self.pooling == "sum":
            sel = torch.einsum("bfd,bf->bd", e_x, a)  # (B, d)
        else:
            sel = (e_x * a[:, :, None]).reshape(b, -1)  # (B, f*d)
        return torch.cat([sel, e_t.expand(b, -1)], dim=1)

    def inputs_from_ids(self, x: torch.Tensor, table: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        """The same input from the field ids x (B, f) and the embedding table.

        With the spec's field attention and sum pooling, Σ_j a^k(j) e_{x,j} is one
        ``embedding_bag`` with the field weights as per-index weights: the (B, f, d) field
        embeddings are never materialized (nor their gradient), which makes training faster.
        """
        if self.pooling != "sum" or self.query is not None:
            return self.inputs(nn.functional.embedding(x, table), e_t)
        b, f = x.shape
        a = self.field_weights(None, e_t)  # (f,)
        sel = nn.functional.embedding_bag(x, table, mode="sum", per_sample_weights=a.expand(b, f).contiguous())
        return torch.cat([sel, e_t.expand(b, -1)], dim=1)

    def mix(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Experts' input h (B, d_in) -> per-response mixed expert output (B, R, H), gates (B, R, M)."""
        return self._mix(self.experts(h), self.gates(h))

    def mix_ids(self, parts: list[tuple[torch.Tensor, torch.Tensor]], table: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``mix`` of the inputs of several row groups (field ids (B_i, f), treatment embedding (d,)),
        stacked in order: (ΣB_i, R, H), (ΣB_i, R, M).

        Scale pooling with a known id layout never builds the (B, f·d) input: the first layers
        of the experts and gates, W·concat_j a(j) e_{x,j} = Σ_j a(j) W_j e_{x,j}, are one
        ``embedding_bag`` over a table holding W_j e_v for every id v (field j's ids), built once
        per call for all groups, with each group's field weights and constant treatment half
        W_t e_t + b folded in. Same numbers as ``mix`` up to float rounding: tested.
        """
        if not self.tabled:
            return self.mix(torch.cat([self.inputs_from_ids(x, table, e_t) for x, e_t in parts]))
        f, d = self.f, self.d
        w, bias = self._first_layers()
        w_t = w[:, f * d:]  # (H1 + R*M, d): the treatment half
        proj = self.projection(table)  # (f*S, H1 + R*M)
        v = proj.shape[0]
        # One table per group with its field weights and its constant folded in: every row sums
        # exactly f entries (one per field), so each entry carries const / f. Group g's grid rows
        # are shifted by g·f·S; one bag sum without per-index weights (cheaper to differentiate).
        tables = torch.cat([
            proj * self.field_weights(None, e_t)[self.grid_field, None] + (w_t @ e_t + bias) / f for _, e_t in parts
        ])  # (G*f*S, H1 + R*M)
        ids = torch.cat([self.flat_pos[x] + g * v for g, (x, _) in enumerate(parts)])
        # The experts' first layers after their ReLU, expert-major, and the gate logits (B, R*M), from one
        # bag sum whose backward is one pass over the rows (models/kernels.py).
        hidden, gate_logits = bag_sum_relu(ids, tables, self.experts.first.out_features, self.m)  # (M, B, H0)
        return self._mix(self.experts.after_hidden(hidden).transpose(0, 1), gate_logits)

    def projection(self, table: torch.Tensor) -> torch.Tensor:
        """W_j e_v for every id v of every field j: the first layers' (experts, then gates) share
        of each id, on the padded (f*S) grid (id v at row ``flat_pos[v]``), (f*S, H1 + R*M).
        Scale pooling with a known id layout only."""
        f, d = self.f, self.d
        w_fields = self._first_layers()[0][:, : f * d].view(-1, f, d).permute(1, 2, 0)  # (f, d, H1 + R*M)
        return torch.bmm(table[self.pad_ids], w_fields).flatten(0, 1)

    def _first_layers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The experts' first layers and the gates as one linear map: weight (H1 + R*M, d_in), bias."""
        return (torch.cat([self.experts.first.weight, self.gates.weight]),
                torch.cat([self.experts.first.bias, self.gates.bias]))

    def _mix(self, p: torch.Tensor, gate_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Experts' outputs p (B, M, H) and gate logits (B, R*M) -> mixed (B, R, H), gates (B, R, M)."""
        b = p.shape[0]
        g = torch.softmax(gate_logits.view(b, self.r, self.m), dim=-1)  # (B, R, M)
        return gate_mix(g, p), g  # (B, R, H)

    def represent(self, e_x: torch.Tensor, e_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """e_x (B, f, d), e_t (d,) -> per-response mixed expert output (B, R, H), gates (B, R, M)."""
        return self.mix(self.inputs(e_x, e_t))

    def forward(self, e_x: torch.Tensor, e_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outcome-head pass: predictions (B, R) and gate distributions (B, R, M)."""
        mixed, g = self.represent(e_x, e_t)
        return self.towers(mixed), g

    def logits(self, e_x: torch.Tensor, e_t: torch.Tensor, treated: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-softplus outputs (B, R): the outcome logit, or u^k on a residual treated pass."""
        mixed, g = self.represent(e_x, e_t)
        heads = self.uplift if (treated and self.uplift is not None) else self.towers
        return heads.logits(mixed), g


class HUM(UpliftNet):
    def __init__(self, cfg: HUMConfig):
        super().__init__()
        self.cfg = cfg
        self.n_treatments, self.n_responses = cfg.n_treatments, cfg.n_responses
        self.residual = cfg.treated_head == "residual"
        if cfg.treated_input == "control" and not self.residual:
            raise ValueError("treated_input='control' needs treated_head='residual' (the offset reads the control pass)")
        self.shared_pass = cfg.treated_input == "control"
        self.field_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.treat_emb = nn.Embedding(cfg.n_treatments + 1, cfg.emb_dim)  # 0 = control
        self.branches = nn.ModuleList(HUMBranch(cfg) for _ in range(cfg.n_treatments))
        if cfg.experts == "shared":  # one module, registered under every branch (parameters() counts it once)
            for branch in self.branches[1:]:
                branch.experts = self.branches[0].experts
        nn.init.normal_(self.field_emb.weight, std=0.05)
        if cfg.balanced:
            nn.init.normal_(self.treat_emb.weight, std=0.05)

    def offset_parameters(self) -> list[nn.Parameter]:
        """The residual head's offset towers (u^k), every branch's; empty for the outcome head."""
        return [p for b in self.branches for part in (b.uplift, b.wide) if part is not None for p in part.parameters()]

    def wide_parameters(self) -> list[nn.Parameter]:
        """The residual head's wide offset tables (``offset_wide``), every branch's; empty without them."""
        return [b.wide.weight for b in self.branches if b.wide is not None]

    def _t(self, k: int) -> torch.Tensor:
        return self.treat_emb.weight[k]

    def _branch(self, branch: HUMBranch, x: torch.Tensor, e_x: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Branch k's treated logit (u^k for the residual head) and control logit (B, R) each,
        and its control gates (B, R, M)."""
        if self.shared_pass:
            mixed, g_c = branch.represent(e_x, self._t(0))
            return branch.offset(branch.uplift.logits(mixed), x), branch.towers.logits(mixed), g_c
        z_c, g_c = branch.logits(e_x, self._t(0), treated=False)
        z_t, _ = branch.logits(e_x, self._t(k), treated=True)
        return (branch.offset(z_t, x) if self.residual else z_t), z_c, g_c

    def logits_to_outcomes(self, z_t: torch.Tensor, z_c: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Treated and control logits (B, K, R) -> treated, control and base outcomes (B, K, R).

        Residual head: ŷ^k = softplus(b^k + u^k), b^k = (1 − s)·z^{0,k} + s·z̄^0 (``offset_mean`` s);
        the base outcome softplus(b^k) is the control the offset is an effect on. The control
        outcomes stay each branch's own (what control rows train, spec §1.3).
        """
        control = positive(z_c)
        if not self.residual:
            return positive(z_t), control, control
        s = self.cfg.offset_mean
        if s == 0:
            return positive(z_c + z_t), control, control
        base = z_c + s * (z_c.mean(dim=1, keepdim=True) - z_c)
        return positive(base + z_t), control, positive(base)

    def logits_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every branch on every row: treated logits (u^k for the residual head) and control logits
        (B, K, R), control gates (B, K, R, M)."""
        e_x = self.field_emb(x)
        outs = [self._branch(branch, x, e_x, k) for k, branch in enumerate(self.branches, start=1)]
        return tuple(torch.stack(o, 1) for o in zip(*outs))  # type: ignore[return-value]

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every branch on every row: treated (B, K, R), control (B, K, R), control gates (B, K, R, M)."""
        z_t, z_c, g_c = self.logits_all(x)
        return (*self.logits_to_outcomes(z_t, z_c)[:2], g_c)

    def loss(self, x: torch.Tensor, arm: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE masked by the observed arm + kl_weight · KL between the branches' control gates.

        A row under treatment k trains only branch k's treated heads (and, with the
        residual head, the control path it is an offset to); a control row trains the
        control heads of every branch (spec §1.3). Only the needed passes run.
        """
        if self.residual:
            return self._residual_loss(x, arm, y)
        n = x.shape[0]
        fits: list[tuple[torch.Tensor, torch.Tensor]] = []  # (prediction, target) pairs, each (m, R)
        ctrl = arm == 0
        gates = []
        e_x = self.field_emb(x)
        for k, branch in enumerate(self.branches, start=1):
            treated = arm == k
            if treated.any():
                pred, _ = branch(e_x[treated], self._t(k))
                fits.append((pred, y[treated]))
            if ctrl.any():
                pred, g = branch(e_x[ctrl], self._t(0))
                fits.append((pred, y[ctrl]))
                gates.append(g)
        return self._total(fits, gates, n)

    def _residual_loss(self, x: torch.Tensor, arm: torch.Tensor, y: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[str, float]]:
        """``loss`` for the residual head.

        Branch k's control pass runs over control ∪ arm-k rows (the control rows' loss, and the
        logit the treated rows' offset u^k is added to), or over every row when ``offset_mean``
        s > 0 (an arm-k row's base then needs every branch's control logit). It shares one run of
        the experts with the treated pass over the arm-k rows: one set of larger matrix products.
        """
        n = x.shape[0]
        # Row numbers, not masks: each mask indexing below would search its mask again (nonzero).
        ctrl = _rows(arm == 0)
        s = self.cfg.offset_mean
        table = self.field_emb.weight
        fits: list[tuple[torch.Tensor, torch.Tensor]] = []  # (prediction, target) pairs, each (m, R)
        z_cs, gates, offsets = [], [], []  # offsets: (branch k's control logits on its rows, arm-k rows among them, u^k, arm-k rows)
        for k, branch in enumerate(self.branches, start=1):
            treated = _rows(arm == k)
            if s > 0:  # every row: no gather (nor its backward's scatter)
                xb, is_t, is_c = x, treated, ctrl
            else:
                rows = _rows((arm == 0) | (arm == k))
                if not len(rows):
                    continue
                xb, arm_b = x[rows], arm[rows]
                is_t, is_c = _rows(arm_b == k), _rows(arm_b == 0)
            nb = xb.shape[0]
            if self.shared_pass:  # the offset reads the control pass: one pass over the rows
                mixed, g = branch.mix_ids([(xb, self._t(0))], table)
                treated_mixed = mixed[is_t]
            else:
                both, g = branch.mix_ids([(xb, self._t(0)), (x[treated], self._t(k))], table)  # (Nb + Nt, R, H)
                mixed, treated_mixed = both.split([nb, both.shape[0] - nb])
                g = g[:nb]
            z_c = branch.towers.logits(mixed)  # (Nb, R)
            z_cs.append(z_c)
            fits.append((positive(z_c[is_c]), y[ctrl]))
            gates.append(g[is_c])
            if treated_mixed.shape[0]:
                offsets.append((z_c, is_t, branch.offset(branch.uplift.logits(treated_mixed), x[treated]), treated))
        z_bar = torch.stack(z_cs).mean(0) if s > 0 else None  # (B, R): every branch's control logit on every row
        for z_c, is_t, u, treated in offsets:
            base = z_c[is_t] if z_bar is None else z_c[is_t] + s * (z_bar[is_t] - z_c[is_t])
            fits.append((positive(self._base(base) + u), y[treated]))
        return self._total(fits, gates, n)

    def _base(self, z: torch.Tensor) -> torch.Tensor:
        """The control logit under treated rows' offsets: same value, gradient scaled by the
        configured share (``control_grad``; 0 with ``detach_control``)."""
        share = 0.0 if self.cfg.detach_control else self.cfg.control_grad
        return z if share >= 1.0 else share * z + (1.0 - share) * z.detach()

    def _total(self, fits: list[tuple[torch.Tensor, torch.Tensor]], gates: list[torch.Tensor], n: int
               ) -> tuple[torch.Tensor, dict[str, float]]:
        """The prediction loss over the (prediction, target) pairs (squared error, or its Huber form
        with ``huber_delta``; ``positive_part`` responses' zero targets left out) per row + kl_weight · KL
        between the branches' control gates (on control rows)."""
        resid = torch.cat([pred - target for pred, target in fits]) if fits else torch.zeros(0, 1)  # (m, R)
        if self.cfg.positive_part and fits:
            resid = without_positive_part_zeros(resid, torch.cat([target for _, target in fits]), self.cfg.positive_part)
        sq = resid ** 2
        mse = sq.sum() / n
        d = self.cfg.huber_delta
        fit = mse if d is None else torch.where(resid.abs() <= d, sq, 2 * d * resid.abs() - d * d).sum() / n
        kl = gate_kl(torch.stack(gates, 0)).sum() if gates and gates[0].shape[0] else mse.new_zeros(())
        kl = kl / n
        total = fit + self.cfg.kl_weight * kl
        return total, {"mse": float(mse.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def predict_mu(self, x: torch.Tensor) -> torch.Tensor:
        z_t, z_c = fused_logits(self, x) if fusable(self.cfg) and not self.training else self.logits_all(x)[:2]
        treated, control, base = self.logits_to_outcomes(z_t, z_c)
        y0 = control.mean(dim=1, keepdim=True)  # ŷ^{0,*}: mean over the branches (spec §1.4)
        if self.cfg.control == "own":  # branch k's treated − the control its offset sits on, on the consensus
            treated = (y0 + treated - base).clamp_min(1e-4)  # (B, K, R)
        return torch.cat([y0, treated], dim=1)


def _rows(mask: torch.Tensor) -> torch.Tensor:
    """The row numbers where mask (B,) holds, in order (N,)."""
    return mask.nonzero().squeeze(1)


def fusable(cfg: HUMConfig) -> bool:
    """Whether ``fused_outcomes`` covers this configuration (field attention: the same for every user)."""
    return cfg.attention == "field"


def fused_outcomes(model: HUM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The numbers of ``forward_all`` (treated, control: (B, K, R)) for inference, fused over branches."""
    return model.logits_to_outcomes(*fused_logits(model, x))[:2]


def fused_logits(model: HUM, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of ``HUM.logits_all`` (treated, control: (B, K, R)) for inference, fused over branches.

    Scoring every user runs each branch twice (treated and control). Done module by
    module that is dozens of small einsums whose permute-copies and batched tiny matmuls
    cost more than the arithmetic. Here the P = 2K paths (K control passes when the treated heads
    read the control pass, ``treated_input="control"``) run side by side instead:

    - sum pooling: the attention-weighted field sum is one ``embedding_bag`` per path
      (the field weights are the per-index weights), so (B, f, d) is never materialized;
      scale pooling: from each branch's per-id table (``HUMBranch.projection``) when the id
      layout is known, one ``embedding_bag`` per path; else the field weights are folded into
      the first layers' and gates' columns, one GEMM on the flat embeddings for every path;
    - the constant treatment half of every first layer, W[:, d:] e_t + b, is folded
      into a per-path bias, so the layers see only the d pooled inputs;
    - each layer is one ``baddbmm`` over (path × expert) or (path × response) groups.

    Same maths as the module forward, up to float rounding: tested.
    """
    cfg, d = model.cfg, model.cfg.emb_dim
    k_, m, r = cfg.n_treatments, cfg.n_experts, cfg.n_responses
    b, f = x.shape
    if model.shared_pass:  # one control pass per branch; its treated head reads the same representation
        owner = list(range(k_))
        e_t = model.treat_emb.weight[[0] * k_]  # (P, d)
    else:  # path p: branch p // 2, treated if even
        owner = [p // 2 for p in range(2 * k_)]
        e_t = model.treat_emb.weight[[(p // 2 + 1) if p % 2 == 0 else 0 for p in range(2 * k_)]]  # (P, d)
    branches = [model.branches[i] for i in owner]
    n_paths = len(branches)
    attn = torch.stack([br.field_weights(None, e_t[p]) for p, br in enumerate(branches)])  # (P, f)
    first = [br.experts.first for br in branches]
    # The constant treatment half of the first layers, W[:, -d:] e_t + b, as per-path biases.
    c1 = torch.stack([lin.weight[:, -d:] @ e_t[p] + lin.bias for p, lin in enumerate(first)])  # (P, M*H0)
    cg = torch.stack([br.gates.weight[:, -d:] @ e_t[p] + br.gates.bias for p, br in enumerate(branches)])  # (P, R*M)
    if cfg.pooling == "sum":
        sel = torch.stack([
            nn.functional.embedding_bag(x, model.field_emb.weight, mode="sum",
                                        per_sample_weights=attn[p].expand(b, f).contiguous())
            for p in range(n_paths)
        ])  # (P, B, d): Σ_j a_p(j) e_{x,j}
        w1 = torch.stack([lin.weight[:, :d] for lin in first]).view(n_paths, m, -1, d)  # (P, M, H0, d)
        h = sel.unsqueeze(1).expand(n_paths, m, b, d).reshape(n_paths * m, b, d)
        h = torch.baddbmm(c1.view(n_paths * m, 1, -1), h, w1.reshape(n_paths * m, -1, d).transpose(1, 2)).relu_()
        wg = torch.stack([br.gates.weight[:, :d].T for br in branches])  # (P, d, R*M)
        g_pre = torch.baddbmm(cg.unsqueeze(1), sel, wg)  # (P, B, R*M)
    elif branches[0].tabled:
        # Each id's share of a branch's first layers, W_j e_v, is one table per branch; a path's
        # first layers are then one embedding_bag over it with the path's field weights.
        projs = [br.projection(model.field_emb.weight) for br in model.branches]  # K × (f*S, M*H0 + R*M)
        grid_x = model.branches[0].flat_pos[x]  # (B, f): each id's grid row
        pre = torch.stack([
            nn.functional.embedding_bag(grid_x, projs[owner[p]], mode="sum",
                                        per_sample_weights=attn[p].expand(b, f).contiguous())
            for p in range(n_paths)
        ])  # (P, B, M*H0 + R*M)
        h1 = c1.shape[1]
        h = (pre[:, :, :h1] + c1[:, None]).relu_().view(n_paths, b, m, -1)
        h = h.permute(0, 2, 1, 3).reshape(n_paths * m, b, -1)  # (P*M, B, H0)
        g_pre = pre[:, :, h1:] + cg[:, None]  # (P, B, R*M)
    else:
        # concat_j a_p(j) e_{x,j} times W equals the flat embeddings times W with a_p folded
        # into its columns: one GEMM for every path's first layer and gates.
        e_flat = model.field_emb(x).flatten(1)  # (B, f*d)
        fold = attn.repeat_interleave(d, dim=1)  # (P, f*d)
        w1 = torch.cat([lin.weight[:, : f * d] * fold[p] for p, lin in enumerate(first)])  # (P*M*H0, f*d)
        h = (e_flat @ w1.T + c1.flatten()).relu_()  # (B, P*M*H0)
        h = h.view(b, n_paths * m, -1).transpose(0, 1).contiguous()  # (P*M, B, H0)
        wg = torch.cat([br.gates.weight[:, : f * d] * fold[p] for p, br in enumerate(branches)])  # (P*R*M, f*d)
        g_pre = (e_flat @ wg.T + cg.flatten()).view(b, n_paths, -1).transpose(0, 1)  # (P, B, R*M)
    for i in range(len(cfg.expert_hidden) - 1):  # the grouped layers: (P*M, B, H_i) -> (P*M, B, H_i+1)
        layers = [br.experts.rest[i] for br in branches]
        w = torch.stack([lay.weight for lay in layers]).flatten(0, 1)  # (P*M, H_i, H_i+1)
        bias = torch.stack([lay.bias for lay in layers]).flatten(0, 1).unsqueeze(1)
        h = torch.baddbmm(bias, h, w).relu_()
    h = h.view(n_paths, m, b, -1)  # (P, M, B, H)

    # Gates: one softmax over experts per response.
    g = torch.softmax(g_pre.view(n_paths, b, r, m), dim=-1)  # (P, B, R, M)
    g = g.permute(0, 2, 3, 1).unsqueeze(-1)  # (P, R, M, B, 1)
    mixed = g[:, :, 0] * h[:, None, 0]
    for j in range(1, m):
        mixed += g[:, :, j] * h[:, None, j]  # (P, R, B, H)

    # Towers: (path, response) groups; a residual treated path uses its branch's uplift towers.
    if model.shared_pass:  # the treated and control heads of branch k both read its one pass
        mixed = mixed.repeat_interleave(2, dim=0)  # (2K, R, B, H): treated, control per branch
    if isinstance(model.branches[0].uplift, JointTower):  # the offsets read every response at once
        z_t = torch.stack([br.uplift.logits(mixed[2 * i].transpose(0, 1)) for i, br in enumerate(model.branches)], 1)
        z_c = _grouped_towers([br.towers for br in model.branches], mixed[1::2])  # (K, R, B)
        return _wide_offsets(model, z_t, x), z_c.permute(2, 0, 1)  # (B, K, R) each
    heads = [hd for br in model.branches for hd in (br.uplift if br.uplift is not None else br.towers, br.towers)]
    z = _grouped_towers(heads, mixed).view(k_, 2, r, b).permute(3, 1, 0, 2)  # (B, arm, K, R) logits
    return _wide_offsets(model, z[:, 0], x), z[:, 1]  # (B, K, R) each


def _wide_offsets(model: HUM, z_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Treated logits (B, K, R) with each branch's wide offset part applied (``HUMBranch.offset``)."""
    if model.branches[0].wide is None:
        return z_t
    return torch.stack([br.offset(z_t[:, i], x) for i, br in enumerate(model.branches)], 1)


def _grouped_towers(heads: list[Towers], mixed: torch.Tensor) -> torch.Tensor:
    """Per-response towers of P heads on their paths' mixed representations (P, R, B, H) -> logits (P, R, B):
    each layer one ``baddbmm`` over the (path, response) groups."""
    n_paths, r, b, _ = mixed.shape
    t = mixed.reshape(n_paths * r, b, -1)
    for i in range(len(heads[0].hidden)):
        layers = [hd.hidden[i] for hd in heads]
        w = torch.stack([lay.weight for lay in layers]).flatten(0, 1)  # (P*R, in, out)
        bias = torch.stack([lay.bias for lay in layers]).flatten(0, 1).unsqueeze(1)
        t = torch.baddbmm(bias, t, w).relu_()
    w = torch.stack([hd.out.weight for hd in heads]).flatten(0, 1)  # (P*R, T, 1)
    bias = torch.stack([hd.out.bias for hd in heads]).flatten(0, 1).unsqueeze(1)
    return torch.baddbmm(bias, t, w).view(n_paths, r, b)


def field_layout(sizes: tuple[int, ...], vocab_size: int, n_fields: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Field j owns ids [Σ_{i<j} sizes_i, Σ_{i≤j} sizes_i): its ids padded to the largest field
    (f, S), and every id's position in the flattened (f*S) grid (V,)."""
    if len(sizes) != n_fields or sum(sizes) != vocab_size or min(sizes) < 1:
        raise ValueError(f"field_sizes {list(sizes)} must give {n_fields} fields summing to vocab_size {vocab_size}")
    width = max(sizes)
    pad = torch.zeros(n_fields, width, dtype=torch.long)
    pos = torch.empty(vocab_size, dtype=torch.long)
    start = 0
    for j, size in enumerate(sizes):
        ids = torch.arange(start, start + size)
        pad[j, :size] = ids
        pos[ids] = j * width + torch.arange(size)
        start += size
    return pad, pos


def gate_kl(gates: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Σ_k KL(z^{0,k} ‖ mean_k z^{0,k}) per row and response: gates (K, B, R, M) -> (B, R)."""
    mean = gates.mean(0, keepdim=True)
    return (gates * (torch.log(gates + eps) - torch.log(mean + eps))).sum(-1).sum(0)
