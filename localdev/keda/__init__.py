"""KEDA's kafka scaler and scale executor, ported: trigger metadata (``metadata``), lag
(``lag``) and the replica decision with the HPA KEDA drives (``executor``).

``tests/test_keda_port.py`` holds KEDA's own test cases as a table, each citing its source.
"""
