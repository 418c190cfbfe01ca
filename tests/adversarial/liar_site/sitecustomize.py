"""A member that lies beyond its certified limits, for tests/adversarial/test_cell_grid.py: on
PYTHONPATH of one node's processes only, it makes that node's cell market sign, every epoch,
an offer of 9 MW at the price floor in place of its own (its certificate states some 20 kW).
Everything else in the node is the honest code."""

from __future__ import annotations

import contextlib

with contextlib.suppress(ImportError):
    from redy import signing

    _honest = signing.CellKeys.sign_offer

    def _lie(self: signing.CellKeys, epoch: int, values: tuple[float, ...]) -> object:
        return _honest(self, epoch, (0.0, 9000.0, -500.0, -500.0))

    signing.CellKeys.sign_offer = _lie  # type: ignore[method-assign,assignment]
