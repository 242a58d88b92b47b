"""Authentication and authorisation, after Knative Eventing's OIDC + EventPolicy model.

* :mod:`shared.auth.bearer`: the mechanism (``Authorization: Bearer``, on/off setting, a
  workload's own token);
* :mod:`shared.auth.tokens`: signed tokens and the :class:`TokenVerifier` interface;
* :mod:`shared.auth.identity`: subjects of functions, triggers and people;
* :mod:`shared.auth.policy`: EventPolicy evaluation (reuses :mod:`shared.filters`);
* :mod:`shared.auth.pipeline`: the pipeline's policies, derived from the topology;
* :mod:`shared.auth.local`: the local stack as token issuer;
* :mod:`shared.auth.exceptions`: ``401`` / ``403`` refusals.
"""

from shared.auth.exceptions import AuthError, Forbidden, Unauthenticated

__all__ = ["AuthError", "Forbidden", "Unauthenticated"]
