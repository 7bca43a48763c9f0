r"""Program synthesis as singularities: a smooth relaxation of Turing-machine synthesis.

Clift, Murfet & Wallbridge ("Geometry of program synthesis", arXiv:2103.16080) make the
space of programs continuous: a code for a Turing machine becomes a point of a product of
probability simplices, a smooth simulator runs it, and a synthesis problem (input tapes
and the answers wanted) gives a loss ``K``. The codes that solve the problem are the zeros
of ``K``; they are singular points, and the learning coefficient at a solution measures how
much of the code the program really pins down.

**Machines.** ``Q`` states, the symbols ``_ A B`` (``_`` the blank), the moves ``L S R``.
A code gives, for every state ``q`` and symbol ``s`` read, three distributions: the symbol
written :math:`W_{qs}\in\Delta^{2}`, the move :math:`M_{qs}\in\Delta^{2}` and the next state
:math:`N_{qs}\in\Delta^{Q-1}`. A one-hot code is an ordinary machine (a :class:`Table`,
run by the interpreter :func:`run`). The tape is cyclic with ``N`` cells.

**Smooth simulator** (:func:`simulate`). The tape is a distribution per cell
:math:`T_i\in\Delta^2`, the head and state a joint distribution :math:`P_{iq}`. With
:math:`c_{iqs} = P_{iq}T_{is}` (head at ``i`` in state ``q`` reading ``s``) a step is

.. math::
    T'_{it} = \Bigl(1-\sum_q P_{iq}\Bigr) T_{it} + \sum_{qs} c_{iqs} W_{qst},\qquad
    P'_{jr} = \sum_{m\in\{L,S,R\}}\sum_{qs} c_{j-\delta_m, qs} M_{qsm} N_{qsr},

:math:`\delta = (-1, 0, 1)`: multilinear in the state and the code, and on one-hot codes and
tapes exactly the discrete machine (tested against :func:`run`). The answer is the symbol
under the head after ``steps`` steps, with distribution :math:`p(s) = \sum_i P_i T_{is}`
(:func:`output_distribution`). This is a mean-field relaxation (cells independent of the
head), not the law of a machine whose code entries are drawn at random.

**Synthesis problems** (:func:`make_problem`): every word of ``length`` letters over
``{A, B}``, written on a blank tape with the head on its first letter in state 0, run for
``steps = length + 1`` steps; ``"detect_a"`` wants ``A`` under the head if the word contains
an ``A`` and ``B`` otherwise, ``"parity"`` wants ``A`` if the number of ``A`` is odd. The loss
is the negative log likelihood :math:`K(w) = -\frac1n\sum_x \log p_w(y_x \mid x)`, zero
exactly at the codes that solve every input.

**Parametrisation** (:func:`code_probabilities`). Each simplex is the image of a vector
``u`` under :math:`u \mapsto u^2/\lVert u\rVert^2`. The map is smooth away from ``u = 0``, a
vertex (a deterministic entry) is a finite point (``u`` a basis vector), and a standard
Gaussian on ``u`` is the Dirichlet(½, …, ½) distribution (Jeffreys' prior) on the simplex,
so SGLD, MALA or HMC on ``u`` with a Gaussian prior samples a well-defined posterior on
the product of simplices. (Softmax logits would put every deterministic code at
infinity, where no posterior localizes.)

**The learning coefficient at a solution** (:func:`learning_coefficient`). Near a one-hot
solution ``w*`` move entry ``e`` from its chosen value ``c`` towards an alternative ``j``:
:math:`w_{ej} = u_{ej}^2/\lVert u_e\rVert^2`. ``K`` is even in every ``u_{ej}``, and to
first order in the simplex coordinates :math:`K \approx \sum a_{ej} w_{ej}` with
:math:`a_{ej}\ge 0` (:func:`first_order_costs`), so the Hessian in ``u`` is diagonal,
:math:`2a_{ej}`. Call ``(e, j)`` *relevant* if :math:`a_{ej}>0`: taking alternative ``j``
with small probability changes some answer at first order (an entry used on some input,
at a step that matters). The others are *free*: entries no input reaches, writes on cells
never read again, the last step's next state, alternatives that happen to give the same
answer. If ``K`` vanishes on the whole subspace ``F`` where every relevant coordinate is
zero (checked at random points of ``F``: ``K`` is analytic, so vanishing there means
vanishing on all of ``F``, almost surely), then ``F`` is the zero set of ``K`` near ``w*``,
the Hessian is non-degenerate across it, ``K`` is Morse–Bott at ``w*`` and

.. math:: \lambda(w^*) = \tfrac12\,\#\{(e, j) : a_{ej} > 0\}

(Watanabe 2009, the minimally singular case). Solutions of one problem with the same
(zero) loss differ in how many directions are relevant, hence in λ: a program that leaves
more of its table unused or unconstrained is more degenerate. In general, writing
:math:`\delta_R` for the relevant coordinates and :math:`\delta_F` for the rest, ``K`` is even
in :math:`\delta_R` with a positive-definite Hessian there, so near ``w*``
:math:`K \asymp \lVert\delta_R\rVert^2 + K(0, \delta_F)` and
:math:`\lambda = \tfrac12\#R + \lambda_F`, with :math:`\lambda_F` the learning coefficient
of ``K`` restricted to ``F``. It is 0 exactly when ``K`` vanishes on ``F``; where free
directions interact (two alternatives each harmless alone but harmful together, a normal
crossing) it is positive, the count is a strict lower bound, and
:func:`learning_coefficient` raises.

Example:
  >>> from slt_jax.models import turing
  >>> problem = turing.make_problem("detect_a", length=4)
  >>> scanner = turing.parse_table("_L0 AS0 BR0 / _R1 _R1 _R1")  # states 0, 1; reading _ A B
  >>> problem.solves(scanner), turing.learning_coefficient(problem, scanner)
  (True, 6.0)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from slt_jax.models import _init

BLANK, A, B = 0, 1, 2
SYMBOLS = "_AB"
LEFT, STAY, RIGHT = 0, 1, 2
MOVES = "LSR"
_OFFSETS = np.array([-1, 0, 1])
_KEYS = ("write", "move", "next")  # the three distributions of an entry
_NUM_CHECKS = 64  # random points of the free subspace checked by learning_coefficient
# The loss counts an input as answered with probability at least this (see
# SynthesisProblem.loss_of_probabilities): a sure failure costs -log(1e-6) ≈ 13.8, not +inf.
_MIN_LIKELIHOOD = 1e-6
# Threshold for a relevant direction, a > _RELEVANT_COST. At a vertex every first-order cost
# is an integer multiple of 1/n (n inputs): the wrong-answer masses are polynomials with
# integer coefficients in the code and tape entries, here 0 or 1, and d(-log(1 - q))/dq = 1
# at q = 0. In float64 the zero costs come out as 0 up to rounding (~1e-16; exactly 0 on
# the detect_a and parity solutions), the others at least 1/n: any cut in between works.
_RELEVANT_COST = 1e-9
# K counts as zero at the random points of the free subspace below this (float64): the
# rounding of a K that vanishes is ~1e-16 (at most 6e-16 measured at the detect_a
# solutions), while where free directions cross K ~ w_y·w_x / n at those points (the
# largest of 64 is ~0.04 on the tests' crossing, none is below 1e-5).
_ZERO_LOSS = 1e-12


class Table(NamedTuple):
    """A discrete Turing machine: in state ``q`` reading symbol ``s`` it writes
    ``write[q, s]``, moves ``move[q, s]`` (0 = L, 1 = S, 2 = R) and enters ``next[q, s]``
    (integer arrays of shape ``(Q, 3)``). ``str(table)`` is the :func:`parse_table` form
    (next states in decimal, so any number of states round-trips)."""

    write: np.ndarray
    move: np.ndarray
    next: np.ndarray

    @property
    def num_states(self) -> int:
        return int(np.shape(self.write)[0])

    def __str__(self) -> str:
        return " / ".join(
            " ".join(
                f"{SYMBOLS[self.write[q][s]]}{MOVES[self.move[q][s]]}{self.next[q][s]}"
                for s in range(len(SYMBOLS))
            )
            for q in range(self.num_states)
        )


def parse_table(text: str) -> Table:
    """A :class:`Table` from one group per state, separated by ``/``; a group lists the
    entries for reading ``_``, ``A``, ``B``, each as written symbol, move, next state (a
    decimal number): ``"_L0 AS0 BR0 / _R1 _R1 _R1"`` (in state 0, on ``B`` write ``B``, move
    right, stay in 0); with more than ten states entries read like ``"BR10"``.
    """
    rows = [group.split() for group in text.split("/")]
    if any(len(row) != len(SYMBOLS) or any(len(e) < 3 for e in row) for row in rows):
        raise ValueError(f"need {len(SYMBOLS)} entries like 'BR0' per state, got {text!r}")
    try:
        write = [[SYMBOLS.index(e[0]) for e in row] for row in rows]
        move = [[MOVES.index(e[1]) for e in row] for row in rows]
        if not all(e[2:].isascii() and e[2:].isdigit() for row in rows for e in row):
            raise ValueError
        nxt = [[int(e[2:]) for e in row] for row in rows]
    except ValueError:
        raise ValueError(f"bad entry in {text!r}: symbols {SYMBOLS}, moves {MOVES}") from None
    if max(map(max, nxt)) >= len(rows):
        raise ValueError(f"a next state is out of range in {text!r}")
    return Table(*(np.array(x, np.int32) for x in (write, move, nxt)))


def run(table: Table, tape, steps: int, *, head: int = 0, state: int = 0):
    """The discrete interpreter: ``steps`` steps of ``table`` on the cyclic ``tape``.

    Returns ``(tape, head, state)`` after the last step (the tape as a new array).
    """
    tape = [int(s) for s in tape]
    for _ in range(steps):
        s = tape[head]
        tape[head] = int(table.write[state][s])
        head = (head + int(_OFFSETS[table.move[state][s]])) % len(tape)
        state = int(table.next[state][s])
    return np.array(tape, np.int32), head, state


def run_many(write, move, nxt, tapes, steps: int, *, head: int = 0) -> np.ndarray:
    """The symbol under the head after ``steps`` steps, for ``M`` machines × ``n`` tapes.

    Vectorised :func:`run` (NumPy) for searching tables: ``write``, ``move``, ``nxt`` are
    ``(M, Q, 3)`` integer arrays, ``tapes`` is ``(n, N)``; returns ``(M, n)``.
    """
    write, move, nxt = (np.asarray(x) for x in (write, move, nxt))
    tapes = np.asarray(tapes)
    machines, n = write.shape[0], tapes.shape[0]
    tape = np.broadcast_to(tapes, (machines, *tapes.shape)).copy()
    m, x = np.arange(machines)[:, None], np.arange(n)[None, :]
    pos = np.full((machines, n), head)
    state = np.zeros((machines, n), np.int64)
    for _ in range(steps):
        s = tape[m, x, pos]
        tape[m, x, pos] = write[m, state, s]
        pos = (pos + _OFFSETS[move[m, state, s]]) % tapes.shape[1]
        state = nxt[m, state, s]
    return tape[m, x, pos]


# --------------------------------------------------------------------------------------------
# Codes and the smooth simulator
# --------------------------------------------------------------------------------------------


def simplex(u: jax.Array) -> jax.Array:
    """``u² / Σ u²`` over the last axis: a point of the probability simplex."""
    squared = u * u
    return squared / jnp.sum(squared, axis=-1, keepdims=True)


def code_probabilities(params: dict) -> dict:
    """The code's distributions ``{"write", "move", "next"}`` from its parameters ``u``."""
    return {key: simplex(params[key]) for key in _KEYS}


