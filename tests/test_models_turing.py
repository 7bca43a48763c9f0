"""Program synthesis as singularities: the smooth Turing machine, synthesis problems, and
the learning coefficients of their solution codes (slt_jax.models.turing)."""

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import slt_jax as sj
from slt_jax.models import turing

# Three solutions of detect_a (length 4, 5 steps, 2 states) with the same (zero) loss.
SCANNER = "_L0 AS0 BR0 / _R1 _R1 _R1"  # λ = 6: one state; state 1 never entered
ALTERNATOR = "_L0 AS1 _R1 / _L1 AS0 BR0"  # λ = 9: both states, by the parity of the position
REGULAR = "BR1 AS1 BL0 / AL1 _L0 AR1"  # λ = 15 = d/2: every direction relevant
PARITY = "BS0 AR1 BR0 / AS1 AR0 BR1"  # parity: the state is the parity so far; λ = 10
# The nβ and γ of the sampling tests: the posterior's scale in the weakest relevant
# direction (h = 0.125) is nβh = 1250 ≫ γ, and the free directions stay within 1/√γ = 0.1.
NBETA, GAMMA = 1e4, 100.0


def _quiet_llc(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        return sj.estimate_llc(*args, **kwargs)


@functools.cache
def _detect_a():
    return turing.make_problem("detect_a", 4)


def _random_table(rng, num_states):
    shape = (num_states, 3)
    return turing.Table(
        rng.integers(0, 3, shape), rng.integers(0, 3, shape), rng.integers(0, num_states, shape)
    )


# --------------------------------------------------------------------------------------------
# Machines, the interpreter and the smooth simulator
# --------------------------------------------------------------------------------------------


def test_parse_table_round_trips_and_rejects_bad_text():
    table = turing.parse_table(REGULAR)
    assert str(table) == REGULAR
    assert table.num_states == 2
    np.testing.assert_array_equal(table.write, [[turing.B, turing.A, turing.B], [1, 0, 1]])
    np.testing.assert_array_equal(table.move, [[turing.RIGHT, turing.STAY, turing.LEFT], [0, 0, 2]])
    np.testing.assert_array_equal(table.next, [[1, 1, 0], [1, 0, 1]])
    bad_texts = ["_L0 AS0", "_L0 AS0 BX0", "_L0 AS0 BR2 / _R1 _R1 _R1", "_L0 AS0 CR0"]
    bad_texts += ["_L0 AS0 BR", "_L0 AS0 BR-0", "_L0 AS0 BR+0", "_L0 AS0 BR0x", "_L0 AS0 BR1_0"]
    for bad in bad_texts:
        with pytest.raises(ValueError):
            turing.parse_table(bad)


def test_parse_table_round_trips_with_multi_digit_states():
    """Next states are written in decimal: with 11 or more states an entry reads like
    "BR10", and str/parse_table still round-trip (a one-character state broke at 11)."""
    rng = np.random.default_rng(0)
    for num_states in (10, 11, 12, 101):
        table = _random_table(rng, num_states)
        nxt = table.next.copy()
        nxt[0, 0] = num_states - 1  # the longest state number
        table = table._replace(next=nxt)
        text = str(table)
        assert f"{num_states - 1} " in text
        parsed = turing.parse_table(text)
        assert parsed.num_states == num_states and str(parsed) == text
        for key in ("write", "move", "next"):
            np.testing.assert_array_equal(getattr(parsed, key), getattr(table, key))
    eleven = " / ".join(["_R10 AS0 BL3"] * 11)
    assert str(turing.parse_table(eleven)) == eleven
    with pytest.raises(ValueError, match="out of range"):
        turing.parse_table(" / ".join(["_R11 AS0 BL3"] * 11))


def test_interpreter_on_a_hand_traced_run():
    # The scanner on "BBAB": moves right over B, stops on the A and stays there.
    problem = _detect_a()
    tape = np.zeros(11, np.int32)
    tape[5:9] = [turing.B, turing.B, turing.A, turing.B]
    assert any(np.array_equal(tape, t) for t in problem.tapes)
    scanner = turing.parse_table(SCANNER)
    for steps, head in [(0, 5), (1, 6), (2, 7), (3, 7), (5, 7)]:
        out, h, q = turing.run(scanner, tape, steps, head=problem.head)
        assert (h, q) == (head, 0)
        np.testing.assert_array_equal(out, tape)  # it rewrites what it reads
    # "BBBB": at the blank it moves back onto the last B (written B), answer B.
    tape = problem.tapes[-1]
    out, h, _ = turing.run(scanner, tape, problem.steps, head=problem.head)
    assert h == problem.head + 3 and out[h] == turing.B


def test_smooth_simulator_equals_the_interpreter_on_one_hot_codes():
    """Every step of the smooth simulator on a one-hot code and tape is exactly the
    discrete machine: the tape one-hot at the interpreter's symbols, the joint (head, state)
    one-hot at its head and state: 32 random 3-state machines × 4 random tapes (random
    start cells and states) × 8 steps. Off the vertices (random codes and tapes) the cells
    and the joint stay probability distributions."""
    rng = np.random.default_rng(0)
    num_states, cells, steps, num_tapes, num_machines = 3, 9, 8, 4, 32
    tables = [_random_table(rng, num_states) for _ in range(num_machines)]
    tapes = rng.integers(0, 3, (num_tapes, cells))
    heads, states = rng.integers(0, cells, num_tapes), rng.integers(0, num_states, num_tapes)

    @jax.jit
    @functools.partial(jax.vmap, in_axes=(0, None, None, None))  # machines
    @functools.partial(jax.vmap, in_axes=(None, 0, 0, 0))  # tapes
    def trajectories(code, tape, head, state):
        probs = turing.code_probabilities(code)
        return turing.simulate(probs, tape, steps, head=head, state=state, trajectory=True)

    codes = jax.tree.map(lambda *x: jnp.stack(x), *[turing.one_hot_code(t) for t in tables])
    tape_path, joint_path = trajectories(codes, jax.nn.one_hot(tapes, 3), heads, states)
    outputs = np.asarray(jax.jit(turing.output_distribution)(tape_path, joint_path))
    tape_path, joint_path = np.asarray(tape_path), np.asarray(joint_path)
    for m, table in enumerate(tables):
        for k in range(num_tapes):
            tape, head, state = tapes[k], int(heads[k]), int(states[k])
            for t in range(steps):
                tape, head, state = turing.run(table, tape, 1, head=head, state=state)
                np.testing.assert_array_equal(tape_path[m, k, t], np.eye(3)[tape])
                expected = np.zeros((cells, num_states))
                expected[head, state] = 1.0
                np.testing.assert_array_equal(joint_path[m, k, t], expected)
                np.testing.assert_array_equal(outputs[m, k, t], np.eye(3)[tape[head]])
    # Off the vertices: random codes (the Dirichlet(1/2) prior) on random cell distributions.
    keys = jax.random.split(jax.random.key(0), num_machines)
    codes = jax.vmap(lambda k: turing.random_code(k, num_states))(keys)
    soft = turing.simplex(jax.random.normal(jax.random.key(1), (num_tapes, cells, 3)))
    tape_path, joint_path = (np.asarray(x) for x in trajectories(codes, soft, heads, states))
    np.testing.assert_allclose(tape_path.sum(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(joint_path.sum(axis=(-2, -1)), 1.0, rtol=1e-5)
    assert tape_path.min() >= 0 and joint_path.min() >= 0
    assert 0.01 < tape_path.max(axis=-1).min() < 0.99  # genuinely spread out


def test_simulate_rejects_fewer_than_one_step():
    code = turing.code_probabilities(turing.one_hot_code(turing.parse_table(SCANNER)))
    tape = jax.nn.one_hot(np.zeros(5, np.int32), 3)
    for steps in (0, -1):
        for trajectory in (False, True):
            with pytest.raises(ValueError, match="steps >= 1"):
                turing.simulate(code, tape, steps, trajectory=trajectory)
    tape_path, joint_path = turing.simulate(code, tape, 1, trajectory=True)
    assert tape_path.shape == (1, 5, 3) and joint_path.shape == (1, 5, 2)


def test_run_many_equals_run():
    rng = np.random.default_rng(0)
    tables = [_random_table(rng, 2) for _ in range(50)]
    tapes = rng.integers(0, 3, (6, 8))
    stacked = [np.stack([getattr(t, k) for t in tables]) for k in ("write", "move", "next")]
    got = turing.run_many(*stacked, tapes, 7, head=3)
    for m, table in enumerate(tables):
        for x, tape in enumerate(tapes):
            out, head, _ = turing.run(table, tape, 7, head=3)
            assert got[m, x] == out[head]


# --------------------------------------------------------------------------------------------
# Synthesis problems and the parametrisation
# --------------------------------------------------------------------------------------------


def test_problems_data_and_solutions():
    problem = _detect_a()
    assert problem.tapes.shape == (16, 11) and problem.steps == 5 and problem.head == 5
    words = problem.tapes[:, 5:9]
    assert set(np.unique(words)) == {turing.A, turing.B}
    assert np.all(problem.tapes[:, :5] == turing.BLANK) and np.all(problem.tapes[:, 9:] == 0)
    assert problem.labels.tolist() == [turing.A] * 15 + [turing.B]  # only BBBB lacks an A
    parity = turing.make_problem("parity", 4)
    odd = (parity.tapes == turing.A).sum(axis=1) % 2 == 1
    np.testing.assert_array_equal(parity.labels == turing.A, odd)
    assert turing.make_problem("detect_a", 4) is problem  # cached
    with pytest.raises(ValueError, match="unknown problem"):
        turing.make_problem("sort", 4)

    found = problem.find_solutions(2, num_samples=20_000, seed=0)
    assert len(found) == len({str(t) for t in found}) > 0
    assert all(problem.solves(t) for t in found)
    for text in (SCANNER, ALTERNATOR, REGULAR):
        assert problem.solves(turing.parse_table(text))
    assert parity.solves(turing.parse_table(PARITY))
    assert not parity.solves(turing.parse_table(SCANNER))


def test_the_loss_is_zero_exactly_at_solutions_and_second_order_in_u():
    problem = _detect_a()
    loss = _loss32()
    for text in (SCANNER, ALTERNATOR, REGULAR):
        assert float(loss(turing.one_hot_code(turing.parse_table(text)), problem.data)) == 0.0
    # A machine that fails some input: each failure costs -log(1e-6)/16 (the cap).
    wrong = turing.parse_table("_L0 AR0 BR0 / _R1 _R1 _R1")
    assert not problem.solves(wrong)
    assert float(loss(turing.one_hot_code(wrong), problem.data)) > np.log(1e6) / 16 * 0.99
    # Moving one relevant coordinate u_ej to δ: the scanner on B stays with probability
    # w = δ²/(1 + δ²) instead of moving right. K is known in closed form along this edge
    # (_scanner_stay_loss): K = w/4 - w²/2 + O(w³), so a = 1/4 and, in u, K = a·δ² + O(δ⁴).
    table = turing.parse_table(SCANNER)
    a = turing.first_order_costs(problem, table)["move"][0, turing.B, turing.STAY]
    assert a == 4 / 16  # exact: only BBBB fails at first order (4 places to stay)
    # Tolerance: float32 rounding only, the reference being exact. The loss is a chain of
    # about 100 roundings of non-negative terms, with no cancellation in the wrong-answer
    # mass q (5 steps of ~12: products, 6-term matrix sums, the roll; the 11-cell and
    # 16-input sums; w; log1p), so the forward error is at most 100·u, u = 2⁻²⁴ ≈ 6e-8:
    # rel 6e-6 (measured ≤ 1e-7). δ is a power of 2, so δ² and 1 + δ² are exact in float32.
    rel = 100 * 2.0**-24
    for delta in (2.0**-5, 2.0**-7):  # w ≈ 1e-3, 6e-5
        u = turing.one_hot_code(table)
        u["move"] = u["move"].at[0, turing.B, turing.STAY].set(delta)
        w = delta**2 / (1 + delta**2)
        got, exact = float(loss(u, problem.data)), _scanner_stay_loss(w)
        assert got == pytest.approx(exact, rel=rel)
        # The test has power: the second-order term (relative size 2w ≥ 1.2e-4 ≫ rel) is
        # resolved, so the first-order value a·w, or K off by 0.01%, would fail it.
        assert abs(exact - (a * w - w * w / 2)) < w**3  # the expansion (third order ~0.54 w³)
        assert a * w != pytest.approx(got, rel=rel)
        assert exact * (1 + 1e-4) != pytest.approx(got, rel=rel)


def _scanner_stay_loss(w):
    """K of detect_a (length 4, 5 steps) for the scanner "_L0 AS0 BR0" whose state-0 entry
    for B stays with probability w (moves right with 1 - w), in float64.

    Every entry writes what it reads, so the tape never changes and the smooth simulator is
    exactly the law of the head's random walk: each step on a B it moves right with
    probability 1 - w, independently. A word whose first A is at offset k (8, 4, 2, 1 words
    for k = 0, 1, 2, 3) is answered wrong iff fewer than k of the 5 steps move right,
    P(Bin(5, 1 - w) < k). BBBB (answer B) is wrong iff the head's 4th move comes at step 5,
    leaving it on the blank (earlier, it steps back onto the last B; later, it is on a B):
    4·w(1 - w)⁴. K = -(1/16) Σ_x log(1 - q_x)."""

    def fewer_moves(k):
        return sum(math.comb(5, j) * (1 - w) ** j * w ** (5 - j) for j in range(k))

    wrong = [4 * w * (1 - w) ** 4] + [fewer_moves(k) for k in [1] * 4 + [2] * 2 + [3]]
    return -sum(math.log1p(-q) for q in wrong) / 16


def test_gaussian_parameters_give_the_dirichlet_half_prior():
    """u ~ N(0, I) in ℝ^k gives u²/‖u‖² ~ Dirichlet(½,…,½): mean 1/k, variance
    (1/k)(1-1/k)/(k/2+1), E[w_1 w_2] = (1/k)²(k/2)/(k/2+1), within 5 Monte-Carlo standard
    errors (200,000 draws)."""
    n, k = 200_000, 3
    w = np.asarray(turing.simplex(jax.random.normal(jax.random.key(0), (n, k))), np.float64)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    mean, var = 1 / k, (1 / k) * (1 - 1 / k) / (k / 2 + 1)
    assert np.all(np.abs(w.mean(axis=0) - mean) < 5 * np.sqrt(var / n))
    second = w[:, 0] ** 2
    assert abs(second.mean() - (var + mean**2)) < 5 * second.std() / np.sqrt(n)
    cross = w[:, 0] * w[:, 1]
    assert abs(cross.mean() - mean * mean * (k / 2) / (k / 2 + 1)) < 5 * cross.std() / np.sqrt(n)
    # Not Dirichlet(1), the uniform prior, whose variance (1/k)(1-1/k)/(k+1) is 5/8 of this.
    assert abs(second.mean() - mean**2 - (1 / k) * (1 - 1 / k) / (k + 1)) > 0.02
    np.testing.assert_array_equal(turing.simplex(jnp.array([0.0, 2.0, 0.0])), [0, 1, 0])


# --------------------------------------------------------------------------------------------
# The learning coefficient at a solution
# --------------------------------------------------------------------------------------------


def test_relevant_directions_of_the_scanner_by_hand():
    """The scanner "_L0 AS0 BR0" in state 0 (state 1 writes blanks and runs right).

    Reading A it must write A and stay: the other writes and moves are relevant (at the
    last step they change the answer), and entering state 1 before the end breaks it.
    Reading B: the write is read back at the end of BBBB (relevant); moving left or staying
    delays the scan, so that BBBB ends off its last B; entering state 1 breaks it. Reading
    the blank (only at the last step, on BBBB): moving S or R leaves the head off the last
    B (relevant); what it writes there and its next state are never used (free). State 1
    is never entered: all free. 12 relevant directions of 30: λ = 6."""
    problem = _detect_a()
    table = turing.parse_table(SCANNER)
    relevant = turing.relevant_directions(problem, table)
    zeros = [[0, 0, 0]] * 3
    expected = {
        "write": [[[0, 0, 0], [1, 0, 1], [1, 1, 0]], zeros],
        "move": [[[0, 1, 1], [1, 0, 1], [1, 1, 0]], zeros],
        "next": [[[0, 0], [0, 1], [0, 1]], [[0, 0]] * 3],
    }
    for key, mask in expected.items():
        np.testing.assert_array_equal(relevant[key], np.array(mask, bool), err_msg=key)
    assert turing.learning_coefficient(problem, table) == 6.0


def test_learning_coefficients_of_distinct_solutions():
    problem = _detect_a()
    assert turing.learning_coefficient(problem, turing.parse_table(ALTERNATOR)) == 9.0
    # Every one of the 2·3·(2 + 2 + 1) = 30 directions is relevant: a regular point, d/2.
    regular = turing.parse_table(REGULAR)
    assert turing.learning_coefficient(problem, regular) == 15.0
    vertex = turing.one_hot_code(regular)
    for key, mask in turing.relevant_directions(problem, regular).items():
        np.testing.assert_array_equal(mask, np.asarray(vertex[key]) == 0)
    # Where free directions interact the count is not λ: halting in state 1 on the blank
    # (writing B, staying) makes moving left and writing something else there each harmless
    # alone (the cell to the left holds a B), not together: a normal crossing.
    with pytest.raises(ValueError, match="not Morse-Bott"):
        turing.learning_coefficient(problem, turing.parse_table("BS1 AS1 BR0 / _S1 AS1 BS1"))
    with pytest.raises(ValueError, match="does not solve"):
        turing.learning_coefficient(problem, turing.parse_table("_L0 AR0 BR0 / _R1 _R1 _R1"))


def test_a_solution_where_free_directions_cross():
    """The halting scanner "BS0 AS0 BR0" writes B on the blank and stays. Moving left there
    instead (y) is harmless alone (the last letter is a B), so is writing _ or A over a B
    (x₁, x₂: never read again), but not y with x: on the free subspace K = 0 exactly where
    y = 0 or x = 0, and K ≈ w_y (w_x₁ + w_x₂)/16 (a normal crossing y²(x₁² + x₂²) in u,
    λ_F = ½, so λ = 11/2 + 1/2 = 6). learning_coefficient refuses the count 11/2."""
    problem = _detect_a()
    table = turing.parse_table("BS0 AS0 BR0 / _R1 _R1 _R1")
    assert problem.solves(table)
    relevant = turing.relevant_directions(problem, table)
    assert sum(int(m.sum()) for m in relevant.values()) == 11
    assert not relevant["move"][0, turing.BLANK, turing.LEFT]
    assert not relevant["write"][0, turing.B, [turing.BLANK, turing.A]].any()
    with pytest.raises(ValueError, match="not Morse-Bott"):
        turing.learning_coefficient(problem, table)
    rng = np.random.default_rng(0)
    vertex = {k: np.asarray(v, np.float64) for k, v in turing.one_hot_code(table).items()}
    points = {k: [] for k in vertex}
    for case in range(64):  # y = 0, x = 0, neither; the other free coordinates random
        for key, v in vertex.items():
            u = np.where(
                v > 0, 1.0 + 0.5 * rng.uniform(-1, 1, v.shape), rng.uniform(-1, 1, v.shape)
            )
            u = np.where(relevant[key], 0.0, u)
            if key == "move" and case % 3 == 0:
                u[0, turing.BLANK, turing.LEFT] = 0.0
            if key == "write" and case % 3 == 1:
                u[0, turing.B, [turing.BLANK, turing.A]] = 0.0
            points[key].append(u)
    with jax.enable_x64(True):
        losses = np.asarray(
            problem._losses({k: np.stack(v) for k, v in points.items()}, problem.data)
        )
    assert np.abs(losses[np.arange(64) % 3 < 2]).max() < 1e-12
    assert losses[np.arange(64) % 3 == 2].min() > 1e-9
    # The quartic coefficient: K at w_y = w_x₁ = t (u = √t), others at the vertex.
    u = {k: np.array(v) for k, v in vertex.items()}
    t = 1e-3
    u["move"][0, turing.BLANK, turing.LEFT] = np.sqrt(t)
    u["write"][0, turing.B, turing.BLANK] = np.sqrt(t)
    batch = {k: np.repeat(v[None], 64, 0) for k, v in u.items()}
    with jax.enable_x64(True):
        k = float(problem._losses(batch, problem.data)[0])
    w = t / (1 + t)
    assert k == pytest.approx(w * w / 16, rel=0.01)


def test_hessian_in_u_is_diagonal_with_rank_twice_lambda():
    """At a solution K is even in every coordinate, so its Hessian in u is diagonal: 2a on
    the alternatives, 0 on the chosen (radial) coordinates; its rank is 2λ."""
    problem = _detect_a()
    with jax.enable_x64(True):
        for text, lam in [(SCANNER, 6.0), (REGULAR, 15.0)]:
            table = turing.parse_table(text)
            flat, unravel = ravel_pytree(turing.one_hot_code(table, dtype=jnp.float64))
            hess = _hessian64(problem, np.asarray(flat), unravel)
            costs = turing.first_order_costs(problem, table)
            expected = 2 * ravel_pytree({k: jnp.asarray(v) for k, v in costs.items()})[0]
            np.testing.assert_allclose(hess, np.diag(np.asarray(expected)), atol=1e-5)
            assert np.linalg.matrix_rank(hess, tol=1e-4) == 2 * lam


def test_llc_estimates_at_two_solutions_match_theory():
    """MALA (exact gradients) at the scanner (λ = 6) and the regular solution (λ = 15), one
    compiled program for both centres.

    Target: the quadratic oracle on the Hessian's eigenvalues 2a (quadratic_oracle_llc with
    γ; MALA has no step-size bias), i.e. λ less the shrinkage γ/(nβh + γ) of each relevant
    direction. The rest of K moves E[λ̂] by less than 0.05: its quartic terms by O(λ²/nβ)
    ≈ 0.02 (relative size 1/(nβh) ≤ 1e-3 per pair of directions), the free and radial
    coordinates (spread 1/√γ = 0.1) by changing the curvatures by O(1/γ), which moves
    the shrinkage (≤ 0.09 per direction) by a few per cent. Tolerance: 4 MCSE + 0.05."""
    problem = _detect_a()
    for text, lam in [(SCANNER, 6.0), (REGULAR, 15.0)]:
        table = turing.parse_table(text)
        result = _quiet_llc(
            problem.loss_fn,
            turing.one_hot_code(table),
            problem.data,
            num_chains=4,
            num_steps=2500,
            step_size=8e-6,
            localization=GAMMA,
            nbeta=NBETA,
            sampler="mala",
            diagnostic_every=0,
            seed=0,
        )
        oracle = _oracle(problem, table)
        assert lam - 0.3 < oracle < lam
        assert abs(result.llc_mean - oracle) < 4 * result.llc_stderr + 0.05, (text, result)
        assert result.llc_stderr < 0.4  # the test has power: 6 and 15 are far apart


def _oracle(problem, table, **kwargs):
    costs = turing.first_order_costs(problem, table)
    curvatures = 2 * np.concatenate([v.ravel() for v in costs.values()])
    return sj.theory.quadratic_oracle_llc(curvatures, nbeta=NBETA, localization=GAMMA, **kwargs)


@functools.cache
def _loss32():
    return jax.jit(_detect_a().loss_fn)


def _hessian64(problem, flat, unravel, h=1e-4):
    """Second differences of K in float64, through the problem's batched loss (compiled
    once, by learning_coefficient): (K(u+he_i+he_j) - K(u+he_i-he_j) - K(u-he_i+he_j)
    + K(u-he_i-he_j)) / 4h², error ~h²·(fourth derivatives) + 1e-16/h² ≲ 1e-7."""
    d = flat.size
    eye = np.eye(d)
    signs = [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    points = np.stack(
        [flat + h * (s * eye[i] + t * eye[j]) for i in range(d) for j in range(d) for s, t in signs]
    )
    values = []
    for start in range(0, len(points), 64):  # the batch size learning_coefficient compiled
        chunk = points[start : start + 64]
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], 64 - len(chunk), 0)])
        batch = jax.vmap(unravel)(jnp.asarray(chunk))
        values.append(np.asarray(problem._losses(batch, problem.data)))
    values = np.concatenate(values)[: len(points)].reshape(d, d, 4)
    return (values[..., 0] - values[..., 1] - values[..., 2] + values[..., 3]) / (4 * h * h)


