"""The control loop: rates, detection, mitigation lifecycle, bans — pure logic behind a port.

``controller.Controller`` is the entry point: the daemon builds it with a
``port.ControlPort`` (``kernel.KernelPort`` over the real maps; unit tests use
an in-memory fake, tests/unit/fakes.py) and calls ``tick()`` every ``detection.tick`` seconds.
One module per job:

* ``port`` — what the controller reads and writes; ``kernel`` — that, over MapPort;
* ``rates`` — counters to rates; ``baseline`` — the learned normal; ``detect`` — start/end with hysteresis;
* ``target`` — one host or carpet bombing; ``vectors`` — what kind of flood; ``samples``/``sketch`` — sources;
* ``mitigate`` — the ladder and the rules it plans; ``enforce`` — writing them with expiries;
* ``bans`` — who may be banned, how long; ``escalation`` — full uplinks; ``hook`` — the operator's executable;
* ``attacks`` — the records; ``stats`` — metrics counters; ``settings`` — the policy as the loop reads it.
"""