def one_hot_code(table: Table, *, dtype=jnp.float32) -> dict:
    """The parameters ``u`` of a machine's vertex: one-hot vectors (``‖u‖ = 1``)."""
    sizes = {"write": len(SYMBOLS), "move": len(MOVES), "next": table.num_states}
    return {
        key: jax.nn.one_hot(np.asarray(getattr(table, key)), sizes[key], dtype=dtype)
        for key in _KEYS
    }


def random_code(key: jax.Array, num_states: int, *, dtype=jnp.float32) -> dict:
    """Parameters ``u ~ N(0, I)``: a code drawn from the Dirichlet(½) prior on every simplex."""
    shapes = {"write": len(SYMBOLS), "move": len(MOVES), "next": num_states}
    keys = jax.random.split(key, len(_KEYS))
    normal = _init.as_matrix(jax.random.normal, num_in_axes=2)  # the same values, faster
    return {
        name: normal(k, (num_states, len(SYMBOLS), shapes[name]), dtype)
        for name, k in zip(_KEYS, keys, strict=True)
    }


def _transitions(probs: dict) -> jax.Array:
    """The code as one ``(Q·3, 3 + 3·Q)`` matrix: row ``(q, s)`` holds the write
    distribution, then the joint law of (move, next state)."""
    num_states, num_symbols = probs["write"].shape[:2]
    rows = num_states * num_symbols
    joint = probs["move"][..., :, None] * probs["next"][..., None, :]
    return jnp.concatenate(
        [probs["write"].reshape(rows, -1), joint.reshape(rows, 3 * num_states)], axis=1
    )


