"""The apiserver's audit policy: read it, and evaluate it as the apiserver does.

- `document`: the audit.k8s.io/v1 Policy as the apiserver reads it (refused, ignored keys).
- `evaluate`: the level, stages and managed fields a policy gives one request.
- `builtin`: the built-in resources (group, scope, subresources) and the project's stance
  on Secrets and noise.
"""
