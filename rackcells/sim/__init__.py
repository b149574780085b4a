"""Rack simulator: many IPMI 2.0 BMCs with virtual machines behind them, for tests and benchmarks.

``rackcells-sim rack`` (:mod:`rackcells.sim.cli`) runs a whole rack; :mod:`rackcells.sim.control`
is the client of its control API and :mod:`rackcells.sim.harness` starts one from tests.
"""