def _step(transitions, tape, joint):
    """One step of the smooth machine: ``tape`` ``(..., N, 3)``, ``joint`` ``(..., N, Q)``."""
    *batch, cells, num_states = joint.shape
    num_symbols = tape.shape[-1]
    reading = joint[..., :, None] * tape[..., None, :]  # (..., N, Q, Σ): at i, in q, reading s
    out = reading.reshape(*batch, cells, -1) @ transitions
    tape = tape * (1.0 - jnp.sum(joint, axis=-1))[..., None] + out[..., :num_symbols]
    flow = out[..., num_symbols:].reshape(*batch, cells, 3, num_states)
    left, stay, right = flow[..., LEFT, :], flow[..., STAY, :], flow[..., RIGHT, :]
    joint = jnp.roll(left, -1, axis=-2) + stay + jnp.roll(right, 1, axis=-2)
    return tape, joint


def simulate(
    probs: dict, tape: jax.Array, steps: int, *, head: int = 0, state: int = 0, trajectory=False
):
    """Run a code (its distributions, :func:`code_probabilities`) on ``tape`` (``(..., N, 3)``,
    a distribution per cell; leading axes are a batch of tapes) for ``steps`` steps from
    ``head`` in ``state``.

    Returns ``(tape, joint)`` after the last step (``joint[..., i, q]``: head at ``i`` in
    state ``q``), or with ``trajectory=True`` both stacked over the steps (a leading axis of
    length ``steps``). The steps are unrolled (``steps`` is small).

    Raises:
      ValueError: if ``steps < 1`` (no step: nothing to stack into a trajectory).
    """
    if steps < 1:
        raise ValueError(f"simulate needs steps >= 1, got {steps}")
    num_states = probs["next"].shape[0]
    tape = jnp.asarray(tape)
    start = jnp.zeros((tape.shape[-2], num_states), tape.dtype).at[head, state].set(1.0)
    joint = jnp.broadcast_to(start, (*tape.shape[:-1], num_states))
    transitions = _transitions(probs)
    path = []
    for _ in range(steps):
        tape, joint = _step(transitions, tape, joint)
        path.append((tape, joint))
    if trajectory:
        return tuple(jnp.stack(x) for x in zip(*path, strict=True))
    return tape, joint


