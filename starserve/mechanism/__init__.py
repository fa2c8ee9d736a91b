"""The mechanism contracts the simulator and the live cluster share (no Ray, no clock, no I/O).

`snapshot`: what an instance snapshot holds and the one function that builds it.
`migration`: the migration status, its settings and the stage rule both drivers follow.
`placement`: prefill placement policies (which prefill instance takes an arriving request).
`config`: the cluster settings both the simulated and the live cluster share.
"""
