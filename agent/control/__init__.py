"""The control loop: rates, detection, mitigation lifecycle, bans — pure logic behind a port.

``controller.Controller`` is the entry point: the daemon builds it with a
``port.ControlPort`` (``kernel.KernelPort`` over the real maps; unit tests use
an in-memory fake, tests/unit/fakes.py) and calls ``tick()`` every ``detection.tick`` seconds.
One module per job:

* ``port`` — what the controller reads and writes; ``kernel`` — that, over MapPort;
* ``watch`` — counters to detector transitions: ``meter`` (rates), ``baseline`` (the learned
  normal), ``detect`` (start/end with hysteresis);
* ``attacks`` — one object per attack, in parts; ``record`` — the attack record rendered from it;
* ``tracker`` — start, observe, end: ``target`` (one host or carpet bombing), ``vectors`` (what
  kind of flood), ``samples``/``sketch`` (sources);
* ``ladder`` — arming the steps; ``mitigate`` — the steps and the rules they plan; ``enforce`` —
  writing them with expiries; ``banstep`` and ``bans`` — who is banned, how long, how many;
* ``journal`` — the log events and the records' entries; ``escalation`` — full uplinks;
  ``hook`` — the operator's executable; ``views`` — top and status; ``stats`` — metrics
  counters; ``settings`` — the policy as the loop reads it.
"""
