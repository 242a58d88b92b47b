"""KEDA's kafka scaler and scale executor, ported: lag (``lag``) and the replica decision with
the HPA KEDA drives (``executor``). The trigger metadata they read is ``shared.keda_metadata``
(part of the topology: ``function.yaml``'s ``scaling``).

``tests/test_keda_port.py`` holds KEDA's own test cases as a table, each citing its source.
"""
