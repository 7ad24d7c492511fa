"""Machinery shared by every fastopt optimizer.

A fastopt optimizer keeps torch's state layout (same keys, dtypes and
devices) and replaces the update with one fused op call per (device, dtype)
bucket of a param group. Subclasses say which state they keep and which op
they call; this class finds the parameters with gradients, initialises state
lazily, buckets the tensors and hands AMP's grad_scale / found_inf to the op.

It also adds what every fastopt optimizer offers beyond torch (see
:meth:`FusedOptimizer._init_extensions`): global gradient clipping applied
inside the update (``max_grad_norm``), skipping of steps with inf/NaN
gradients (``skip_nonfinite``), float32 master weights for 16-bit parameters
(``master_weights``) and stochastic rounding of bfloat16 parameters
(``stochastic_rounding``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from ..nn._dropout_functional import _draw_seed as draw_seed
from ._dtensor import dtensor_class, local_grad, local_state, refuse
from .clip import check_max_grad_norm, clip_coefficient, grad_norm

T = TypeVar("T")

# Parameter dtypes that get a float32 master copy with master_weights=True.
LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass
class Bucket:
    """The tensors of one param group that share a device and dtype."""

    sources: list[Tensor] = field(default_factory=list)  # the parameters themselves
    params: list[Tensor] = field(default_factory=list)  # as the op sees them (complex as real)
    grads: list[Tensor] = field(default_factory=list)
    steps: list[Tensor] = field(default_factory=list)  # empty without step counters
    state: dict[str, list[Tensor]] = field(default_factory=dict)
    # Whether these tensors' state was created by this step; only set for
    # optimizers whose op initialises new state itself (see _new_state_in_op).
    new_state: bool = False
    # With master weights, `params` are the float32 masters and `copies` the
    # 16-bit parameters the op writes the rounded result to; empty otherwise.
    copies: list[Tensor] = field(default_factory=list)
    # Position in `grads` -> (the parameter's .grad, its resolved copy, whose
    # real view `grads` holds) for complex gradients with their conjugate or
    # negative bit set, which the op cannot take as they are: see
    # FusedOptimizer._write_back_grads. Empty almost always.
    resolved_grads: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    # Philox (key, offset) of this step's stochastic rounding; None when the
    # op rounds to nearest.
    rounding_seed: Tensor | None = None
    # Per-tensor hyperparameters (float64 [len(params), k]) when the bucket
    # holds tensors of several param groups; None for one group's tensors,
    # whose hyperparameters are the op's scalar arguments.
    hparams: Tensor | None = None
    # Whether `sources` are DTensors, of which the other lists hold this
    # process's local shards (see _dtensor.py).
    sharded: bool = False

    def extra_args(self) -> dict[str, Any]:
        """The op arguments every optimizer op shares beyond its own."""
        args: dict[str, Any] = {"param_copies": self.copies or None, "rounding_seed": self.rounding_seed}
        if self.hparams is not None:
            args["hparams"] = self.hparams
        return args

    def take(self, index: list[int], new_state: bool) -> Bucket:
        """The bucket of the tensors at ``index``, in that order, with ``new_state``."""

        def pick(tensors: list[Tensor]) -> list[Tensor]:
            return [tensors[i] for i in index] if tensors else tensors

        return Bucket(
            sources=pick(self.sources),
            params=pick(self.params),
            grads=pick(self.grads),
            steps=pick(self.steps),
            state={k: pick(v) for k, v in self.state.items()},
            new_state=new_state,
            copies=pick(self.copies),
            resolved_grads={j: self.resolved_grads[i] for j, i in enumerate(index) if i in self.resolved_grads},
            hparams=None if self.hparams is None else self.hparams[index],
            sharded=self.sharded,
        )


# Parameters with sparse gradients, with their param group: one entry per group.
SparseParams = list[tuple[dict[str, Any], list[Tensor]]]


def split_duplicates(work: list[tuple[dict[str, Any], Bucket]]) -> list[tuple[dict[str, Any], Bucket, int]]:
    """The buckets of a step whose param groups list a parameter twice, as
    (group, bucket, round) in the order to update them.

    torch accepts such a group with a warning and its for-loop updates the
    parameter once per listing, one update after the other. One op call
    would instead update the same memory from two work items at once (two
    threads on the CPU, two blocks on CUDA), a race whose result changes
    from run to run. So the k-th listing of a parameter goes to round k, and
    round k's op calls run after round k-1's. Round 0 alone unscales the
    gradients (grad_scale), since the op writes them back unscaled.

    A parameter's first listing goes to a bucket of new state when the step
    creates its state in the op (SGD's momentum buffer, see
    Bucket.new_state), and its other listings to a bucket that it may share
    with older parameters; they count on from round 1 there. Those listings
    start the state afresh as well (the buffer again becomes the gradient),
    as torch's for-loop and fused SGD do: both gather every listing's buffer
    before updating any.
    """
    first_in_new_state = {id(p) for _, b in work if b.new_state for p in b.sources}
    split: list[tuple[dict[str, Any], Bucket, int]] = []
    for group, bucket in work:
        listed: dict[int, int] = {}
        parts: dict[tuple[int, bool], list[int]] = {}  # (round, new state) -> indices
        for i, p in enumerate(bucket.sources):
            key = id(p)
            new_state = bucket.new_state or key in first_in_new_state
            r = listed.get(key, 1 if new_state and not bucket.new_state else 0)
            listed[key] = r + 1
            parts.setdefault((r, new_state), []).append(i)
        if list(parts) == [(0, bucket.new_state)]:
            split.append((group, bucket, 0))
        else:
            split.extend((group, bucket.take(index, new_state), r) for (r, new_state), index in parts.items())
    split.sort(key=lambda entry: entry[2])  # (stable: buckets keep their order within a round)
    return split


def first_listings(listings: Iterable[tuple[Tensor, T]]) -> list[T]:
    """The value of each parameter's first (parameter, value) listing, in order."""
    firsts: dict[int, T] = {}
    for param, value in listings:
        firsts.setdefault(id(param), value)
    return list(firsts.values())


