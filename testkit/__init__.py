"""What the tests, the benchmarks and the load runner share: one package, imported by all three.

``tests/``, ``benchmarks/`` and ``loadtests/`` import this package and never each other,
and ``tests/`` holds nothing but tests (and the session checks of its ``conftest.py``).

* :mod:`testkit.callsim` — a caller and a callee wired in memory to the sans-IO core,
  with a fake clock, and what the call-flow tests share (the scenario tests,
  ``benchmarks/b2bua.py``);
* :mod:`testkit.metrics` — a metric read as exported, through the registry;
* :mod:`testkit.sipp` — sipguard and SIPp as processes on loopback (the SIPp tests,
  the load runner); :mod:`testkit.rawsip` — raw SIP over sockets towards such a
  sipguard; :mod:`testkit.privacy` — the privacy bench of the SIPp tests;
* :mod:`testkit.hijack` — the attacker's view of a live call, for the dialog-source
  tests (in memory and over sockets);
* :mod:`testkit.pgserver` — a throwaway PostgreSQL cluster (pytest fixtures);
* :mod:`testkit.rtpengine` — Debian's rtpengine on loopback, an ng client for the tests
  and a dead relay (pytest fixtures);
* :mod:`testkit.peer` — another element as a process where sipguard would listen;
* :mod:`testkit.load` — the load runner's measuring library (``loadtests/run.py`` is its
  command line), with :mod:`testkit.floor` (the floor relay, whose process is
  ``floor_relay.py``), :mod:`testkit.sippy` (sippy side by side),
  :mod:`testkit.kamailio` (Debian's Kamailio as a process) and
  :mod:`testkit.versus_kamailio` (Kamailio side by side, goodput under overload);
  :mod:`testkit.report` writes its Markdown and plots (the container harness too).

The load runner's imports point one way: ``sipp`` ← ``peer`` ← ``load`` ← ``floor`` ←
``sippy`` ← ``versus_kamailio``, which also imports ``kamailio``. Nothing here imports
``tests``, ``benchmarks`` or ``loadtests``.
"""
