"""What the tests, the benchmarks and the load runner share: one package, imported by all three.

* :mod:`testkit.callsim` — a caller and a callee wired in memory to the sans-IO core,
  with a fake clock (the scenario tests, ``benchmarks/b2bua.py``);
* :mod:`testkit.sipp` — sipguard and SIPp as processes on loopback (the SIPp tests,
  the load runner);
* :mod:`testkit.peer` — another element as a process where sipguard would listen;
* :mod:`testkit.load` — the load runner's measuring library (``loadtests/run.py`` is its
  command line), with :mod:`testkit.floor` (the floor relay, whose process is
  ``floor_relay.py``) and :mod:`testkit.sippy` (sippy side by side).

Imports point one way: ``sipp`` ← ``peer`` ← ``load`` ← ``floor`` ← ``sippy``. Nothing
here imports ``tests``, ``benchmarks`` or ``loadtests``.
"""