def new_step_counter(param: Tensor) -> Tensor:
    """A zero step counter where torch's fused optimizers keep it.

    CPU params keep it on the CPU in torch's default scalar dtype; CUDA params
    keep it on their device as float32, so the update never waits on the host
    and can be captured in a CUDA graph.
    """
    if param.device.type == "cpu":
        dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        return torch.tensor(0.0, dtype=dtype)
    return torch.zeros((), dtype=torch.float32, device=param.device)


# Hyperparameter types that are never a tensor (type() is exact: a Tensor subclass is not among them).
_PLAIN_HPARAM_TYPES = (float, int, bool, type(None), str)


def _hparams_readable(group: dict[str, Any], on_cpu: bool, compiling: bool) -> bool:
    """Whether the group's hyperparameters can be read as Python floats for a table row.

    A tensor on a GPU (a capturable lr) would make that a synchronising read
    (for CPU parameters every tensor is on the host). And under torch.compile
    no tensor can be read: float(lr) is a data-dependent value, and comparing
    the rows of two groups would need a guard on it, which fails the trace.
    Such groups keep op calls of their own, with their tensors as arguments.
    ``compiling`` is torch.compiler.is_compiling(), read once per step.
    """
    if on_cpu and not compiling:
        return True
    # Once per group per step, so the plain values (nearly all of them) are
    # passed over by their exact type: the generic scan took 4.7 us a group,
    # 1.9 ms a step for 400 CUDA groups.
    for name, value in group.items():
        kind = type(value)
        if kind in _PLAIN_HPARAM_TYPES or name == "params":
            continue
        values = value if kind is tuple or kind is list else (value,)
        for v in values:
            if isinstance(v, Tensor) and (compiling or v.device.type != "cpu"):
                return False
    return True


def reject_differentiable(name: str, differentiable: bool) -> None:
    """Refuse ``differentiable=True``: a fused update is not recorded by autograd."""
    if differentiable:
        raise RuntimeError(
            f"fastopt.optim.{name} does not support differentiable=True: its fused update is "
            f"not recorded by autograd. Use torch.optim.{name}(differentiable=True) instead."
        )


