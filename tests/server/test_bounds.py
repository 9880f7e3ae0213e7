"""The operator-update state machine: idempotency by (epoch, sequence) and the quality floor."""

from dynasparse_proto.contract import Command, Mode
from dynasparse_worker.control.bounds import (
    apply_update, initial_state, start_drain,
)


def test_update_with_a_greater_pair_is_applied_and_clamped_into_its_bounds():
    state = initial_state(min_budget=0.3)
    state, applied = apply_update(state, Command(1, 1, target_budget=0.2, floor=0.4,
                                                        ceiling=0.9), min_budget=0.3)
    assert applied
    assert (state.target, state.floor, state.ceiling) == (0.4, 0.4, 0.9)
    assert (state.epoch, state.sequence) == (1, 1)


def test_stale_and_duplicate_updates_are_ignored():
    state, _ = apply_update(initial_state(0.3), Command(2, 5, target_budget=0.7), 0.3)
    for stale in (Command(2, 5, target_budget=0.5), Command(2, 4, target_budget=0.5),
                  Command(1, 99, target_budget=0.5)):
        after, applied = apply_update(state, stale, 0.3)
        assert not applied and after == state


def test_a_higher_epoch_supersedes_a_lower_one_whatever_its_sequence():
    state, _ = apply_update(initial_state(0.3), Command(1, 50, target_budget=0.7), 0.3)
    state, applied = apply_update(state, Command(2, 1, target_budget=0.6), 0.3)
    assert applied and state.target == 0.6


def test_the_floor_never_goes_below_the_calibrated_minimum_budget():
    state, _ = apply_update(initial_state(0.3), Command(1, 1, target_budget=0.1,
                                                               floor=0.05, ceiling=0.2), 0.3)
    assert state.floor == 0.3 and state.ceiling == 0.3 and state.target == 0.3


def test_inverted_bounds_keep_the_floor():
    state, _ = apply_update(initial_state(0.1), Command(1, 1, target_budget=0.9,
                                                               floor=0.6, ceiling=0.4), 0.1)
    assert state.floor == 0.6 and state.ceiling == 0.6 and state.target == 0.6


def test_zero_fields_keep_the_previous_values():
    state, _ = apply_update(initial_state(0.1), Command(1, 1, target_budget=0.7,
                                                               floor=0.5, ceiling=0.8), 0.1)
    state, applied = apply_update(state, Command(1, 2), 0.1)
    assert applied and (state.target, state.floor, state.ceiling) == (0.7, 0.5, 0.8)


def test_drain_is_one_way():
    state, _ = apply_update(initial_state(0.1), Command(1, 1, mode=Mode.DRAIN), 0.1)
    state, _ = apply_update(state, Command(1, 2, mode=Mode.NORMAL), 0.1)
    assert state.mode is Mode.DRAIN
    assert start_drain(initial_state(0.1)).mode is Mode.DRAIN
