"""Unguessable ids (sip/ids.py): the OS's CSPRNG in batches, never repeated by a forked
child (RFC 3261 §19.3; a forked worker must not give its parent's next tags, branches,
ng cookies or CDR ids)."""

from __future__ import annotations

import itertools

import pytest

from sipguard.sip.ids import WIDTH, IdSource
from testkit.forking import in_child


@pytest.mark.parametrize("width", [WIDTH, 24])
def test_ids_are_hex_of_the_width_asked_and_never_repeat_across_batches(width: int) -> None:
    source = IdSource(batch=4, width=width)
    ids = [source.next() for _ in range(1000)]  # 250 batches
    assert len(set(ids)) == 1000
    assert all(len(i) == width and int(i, 16) >= 0 for i in ids)
    # not a counter: consecutive ids differ in most digits
    assert all(
        sum(x != y for x, y in zip(a, b, strict=True)) > width // 3
        for a, b in itertools.pairwise(ids)
    )


@pytest.mark.parametrize(("batch", "width"), [(0, WIDTH), (1, 0), (1, 7)])
def test_a_source_that_could_not_give_ids_is_refused(batch: int, width: int) -> None:
    with pytest.raises(ValueError):
        IdSource(batch=batch, width=width)


def test_a_forked_child_never_repeats_its_parents_next_ids() -> None:
    """The batch read before the fork is forgotten in the child (os.register_at_fork):
    without that, the child's next ids would be the parent's, one for one."""
    source = IdSource(batch=64)
    source.next()  # a batch is read, 63 ids left in it
    child = in_child(lambda: " ".join(source.next() for _ in range(3)))
    parent = [source.next() for _ in range(3)]
    assert set(child.split()).isdisjoint(parent)
    assert len(child.split()) == 3