def output_distribution(tape: jax.Array, joint: jax.Array) -> jax.Array:
    """The distribution of the symbol under the head, :math:`p(s) = \\sum_i P_i T_{is}`."""
    return jnp.sum(jnp.sum(joint, axis=-1)[..., None] * tape, axis=-2)


# --------------------------------------------------------------------------------------------
# Synthesis problems
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SynthesisProblem:
    """Input tapes and wanted answers, with the loss of a code (see :func:`make_problem`).

    ``data = (tapes, labels)`` is the data set for :func:`slt_jax.estimate_llc` with
    ``loss_fn``; ``loss(params)`` is the loss over all of it.
    """

    name: str
    tapes: np.ndarray  #: (n, N) symbols, the word at cells head .. head + length - 1
    labels: np.ndarray  #: (n,) the symbol wanted under the head at the end
    steps: int
    head: int  #: where the head starts (state 0)

    @property
    def data(self) -> tuple[jax.Array, jax.Array]:
        return jnp.asarray(self.tapes, jnp.int32), jnp.asarray(self.labels, jnp.int32)

    def loss_of_probabilities(self, probs: dict, batch) -> jax.Array:
        r""":math:`-\frac1b\sum_x \log \max(p(y_x \mid x), 10^{-6})` for a code given as
        distributions.

        The cap: each input's likelihood is floored at ``1e-6``, so an input costs at most
        :math:`-\log 10^{-6}\approx 13.8`. Without it a code that fails some input with
        certainty (every wrong one-hot machine: its wrong answer has probability exactly 1)
        has ``K = +inf`` and NaN gradients, which a sampler cannot recover from; with it
        ``K`` is finite on the whole product of simplices (flat in an input past the cap).
        Near a solution the wrong-answer mass is close to 0, far from the cap, so neither
        ``K`` nor its derivatives there (the first-order costs, λ) are affected.
        """
        tapes, labels = batch
        cells = jax.nn.one_hot(tapes, len(SYMBOLS), dtype=probs["write"].dtype)
        answers = output_distribution(*simulate(probs, cells, self.steps, head=self.head))
        # -log p(y) = -log1p(-q) with q the mass on wrong answers, a sum of small products
        # near a solution: accurate in float32 where 1 - q would round (K ~ 1e-6 and below).
        # The cap keeps a code that fails an input deterministically finite (see above).
        wrong = jnp.sum(answers * (1.0 - jax.nn.one_hot(labels, len(SYMBOLS))), axis=-1)
        return -jnp.mean(jnp.log1p(-jnp.minimum(wrong, 1.0 - _MIN_LIKELIHOOD)))

    def loss_fn(self, params: dict, batch) -> jax.Array:
        """``loss_fn(params, batch)`` for :func:`slt_jax.estimate_llc`: the mean NLL."""
        return self.loss_of_probabilities(code_probabilities(params), batch)

    def loss(self, params: dict) -> jax.Array:
        return self.loss_fn(params, self.data)

    def solves(self, table: Table) -> bool:
        """Whether the discrete machine answers every input correctly."""
        return all(
            (lambda t, h, _: t[h] == label)(*run(table, tape, self.steps, head=self.head))
            for tape, label in zip(self.tapes, self.labels, strict=True)
        )

    def find_solutions(
        self, num_states: int, *, num_samples: int = 100_000, seed: int = 0
    ) -> list[Table]:
        """Distinct solving tables among ``num_samples`` uniformly random ones (NumPy)."""
        rng = np.random.default_rng(seed)
        shape = (num_samples, num_states, len(SYMBOLS))
        write = rng.integers(0, len(SYMBOLS), shape)
        move = rng.integers(0, len(MOVES), shape)
        nxt = rng.integers(0, num_states, shape)
        found, seen = [], set()
        for start in range(0, num_samples, 20_000):
            part = slice(start, start + 20_000)
            out = run_many(
                write[part], move[part], nxt[part], self.tapes, self.steps, head=self.head
            )
            for i in start + np.flatnonzero((out == self.labels).all(axis=1)):
                table = Table(*(x[i].astype(np.int32) for x in (write, move, nxt)))
                if str(table) not in seen:
                    seen.add(str(table))
                    found.append(table)
        return found

    @functools.cached_property
    def _costs(self):
        @jax.jit
        def costs(vertex):
            grad = jax.grad(self.loss_of_probabilities)(vertex, self.data)
            # The derivative along the edge from the chosen vertex c to j: ∂_j K - ∂_c K.
            return {k: g - jnp.sum(g * vertex[k], -1, keepdims=True) for k, g in grad.items()}

        return costs

    @functools.cached_property
    def _losses(self):
        """``K`` at a batch of parameter points (a leading axis), jitted once per dtype."""
        return jax.jit(jax.vmap(self.loss_fn, in_axes=(0, None)))