# --------------------------------------------------------------------------------------------
# Slow: long chains, both samplers, all three solutions; parity
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_parity_solutions_and_their_learning_coefficients():
    """Parity: the natural machine keeps the parity so far in its state and writes the
    answer on the first blank. The A/B entries' writes are never read back (8 free
    directions) and the blank entries' next states come at the last step (2 free): 20
    relevant, λ = 10. A second solution counts B's instead (the same parity for words of
    even length), writes B over every letter and, when even, steps back onto the last one
    instead of writing: the letters' writes become relevant, λ = 11."""
    parity = turing.make_problem("parity", 4)
    natural = turing.parse_table(PARITY)
    relevant = turing.relevant_directions(parity, natural)
    assert relevant["write"][:, 1:].sum() == 0 and relevant["next"][:, 0].sum() == 0
    assert turing.learning_coefficient(parity, natural) == 10.0
    other = turing.parse_table("_L0 BR0 BR1 / AS0 BR1 BR0")
    assert parity.solves(other) and turing.learning_coefficient(parity, other) == 11.0
    assert not parity.solves(turing.parse_table(SCANNER))


@pytest.mark.slow
@pytest.mark.parametrize(
    "sampler, step_size, num_steps", [("mala", 8e-6, 20_000), ("sgld", 2e-6, 40_000)]
)
def test_llc_at_three_solutions_matches_theory(sampler, step_size, num_steps):
    """8 long chains at each of the three detect_a solutions (λ = 6, 9, 15): λ̂ within
    4 MCSE + 0.05 of the quadratic oracle (for SGLD with its step-size term: full-batch
    SGLD is the Euler scheme the oracle describes), and the differences between
    solutions match the differences of the oracles within 4 combined MCSE + 0.1."""
    problem = _detect_a()
    got = {}
    for text in (SCANNER, ALTERNATOR, REGULAR):
        table = turing.parse_table(text)
        result = _quiet_llc(
            problem.loss_fn,
            turing.one_hot_code(table),
            problem.data,
            num_chains=8,
            num_steps=num_steps,
            step_size=step_size,
            localization=GAMMA,
            nbeta=NBETA,
            batch_size=len(problem.labels),
            sampler=sampler,
            diagnostic_every=0,
            seed=1,
        )
        oracle = _oracle(problem, table, step_size=step_size if sampler == "sgld" else 0.0)
        assert abs(result.llc_mean - oracle) < 4 * result.llc_stderr + 0.05, (text, result)
        got[text] = (result.llc_mean, result.llc_stderr, oracle)
    for low, high in [(SCANNER, ALTERNATOR), (ALTERNATOR, REGULAR)]:
        (m1, s1, o1), (m2, s2, o2) = got[low], got[high]
        assert abs((m2 - m1) - (o2 - o1)) < 4 * np.hypot(s1, s2) + 0.1
        assert m2 - m1 > 2  # λ 6 → 9 → 15: the estimates tell the programs apart
