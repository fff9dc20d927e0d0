"""The contract between the XDP program and the Python agent, and between the agent's parts.

Everything the policy compiler, the data path, the control loop and the
metrics must agree on lives here, once: the ctypes mirror of bpf/abi.h
(:mod:`.abi`), map capacities and their defaults (:mod:`.capacity`), prefix
keys and the address word codec (:mod:`.keys`), what the program is told to
hold (:mod:`.specs`, :mod:`.desired`), token-bucket encoding
(:mod:`.rates`) and the clock (:mod:`.clock`). This package imports nothing
else of the project, so that every other package can depend on it and on
nothing of each other.
"""