@functools.cache
def make_problem(name: str = "detect_a", length: int = 4, *, steps: int | None = None):
    """A :class:`SynthesisProblem` on all ``2**length`` words over ``{A, B}``.

    ``"detect_a"``: answer ``A`` if the word contains an ``A``, else ``B`` (the paper's
    ``detectA``). ``"parity"``: ``A`` if the number of ``A`` is odd, else ``B``. The word
    starts at the head (state 0), which the tape leaves ``steps`` cells to either side, so the
    cyclic tape never wraps around within the ``steps`` steps (``length + 1`` by default:
    enough to read the word and the blank after it).
    """
    steps = length + 1 if steps is None else int(steps)
    if length < 1 or steps < 1:
        raise ValueError(f"need length >= 1 and steps >= 1, got {length}, {steps}")
    words = np.array(list(itertools.product([A, B], repeat=length)), np.int32)
    count = (words == A).sum(axis=1)
    if name == "detect_a":
        labels = np.where(count > 0, A, B)
    elif name == "parity":
        labels = np.where(count % 2 == 1, A, B)
    else:
        raise ValueError(f"unknown problem {name!r}: 'detect_a' or 'parity'")
    tapes = np.zeros((len(words), steps + max(steps + 1, length)), np.int32)
    tapes[:, steps : steps + length] = words
    return SynthesisProblem(name, tapes, labels.astype(np.int32), steps, steps)


