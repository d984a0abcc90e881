import torch

from privlearn.fl.privacy.noise import draw_normal, noise_state


def test_unseeded_generators_differ_and_seeded_ones_repeat():
    assert not torch.equal(noise_state(), noise_state())
    assert torch.equal(noise_state(7), noise_state(7))


def test_a_saved_state_continues_the_same_stream():
    s = noise_state(1)
    (first, second), after = draw_normal(s, [torch.Size([3]), torch.Size([2, 2])])
    (again,), mid = draw_normal(s, [torch.Size([3])])
    (rest,), end = draw_normal(mid, [torch.Size([2, 2])])
    assert torch.equal(first, again) and torch.equal(second, rest) and torch.equal(after, end)
    assert first.dtype == torch.float64


def test_a_row_of_a_stack_of_states_is_a_state():
    stack = torch.stack([noise_state(1), noise_state(2)])
    (row,), _ = draw_normal(stack[1], [torch.Size([4])])
    (own,), _ = draw_normal(noise_state(2), [torch.Size([4])])
    assert torch.equal(row, own)