class FusedOptimizer(torch.optim.Optimizer):
    """Base class of the fastopt optimizers: one fused op call per bucket."""

    # AMP's GradScaler hands this optimizer grad_scale/found_inf instead of
    # unscaling the gradients itself (see torch.amp.GradScaler.step).
    _step_supports_amp_scaling = True
    # Whether the optimizer keeps torch's per-parameter state["step"] counter
    # (Adam, Adagrad) or none at all (SGD).
    _has_step_counter = True
    # Whether the op must be told that state was just created, because its
    # first update differs from later ones (SGD's momentum buffer starts as the
    # gradient). Such tensors then get an op call of their own: see Bucket.new_state.
    _new_state_in_op = False
    # torch's error for a sparse gradient, for optimizers that refuse them as
    # torch's do; SGD and Adagrad update them instead (see _sparse_update).
    _sparse_message = "{} does not support sparse gradients"

    def track_update_ratios(self, enabled: bool = True) -> None:
        """Compute ||update|| / ||param|| per parameter inside each fused step.

        A training run is healthy when this ratio sits around 1e-3. The sums
        are accumulated from values the update already holds in registers, so
        tracking costs no extra pass over memory; off (the default), the
        accumulation is compiled out of the kernels. Read the ratios of the
        last step with :meth:`update_ratios`.
        """
        self._track_ratios = enabled
        self._last_norms: list[tuple[list[Tensor], Tensor]] = []

    def update_ratios(self) -> dict[Tensor, Tensor]:
        """||p_after - p_before|| / ||p_before|| of each parameter updated by the last step.

        Returns a dict from parameter to a 0-dim float64 tensor on the
        parameter's device (no host synchronisation happens here). Requires
        :meth:`track_update_ratios`. The change is the parameter's as stored
        (for a bfloat16 parameter, after its rounding, stochastic or not),
        except with master weights, where it is the float32 master's. An
        unchanged parameter has ratio 0, so a step skipped by AMP or by
        ``skip_nonfinite`` reports zeros; a parameter that was zero before the
        step and changed has an infinite ratio. Parameters with sparse
        gradients, which torch's own update handles (see _sparse_update), are
        not tracked. A parameter that a param group lists twice (which torch
        deprecates) is updated once per listing, and reports the ratio of its
        last update.
        """
        if not getattr(self, "_track_ratios", False):
            raise RuntimeError(
                f"{type(self).__name__}.update_ratios() needs track_update_ratios() before the step"
            )
        ratios: dict[Tensor, Tensor] = {}
        for params, norms in self._last_norms:
            # A skipped step leaves both sums zero: no change, ratio 0 (not 0 / 0).
            update = norms[:, 0].sqrt()
            values = torch.where(update == 0, update, update / norms[:, 1].sqrt())
            ratios.update(zip(params, values.unbind()))
        return ratios

    def _init_extensions(
        self,
        *,
        max_grad_norm: float | None,
        skip_nonfinite: bool,
        master_weights: bool,
        stochastic_rounding: bool,
    ) -> None:
        """Set up fastopt's options beyond torch's; every constructor calls this.

        ``max_grad_norm``: clip the gradients of all parameters to this global
        2-norm, as :func:`torch.nn.utils.clip_grad_norm_` followed by the step
        would, with the clip factor applied inside the update and read from
        device memory (no host synchronisation). The clipped gradients are
        left in ``.grad``, as torch's clipping leaves them. "All parameters"
        are this optimizer's: as the ``optimizer_class`` of
        ``ZeroRedundancyOptimizer``, a rank's shard (and so for
        ``skip_nonfinite``), so clip with ``clip_grad_norm_`` there instead.
        ``skip_nonfinite``: a step whose gradients hold any inf or NaN changes
        nothing (parameters, state, step counters); ``skipped_steps`` counts
        such steps on the device.
        ``master_weights``: bfloat16/float16 parameters get a float32 copy in
        ``state["master_param"]`` and float32 moments; the update runs on the
        master and writes it, rounded, back to the parameter in the same pass.
        ``stochastic_rounding``: bfloat16 parameters (or, with master
        weights, their rounded copies) are rounded stochastically, so that
        small updates survive in expectation.
        """
        self.max_grad_norm = check_max_grad_norm(max_grad_norm)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.master_weights = bool(master_weights)
        self.stochastic_rounding = bool(stochastic_rounding)
        for group in self.param_groups:
            self._check_rounding(group["params"])
        # Steps that changed nothing because of inf/NaN gradients (AMP's
        # found_inf or skip_nonfinite), counted on the parameters' device.
        device = next((p.device for g in self.param_groups for p in g["params"]), None)
        self.skipped_steps = torch.zeros((), dtype=torch.int64, device=device)
        # What the last step computed on the side, read through properties.
        # A dict that step() mutates, not attributes it sets: torch.compile
        # (torch 2.11) cannot trace setting an attribute of the optimizer.
        self._last_step: dict[str, Tensor | None] = {"grad_norm": None}

    @property
    def last_grad_norm(self) -> Tensor | None:
        """The global gradient norm of the last step, when ``max_grad_norm`` or
        ``skip_nonfinite`` computed it, else None: a device tensor, so that
        logging it costs no synchronisation."""
        return self._last_step["grad_norm"]

    def _check_rounding(self, params: list[Tensor]) -> None:
        """Stochastic rounding is for bfloat16: refuse float16 parameters."""
        if getattr(self, "stochastic_rounding", False) and any(p.dtype == torch.float16 for p in params):
            raise ValueError(
                f"{type(self).__name__}: stochastic_rounding supports bfloat16 "
                "parameters only, got a float16 parameter; use master_weights=True"
            )

    # What _init_extensions and the steps set on the optimizer, which
    # torch's __getstate__ (defaults, state and param_groups only) would drop
    # from a deepcopy, a pickle or torch.save(optimizer). Caches derived from
    # these (_hparams_tables: hyperparameter tables) are left out, and are
    # rebuilt by the copy's first step.
    _EXTENSION_ATTRS = (
        "max_grad_norm",
        "skip_nonfinite",
        "master_weights",
        "stochastic_rounding",
        "skipped_steps",
        "_last_step",
        "_track_ratios",
        "_last_norms",
    )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update({name: self.__dict__[name] for name in self._EXTENSION_ATTRS if name in self.__dict__})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # torch's load_state_dict also calls __setstate__, with only "state"
        # and "param_groups": the options set on self stay. Only an object
        # unpickled from torch's state alone (pickled by a fastopt before
        # __getstate__ kept the options) has none; it gets the constructor's
        # defaults.
        if "_last_step" not in self.__dict__:
            self._init_extensions(
                max_grad_norm=None, skip_nonfinite=False, master_weights=False, stochastic_rounding=False
            )
        self._duplicate_params = False
        self._note_duplicates(self.param_groups)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, then the constructor's checks of fastopt's options on the new parameters.

        torch's checks come first, so that a bad group (not a dict, a set of
        parameters, a non-leaf) fails with torch's error; torch also lists the
        parameters (a generator is consumed once). A group that fastopt then
        refuses is taken out again, leaving the optimizer as it was.
        """
        super().add_param_group(param_group)
        try:
            self._check_rounding(self.param_groups[-1]["params"])
        except ValueError:
            self.param_groups.pop()
            raise
        self._note_duplicates(self.param_groups[-1:])

    def _note_duplicates(self, groups: list[dict[str, Any]]) -> None:
        # Whether a group lists a parameter twice (torch warns, and
        # add_param_group refuses a parameter in two groups): such steps are
        # split into rounds, see split_duplicates. Kept as a flag, since a set
        # of every parameter on every step would cost microseconds per step
        # for the sake of a deprecated use; set per added group (with
        # hundreds of groups, rechecking all of them per group adds up).
        self._duplicate_params = getattr(self, "_duplicate_params", False) or any(
            len(g["params"]) != len(set(g["params"])) for g in groups
        )

    def _uses_master(self, param: Tensor) -> bool:
        return getattr(self, "master_weights", False) and param.dtype in LOW_PRECISION

    @staticmethod
    def _new_master(param: Tensor) -> Tensor:
        # A dtype change always copies; preserve_format keeps a dense layout
        # (channels_last, transposed) so that the op walks master and
        # parameter as one flat array each, without temporaries.
        return param.detach().to(torch.float32, memory_format=torch.preserve_format)

    def _ensure_master_state(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
        """Masters for state that was loaded (e.g. from torch) or created without them."""
        master = state.get("master_param")
        # A master of another dtype came back through a torch optimizer, which
        # cast it to the parameter's dtype and never updated it: rebuilt from
        # the parameter, as for a torch checkpoint without one.
        if master is None or master.dtype != torch.float32:
            state["master_param"] = self._new_master(param)
        for key in self._state_keys(group):
            if state[key].dtype != torch.float32:
                state[key] = state[key].to(torch.float32)

    def state_dict(self) -> dict[str, Any]:
        """torch's ``state_dict``; with ``skip_nonfinite``, plus ``"skipped_steps"``.

        Without that fastopt-only option the dict has torch's keys and nothing
        else, so code that checks or walks them sees no difference (the count
        of steps AMP skipped then lives on ``skipped_steps`` only, as
        GradScaler keeps its own state). torch's optimizers read only
        ``"state"`` and ``"param_groups"``, so either dict loads into them.
        """
        state_dict = super().state_dict()
        skipped = getattr(self, "skipped_steps", None)
        if skipped is not None and getattr(self, "skip_nonfinite", False):
            state_dict["skipped_steps"] = skipped
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a fastopt or torch ``state_dict``.

        torch's loader casts every floating-point state tensor to its
        parameter's dtype, which would round float32 masters and moments of
        16-bit parameters; with ``master_weights`` those keep their float32
        values here. A torch ``state_dict`` has no masters: they are created
        from the parameters at the next step; nor a count of skipped steps,
        which then stays as it was.
        """
        saved_skips = state_dict.get("skipped_steps")
        kept: dict[Any, dict[str, Tensor]] = {}
        if getattr(self, "master_weights", False):
            for pid, st in state_dict["state"].items():
                kept[pid] = {
                    k: v
                    for k, v in st.items()
                    if k != "step" and isinstance(v, Tensor) and v.dtype == torch.float32
                }
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        super().load_state_dict(state_dict)
        # After torch's checks: a load that raises leaves the count as it was.
        skipped = getattr(self, "skipped_steps", None)
        if saved_skips is not None and skipped is not None:
            skipped.copy_(saved_skips)
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            if pid in kept and self._uses_master(p):
                for k, v in kept[pid].items():
                    self.state[p][k] = v.to(p.device, copy=True)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        """Names of the per-parameter state tensors the op updates, in op order."""
        raise NotImplementedError

    def _init_state(self, group: dict[str, Any], param: Tensor, state: dict[str, Any]) -> None:
        """Create the state of ``param`` on its first step.

        By default, as torch's optimizers do: a zero step counter (for
        optimizers that keep one) and one zero tensor in ``param``'s layout
        per key of :meth:`_state_keys`. Zeros even where the op overwrites new
        state (SGD's momentum buffer), so that a first step skipped by AMP
        leaves no garbage behind.
        """
        if self._has_step_counter:
            state["step"] = new_step_counter(param)
        self._zero_state(param, state, self._state_keys(group))
        if self._uses_master(param):
            state["master_param"] = self._new_master(param)

    def _zero_state(self, param: Tensor, state: dict[str, Any], keys: tuple[str, ...]) -> None:
        """Zero state tensors ``keys`` for ``param``, in its layout."""
        # With master weights, moments are float32 like the master they update.
        dtype = torch.float32 if self._uses_master(param) else param.dtype
        for key in keys:
            state[key] = torch.zeros_like(param, dtype=dtype, memory_format=torch.preserve_format)

    def _update(
        self,
        group: dict[str, Any],
        bucket: Bucket,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
        update_norms: Tensor | None,
    ) -> None:
        """Apply one step to a bucket with a single op call.

        ``update_norms``, when given, is the op's float64 [len(bucket.params), 2] output.
        """
        raise NotImplementedError

    def _buckets(self, sparse: SparseParams) -> list[tuple[dict[str, Any], Bucket]]:
        """The tensors with gradients, in buckets of one op call each.

        A bucket holds the tensors of one (device, dtype, master weights, new
        state) layout. The tensors of every param group whose _layout_keys
        agree share one bucket, with a per-tensor hyperparameter table (NOTE:
        [hyperparameter table]): hundreds of param groups (a learning rate per
        layer) then cost one op call, and on CUDA one kernel launch, not
        hundreds. A group whose hyperparameters are device tensors (a CUDA lr
        for graph capture) keeps buckets of its own: reading them into a table
        would wait for the GPU. Each bucket comes with the group whose options
        the op call reads. State is initialised here, lazily. Parameters
        with sparse gradients go, grouped by param group, into ``sparse``.
        """
        # torch never touches self.state for a parameter without state (SGD
        # without momentum), so its state_dict stays empty; so does ours.
        masters_on = getattr(self, "master_weights", False)
        has_step = self._has_step_counter
        # Once per step, not once per group: with a group per tensor (a
        # learning rate per layer) per-group reads add up to milliseconds.
        compiling = torch.compiler.is_compiling()
        dtensor = dtensor_class()
        new_state_in_op = self._new_state_in_op
        state_of = self.state
        buckets: dict[tuple[Any, ...], tuple[dict[str, Any], Bucket]] = {}
        # Per merged bucket: (hparams row, index of the bucket's first tensor
        # with it), appended when a group starts filling the bucket, not per tensor.
        rows: dict[tuple[Any, ...], list[tuple[list[float], int]]] = {}
        # This loop runs for every parameter on every step, and its cost is
        # the attribute reads it makes (tens of ns each; about 200 us a step
        # for 161 tensors before it was trimmed). So it reads each attribute
        # once, and a parameter with the dtype, device and state novelty of
        # the one before it (almost always) reuses that one's bucket rather
        # than hashing a new bucket key; so does a group's first parameter when
        # the group merges into the bucket of the group before it.
        # (dtype, device, new state in op, bucket, on the CPU, parameter class,
        # DTensors, bucket key)
        last: tuple[Any, ...] | None = None
        for group_index, group in enumerate(self.param_groups):
            keys = self._state_keys(group)
            has_state = bool(keys) or has_step or masters_on
            # An op that initialises new state also starts the keys that a
            # parameter's existing state lacks or holds as None: SGD's momentum
            # buffer after a user's own entry, a momentum reset, an old
            # checkpoint, or steps without momentum that kept only master_param.
            # torch's SGD, which reads the buffer with state.get, starts it from
            # the gradient then, as on a first step (torch's other optimizers
            # raise KeyError, as ours do).
            in_op_keys = keys if new_state_in_op else ()
            row: list[float] | None = None
            layout: tuple[Any, ...] | None = None
            group_start = True
            state: dict[str, Any] = {}
            new_state = False
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    self._check_sparse(p)
                    if not sparse or sparse[-1][0] is not group:
                        sparse.append((group, []))
                    sparse[-1][1].append(p)
                    continue
                if has_state:
                    state = state_of[p]
                    new_state = not state
                    if new_state:
                        self._init_state(group, p, state)
                    elif in_op_keys:
                        # (A plain loop over a key or two.)
                        for key in in_op_keys:
                            if state.get(key) is None:
                                new_state = True
                                self._zero_state(p, state, tuple(k for k in keys if state.get(k) is None))
                                break
                dtype = p.dtype
                device = p.device
                cls = type(p)
                master = masters_on and dtype in LOW_PRECISION
                if master:
                    self._ensure_master_state(group, p, state)
                fresh = new_state and new_state_in_op
                same = (
                    last is not None
                    and dtype is last[0]
                    and fresh is last[2]
                    and cls is last[5]
                    and device == last[1]
                )
                if group_start or not same:
                    on_cpu = last[4] if same else device.type == "cpu"  # (a slow attribute)
                    if layout is None:
                        readable = _hparams_readable(group, on_cpu, compiling)
                        row = self._hparam_row(group) if readable else None
                        layout = self._layout_keys(group)
                    merge = row is not None
                    if group_start and same and merge and last[7][5] == layout:
                        # The bucket the previous group's tensor went to has this
                        # group's key too: only the row is new.
                        rows[last[7]].append((row, len(last[3].sources)))
                    else:
                        # (Not dtype.to_real(): torch.compile cannot trace it.)
                        real_dtype = torch.view_as_real(p).dtype if dtype.is_complex else dtype
                        # A group that is not merged keys by its index: torch.compile
                        # cannot trace id() of a dict.
                        sharded = dtensor is not None and issubclass(cls, dtensor)
                        key = (device, real_dtype, master, fresh, sharded, layout if merge else group_index)
                        entry = buckets.get(key)
                        if entry is None:
                            bucket = Bucket(state={k: [] for k in keys}, new_state=fresh, sharded=sharded)
                            entry = buckets[key] = (group, bucket)
                            if merge:
                                rows[key] = []
                        if merge:
                            rows[key].append((row, len(entry[1].sources)))
                        last = (dtype, device, fresh, entry[1], on_cpu, cls, sharded, key)
                    group_start = False
                bucket, on_cpu, sharded = last[3], last[4], last[6]
                bucket.sources.append(p)
                # The state tensors the op updates: local shards for DTensors.
                tensors = state
                if sharded:
                    grad = local_grad(p, grad)
                    p = p.to_local()
                    tensors = local_state(state)
                if dtype.is_complex:
                    # torch.optim updates complex parameters as pairs of reals;
                    # so do we. (Never with master weights: those are 16-bit.)
                    # A conjugate gradient (autograd makes one for p.conj() * w)
                    # has no real view: the op takes a resolved copy.
                    if grad.is_conj() or grad.is_neg():
                        resolved = grad.resolve_conj().resolve_neg()
                        bucket.resolved_grads[len(bucket.grads)] = (grad, resolved)
                        grad = resolved
                    bucket.params.append(torch.view_as_real(p))
                    bucket.grads.append(torch.view_as_real(grad))
                    for k in keys:
                        bucket.state[k].append(torch.view_as_real(tensors[k]))
                else:
                    bucket.params.append(tensors["master_param"] if master else p)
                    bucket.grads.append(grad)
                    for k in keys:
                        bucket.state[k].append(tensors[k])
                if master:
                    bucket.copies.append(p)
                if has_step:
                    step = state["step"]
                    if not on_cpu and step.is_cpu:
                        # A torch checkpoint keeps CUDA step counters on the CPU;
                        # fastopt's CUDA update reads them on the device.
                        step = state["step"] = step.to(device=device, dtype=torch.float32)
                    bucket.steps.append(step)
        for key, starts in rows.items():
            first = starts[0][0]
            # One group's tensors (or groups that agree) keep the scalar arguments.
            if any(r is not first and r != first for r, _ in starts):
                bucket = buckets[key][1]
                bucket.hparams = self._hparams_table(key, starts, len(bucket.params), compiling)
        return list(buckets.values())

    def _hparams_table(
        self,
        key: tuple[Any, ...],
        starts: list[tuple[list[float], int]],
        num_tensors: int,
        compiling: bool,
    ) -> Tensor:
        """The hparams table of a merged bucket, on the bucket's device.

        ``starts`` holds each group's row with the index of its first tensor;
        the table repeats the row for each of the group's tensors. Building it
        costs about 0.3 us per tensor on the host (400 groups: 0.13 ms, a
        fifth of the whole bucketing), and on CUDA one copy to the device,
        which the kernels read. So the last table is kept while the rows and
        their starts stay the same (compared by value, as floats: a row that
        changes only between 0.0 and -0.0 keeps it): a run with fixed
        hyperparameters builds it once, and a scheduler that changes an lr
        builds it again (on CUDA, one small asynchronous copy from pinned
        memory). Under torch.compile a CPU table is built on every call,
        where it is a constant of the graph.
        """
        device: torch.device = key[0]
        on_cpu = device.type == "cpu"

        def build() -> Tensor:
            ends = [start for _, start in starts[1:]] + [num_tensors]
            rows = [r for (r, start), end in zip(starts, ends) for _ in range(end - start)]
            return torch.tensor(rows, dtype=torch.float64)

        if on_cpu and compiling:
            return build()
        cache: dict[tuple[Any, ...], tuple[list[tuple[list[float], int]], int, Tensor]]
        cache = self.__dict__.setdefault("_hparams_tables", {})
        # CUDA tables per stream: the copy is ordered on the stream that made
        # it, and a step on another stream must not read it before it lands.
        cache_key = key if on_cpu else (*key, torch.cuda.current_stream(device).cuda_stream)
        cached = cache.get(cache_key)
        if cached is not None and cached[1] == num_tensors and cached[0] == starts:
            return cached[2]
        table = build() if on_cpu else build().pin_memory().to(device, non_blocking=True)
        cache[cache_key] = (starts, num_tensors, table)
        return table

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step.

        Args:
            closure: a closure that re-evaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        grad_scale: Tensor | None = getattr(self, "grad_scale", None)
        found_inf: Tensor | None = getattr(self, "found_inf", None)
        # Every bucket of every group first: the global gradient norm (for
        # clipping and skipping) must be known before any update.
        sparse: SparseParams = []
        work = self._buckets(sparse)
        if any(b.sharded for _, b in work):
            self._check_sharded()
        if work or sparse:
            grad_scale, found_inf = self._clip_and_skip(work, sparse, grad_scale, found_inf)
        on_device: dict[tuple[int, torch.device], Tensor] = {}

        def to_device(t: Tensor | None, device: torch.device) -> Tensor | None:
            # One copy per (tensor, device) per step, shared by all buckets.
            if t is None or t.device == device:
                return t
            key = (id(t), device)
            if key not in on_device:
                on_device[key] = t.to(device, non_blocking=True)
            return on_device[key]

        track = getattr(self, "_track_ratios", False)
        if track:
            self._last_norms = []
        stochastic = getattr(self, "stochastic_rounding", False)
        rounds = (
            split_duplicates(work) if getattr(self, "_duplicate_params", False) else [(g, b, 0) for g, b in work]
        )
        for group, bucket, round_ in rounds:
            device = bucket.params[0].device
            scale = grad_scale
            if round_ > 0 and grad_scale is not None:
                # Round 0 left these gradients unscaled in .grad; a resolved
                # copy (see Bucket.resolved_grads) reads them again from there.
                scale = None
                for grad, resolved in bucket.resolved_grads.values():
                    resolved.copy_(grad)
            norms = None
            if track:
                norms = torch.empty(len(bucket.params), 2, dtype=torch.float64, device=device)
                self._last_norms.append((bucket.sources, norms))
            if stochastic and bucket.sources[0].dtype == torch.bfloat16:
                # Fresh Philox words per step, drawn as dropout draws them.
                bucket.rounding_seed = draw_seed(bucket.params[0], None)
            self._update(group, bucket, to_device(scale, device), to_device(found_inf, device), norms)
            if bucket.resolved_grads and scale is not None:
                self._write_back_grads(bucket)
        if sparse:
            self._sparse_steps(sparse, grad_scale, found_inf)
        return loss

    def _check_sharded(self) -> None:
        """Refuse, before anything is updated, the options that DTensor parameters cannot have.

        Each process updates its own shards (_dtensor.py): a global gradient
        norm or a per-parameter ratio would need every shard, and stochastic
        rounding would draw each process's own random words, so that the
        replicas of a replicated parameter would drift apart.
        """
        if getattr(self, "max_grad_norm", None) is not None or getattr(self, "skip_nonfinite", False):
            refuse("max_grad_norm or skip_nonfinite", "clip with torch.nn.utils.clip_grad_norm_ before the step")
        if getattr(self, "_track_ratios", False):
            refuse("track_update_ratios()", "compute the ratios from full tensors")
        if getattr(self, "stochastic_rounding", False):
            refuse("stochastic_rounding", "use master_weights=True")

    @staticmethod
    def _write_back_grads(bucket: Bucket) -> None:
        """Copy the unscaled, clipped gradients the op wrote to resolved copies back to ``.grad``.

        With a grad_scale (AMP's, or the clip factor) the op divides the
        gradients by it in place, and fastopt promises that ``.grad`` holds
        the unscaled, clipped gradients afterwards, as GradScaler.unscale_ and
        clip_grad_norm_ leave them (both of which refuse conjugate gradients
        in torch 2.13). The op wrote a copy for a conjugate gradient, so the
        values go back into the caller's tensor, which stays the same object
        (copy_ writes through the conjugate view). Without a grad_scale the op
        leaves gradients alone and there is nothing to copy.
        """
        for grad, resolved in bucket.resolved_grads.values():
            grad.copy_(resolved)

    # ------------------------------------------------------------ sparse gradients
    # An embedding with sparse=True gives its weight a sparse gradient, which
    # torch's SGD and Adagrad accept. Such parameters take torch's own
    # single-tensor update (a fused pass over every row would cost what the
    # sparse gradient saves), with the same state entries, so that results
    # and checkpoints match torch's. The rest of the step stays fused.

    def _check_sparse(self, param: Tensor) -> None:
        """Refuse a sparse gradient where it cannot be updated as torch would."""
        name = type(self).__name__
        if type(self)._sparse_update is FusedOptimizer._sparse_update:
            raise RuntimeError(self._sparse_message.format(name))
        rounded = getattr(self, "stochastic_rounding", False) and param.dtype == torch.bfloat16
        if self._uses_master(param) or rounded:
            raise RuntimeError(
                f"{name}: master_weights and stochastic_rounding do not support sparse gradients"
            )

    def _sparse_steps(self, sparse: SparseParams, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        """Update the parameters with sparse gradients, group by group.

        AMP's found_inf (which GradScaler computed over these gradients too)
        and the clip factor in grad_scale are applied here: torch's
        single-tensor update takes neither. Reading found_inf waits for the
        device; only steps with sparse gradients pay that.
        """
        if found_inf is not None and bool(found_inf.ne(0).any()):
            return
        for group, params in sparse:
            if grad_scale is not None:
                # In place, as the fused ops unscale and clip dense gradients:
                # .grad holds what the step used.
                for p in params:
                    p.grad.div_(grad_scale.to(p.grad.device))
            self._sparse_update(group, params, [p.grad for p in params])

    def _sparse_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """torch's update of ``params`` by their sparse ``grads``, keeping state in ``self.state``."""
        raise NotImplementedError

    def _hparam_row(self, group: dict[str, Any]) -> list[float] | None:
        """The group's hyperparameters as one row of the op's hparams table.

        In the table's column order (see NOTE: [hyperparameter table] in
        csrc/registration.cpp). None for an optimizer whose op has no table:
        each group then gets op calls of its own.
        """
        return None

    def _layout_keys(self, group: dict[str, Any]) -> tuple[Any, ...]:
        """The group options that pick the kernel variant or the state lists.

        Buckets of different groups share one op call when these agree; every
        other hyperparameter goes into the per-tensor table.
        """
        return ()

    def _clip_and_skip(
        self,
        work: list[tuple[dict[str, Any], Bucket]],
        sparse: SparseParams,
        grad_scale: Tensor | None,
        found_inf: Tensor | None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Fold clipping and non-finite skipping into the ops' grad_scale / found_inf.

        Both stay on the device: the clip factor becomes part of the scale the
        kernels divide gradients by (``grad_scale / clip``), and the
        non-finite flag of the norm op joins AMP's ``found_inf``, which
        already makes a step change nothing, step counters included.
        """
        max_norm = getattr(self, "max_grad_norm", None)
        skip = getattr(self, "skip_nonfinite", False)
        if max_norm is not None or skip:
            if getattr(self, "_duplicate_params", False):
                # A parameter listed twice (split_duplicates) counts once, as
                # in clip_grad_norm_ over the model's parameters.
                grads = first_listings((p, g) for _, b in work for p, g in zip(b.sources, b.grads))
                sparse_params = first_listings((p, p) for _, params in sparse for p in params)
            else:
                grads = [g for _, b in work for g in b.grads]
                sparse_params = [p for _, params in sparse for p in params]
            # A sparse gradient's norm is that of its coalesced values.
            grads += [p.grad.coalesce().values() for p in sparse_params]
            total_norm, nonfinite = grad_norm(grads)
            if grad_scale is not None:
                # The gradients are still scaled by AMP: so is their norm.
                total_norm = total_norm / grad_scale.to(total_norm.device)
            self._last_step["grad_norm"] = total_norm
            if skip:
                found_inf = (
                    nonfinite if found_inf is None else found_inf + nonfinite.to(found_inf.device)
                )
            if max_norm is not None:
                clip = clip_coefficient(total_norm, max_norm)
                grad_scale = clip.reciprocal() if grad_scale is None else grad_scale.to(clip.device) / clip
        skipped = getattr(self, "skipped_steps", None)
        if found_inf is not None and skipped is not None:
            skipped.add_(found_inf.to(skipped.device).ne(0))
        return grad_scale, found_inf