# --------------------------------------------------------------------------------------------
# The learning coefficient at a solution
# --------------------------------------------------------------------------------------------


def first_order_costs(problem: SynthesisProblem, table: Table) -> dict:
    """``a[e, j]``: the derivative of ``K`` at the vertex ``table`` along the simplex edge from
    each entry's chosen value to the alternative ``j`` (0 at the chosen value), float64.

    At a solution every ``a`` is ``>= 0``; ``a > 0`` marks the relevant directions.
    """
    with jax.enable_x64(True):
        costs = problem._costs(one_hot_code(table, dtype=jnp.float64))
        return {k: np.asarray(v) for k, v in costs.items()}


def relevant_directions(problem: SynthesisProblem, table: Table) -> dict:
    """Boolean masks (shaped like the code): the ``(entry, alternative)`` pairs with
    :math:`a_{ej} > 0`, whose Hessian in ``u`` is :math:`2a_{ej}`."""
    return {k: v > _RELEVANT_COST for k, v in first_order_costs(problem, table).items()}


def learning_coefficient(problem: SynthesisProblem, table: Table, *, seed: int = 0) -> float:
    r"""λ at a one-hot solution where ``K`` is Morse–Bott: half the number of relevant
    directions (see the module docstring).

    Raises:
      ValueError: if ``table`` does not solve ``problem``, or ``K`` is not zero on the
        free subspace (free directions interact; λ is then larger than the count).
    """
    if not problem.solves(table):
        raise ValueError(f"{table} does not solve {problem.name}")
    relevant = relevant_directions(problem, table)
    # Random points of the free subspace F: relevant coordinates 0, chosen (radial) ones in
    # [0.5, 1.5], the other free ones in [-1, 1]. K restricted to F is analytic, and a
    # non-zero analytic function vanishes only on a null set, so K = 0 (to rounding) at
    # random points means (almost surely) K = 0 on F: F is the zero set of K near the vertex.
    rng = np.random.default_rng(seed)
    points = {}
    for key, vertex in one_hot_code(table).items():
        vertex = np.asarray(vertex, np.float64)  # exact: zeros and ones
        noise = rng.uniform(-1.0, 1.0, (_NUM_CHECKS, *vertex.shape))
        points[key] = np.where(relevant[key], 0.0, np.where(vertex > 0, 1.0 + 0.5 * noise, noise))
    with jax.enable_x64(True):
        worst = float(np.max(np.abs(problem._losses(points, problem.data))))
    if worst > _ZERO_LOSS:
        raise ValueError(
            f"{table}: K is not zero on the free subspace (max {worst:.3g} at random points): "
            "free directions interact, K is not Morse-Bott here"
        )
    return sum(int(v.sum()) for v in relevant.values()) / 2
