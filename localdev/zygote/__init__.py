"""Fork servers ("zygotes"): one per function environment, replicas forked pre-imported.

A cold replica in the training environment spends most of its start importing mlflow, feast,
xgboost and scikit-learn (seconds on 2 busy cores). With ``FAASPIPE_ZYGOTE=on`` the supervisor
starts, on the first replica an environment needs, one zygote in that environment's interpreter
(``server.py``): it imports the third-party modules the environment's functions import
(``preload.py``: read from their source, not guessed) once, then waits on a Unix socket. Each
replica is forked from it and runs exactly what ``python -m shared.runtime …`` runs: the
function's own import, ``init`` (model load, clients) and readiness are the replica's, after the
fork. As in SOCK (USENIX ATC'18), the zygote holds modules, never state.

Fork safety (each point is tested in ``tests/test_zygote.py``):

- **threads**: the zygote forks only while it has exactly one thread (``/proc/self/task``);
  it imports with ``OPENBLAS_NUM_THREADS=1`` and pyarrow's jemalloc background thread off, the
  two libraries here that start a thread at import. A zygote that finds a second thread refuses
  to fork and exits; the supervisor restarts it.
- **sockets and files**: the replica starts a new session, closes every descriptor but its log
  (stdout/stderr) and ``/dev/null`` (stdin): the zygote's socket and anything a library opened
  at import are not inherited. Clients (Kafka, S3, HTTP, MLflow) are created by the function
  after the fork, never imported open.
- **environment and seeds**: the replica's environment is replaced by the one the supervisor
  gives it (its function's settings); Python's ``random`` reseeds itself in a forked child,
  NumPy's global generator is reseeded from the OS. ``PYTHONHASHSEED`` is shared with the
  zygote (string hashing only).
- **parentage**: the zygote double-forks and the supervisor is a child subreaper
  (``PR_SET_CHILD_SUBREAPER``), so each replica becomes the supervisor's own child. Its crash
  handling, exit codes, per-replica logs, drain on scale-down and the activator's
  hold-until-ready are the same as for a spawned replica (``forked.py``).

Zygotes start lazily, are stopped after ``FAASPIPE_ZYGOTE_IDLE_S`` without a fork, and are
restarted when they die, also in the middle of a fork request (``pool.py``). On Kubernetes each
pod is its own process started from its image: the zygote is a localdev mechanism, the rendered
Knative settings are unchanged by it.
"""
